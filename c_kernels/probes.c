/* Semantic probes: single accesses whose architectural behaviour depends on the memory
 * type (alignment faults on Device memory, DC ZVA, exclusives, atomics).  Each runs in a
 * forked child (bench/probe.py); a fault is reported through a pipe as (signal, si_code)
 * by the handler below, so the parent learns BUS_ADRALN from SIGBUS-for-other-reasons. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include "sweeps.h"

#define P_WRITES 1u
#define P_UNALIGNED 2u
/* A probe returns 0 (the access completed), -errno (not on this CPU) or this: every
 * store-exclusive reported failure (bench/probe.py: result 'stxr-fail'). */
#define DMT_PROBE_STXR_FAIL 1

struct dmt_probe {
	const char *name;
	const char *doc;
	uint32_t flags;
	int (*fn)(char *p);
};

#if defined(__aarch64__) && !defined(DMT_FORCE_GENERIC)
#define LD(insn, reg, p) do { uint64_t v_; __asm__ __volatile__(insn " %" reg "0, [%1]" : "=r"(v_) : "r"(p) : "memory"); } while (0)
#define ST(insn, reg, p) __asm__ __volatile__(insn " %" reg "0, [%1]" ::"r"(0ul), "r"(p) : "memory")
static int ld2(char *p) { LD("ldrh", "w", p); return 0; }
static int ld4(char *p) { LD("ldr", "w", p); return 0; }
static int ld8(char *p) { LD("ldr", "x", p); return 0; }
static int ld16(char *p) { uint64x2_t v; __asm__ __volatile__("ldr %q0, [%1]" : "=w"(v) : "r"(p) : "memory"); return 0; }
static int st2(char *p) { ST("strh", "w", p); return 0; }
static int st4(char *p) { ST("str", "w", p); return 0; }
static int st8(char *p) { ST("str", "x", p); return 0; }
static int st16(char *p) { __asm__ __volatile__("str %q0, [%1]" ::"w"(vdupq_n_u64(0)), "r"(p) : "memory"); return 0; }
static int ldp(char *p) { uint64_t a, b; __asm__ __volatile__("ldp %0, %1, [%2]" : "=r"(a), "=r"(b) : "r"(p) : "memory"); return 0; }
static int stp(char *p) { __asm__ __volatile__("stp xzr, xzr, [%0]" ::"r"(p) : "memory"); return 0; }
static int dczva(char *p)
{
	if (!(dmt_features & DMT_F_DCZVA))
		return -EOPNOTSUPP;
	uint64_t block = 4ull << (dmt_dczid() & 0xf);
	__asm__ __volatile__("dc zva, %0" ::"r"((uintptr_t)p & ~(block - 1)) : "memory");
	return 0;
}
/* LDXR/STXR writing back the value read.  A store-exclusive may fail spuriously (an
 * interrupt clears the monitor), so it is tried EXCL_TRIES times: failing every time is
 * the outcome the architecture allows on Device and Normal-NC memory. */
#define EXCL_TRIES 100
static int excl(char *p)
{
	for (int i = 0; i < EXCL_TRIES; i++) {
		uint64_t v;
		uint32_t fail;
		__asm__ __volatile__("ldxr %0, [%2]\n\tstxr %w1, %0, [%2]" : "=&r"(v), "=&r"(fail) : "r"(p) : "memory");
		if (!fail)
			return 0;
	}
	return DMT_PROBE_STXR_FAIL;
}
static int atomic(char *p)
{
	if (!(dmt_features & DMT_F_LSE))
		return -EOPNOTSUPP;
	uint64_t old;
	__asm__ __volatile__(".arch_extension lse\n\tldadd %1, %0, [%2]" : "=r"(old) : "r"(1ul), "r"(p) : "memory");
	return 0;
}
#else
#define LDV(T, p) ((void)*(const volatile T *)(void *)(p))
#define STV(T, p) (*(volatile T *)(void *)(p) = 0)
static int ld2(char *p) { LDV(uint16_t, p); return 0; }
static int ld4(char *p) { LDV(uint32_t, p); return 0; }
static int ld8(char *p) { LDV(uint64_t, p); return 0; }
static int st2(char *p) { STV(uint16_t, p); return 0; }
static int st4(char *p) { STV(uint32_t, p); return 0; }
static int st8(char *p) { STV(uint64_t, p); return 0; }
#if defined(__x86_64__) && !defined(DMT_FORCE_GENERIC)
static int ld16(char *p) { __m128i v = _mm_loadu_si128((const __m128i *)p); __asm__ __volatile__("" ::"x"(v)); return 0; }
static int st16(char *p) { _mm_storeu_si128((__m128i *)p, _mm_setzero_si128()); return 0; }
static int excl(char *p) { __sync_val_compare_and_swap((uint64_t *)p, 0, 0); return 0; } /* LOCK CMPXCHG */
static int atomic(char *p) { __sync_fetch_and_add((uint64_t *)p, 1); return 0; }          /* LOCK XADD */
#else
static int ld16(char *p) { LDV(uint64_t, p); LDV(uint64_t, p + 8); return 0; }
static int st16(char *p) { STV(uint64_t, p); STV(uint64_t, p + 8); return 0; }
static int excl(char *p) { (void)p; return -EOPNOTSUPP; }
static int atomic(char *p) { (void)p; return -EOPNOTSUPP; }
#endif
static int ldp(char *p) { (void)p; return -EOPNOTSUPP; }
static int stp(char *p) { (void)p; return -EOPNOTSUPP; }
static int dczva(char *p) { (void)p; return -EOPNOTSUPP; }
#endif

/* Unaligned variants access p + 1: misaligned for every size above one byte. */
static int ld2u(char *p) { return ld2(p + 1); }
static int ld4u(char *p) { return ld4(p + 1); }
static int ld8u(char *p) { return ld8(p + 1); }
static int ld16u(char *p) { return ld16(p + 1); }
static int st2u(char *p) { return st2(p + 1); }
static int st4u(char *p) { return st4(p + 1); }
static int st8u(char *p) { return st8(p + 1); }
static int st16u(char *p) { return st16(p + 1); }

static const struct dmt_probe probes[] = {
	{"load2", "aligned 2-byte load", 0, ld2},
	{"load2-unaligned", "2-byte load at +1", P_UNALIGNED, ld2u},
	{"load4", "aligned 4-byte load", 0, ld4},
	{"load4-unaligned", "4-byte load at +1", P_UNALIGNED, ld4u},
	{"load8", "aligned 8-byte load", 0, ld8},
	{"load8-unaligned", "8-byte load at +1", P_UNALIGNED, ld8u},
	{"load16", "aligned 16-byte load (LDR Q / MOVDQU)", 0, ld16},
	{"load16-unaligned", "16-byte load at +1", P_UNALIGNED, ld16u},
	{"store2", "aligned 2-byte store", P_WRITES, st2},
	{"store2-unaligned", "2-byte store at +1", P_WRITES | P_UNALIGNED, st2u},
	{"store4", "aligned 4-byte store", P_WRITES, st4},
	{"store4-unaligned", "4-byte store at +1", P_WRITES | P_UNALIGNED, st4u},
	{"store8", "aligned 8-byte store", P_WRITES, st8},
	{"store8-unaligned", "8-byte store at +1", P_WRITES | P_UNALIGNED, st8u},
	{"store16", "aligned 16-byte store", P_WRITES, st16},
	{"store16-unaligned", "16-byte store at +1", P_WRITES | P_UNALIGNED, st16u},
	{"ldp", "LDP of two X registers (arm64)", 0, ldp},
	{"stp", "STP of two X registers (arm64)", P_WRITES, stp},
	{"dc-zva", "DC ZVA of one block (arm64)", P_WRITES, dczva},
	{"exclusive", "LDXR/STXR, status checked (arm64) or LOCK CMPXCHG (x86)", P_WRITES, excl},
	{"atomic", "LSE LDADD (arm64) or LOCK XADD (x86)", P_WRITES, atomic},
};

int dmt_probe_count(void) { return (int)(sizeof(probes) / sizeof(probes[0])); }

const struct dmt_probe *dmt_probe_at(int i)
{
	return (i >= 0 && i < dmt_probe_count()) ? &probes[i] : NULL;
}

static int report_fd = -1;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	int rec[2] = {sig, si->si_code};
	ssize_t n = write(report_fd, rec, sizeof(rec)); /* async-signal-safe */
	(void)n;
	_exit(3);
}

/* Run probe i on p in this (child) process; a fault is written to fd as (sig, si_code)
 * and the child exits 3.  Returns 0 when the access completed, -errno if unsupported,
 * DMT_PROBE_STXR_FAIL when a store-exclusive never succeeded. */
int dmt_probe_child(int i, char *p, int fd)
{
	const struct dmt_probe *pr = dmt_probe_at(i);
	if (!pr)
		return -ENOENT;
	struct sigaction sa = {.sa_sigaction = on_fault}; /* no memset: the library calls no mem* */
	sa.sa_flags = SA_SIGINFO;
	report_fd = fd;
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	int rc = pr->fn(p);
	dmt_fence_full();
	return rc;
}
