/* The payload's request loop and the few C-library functions the kernel sources need in
 * a freestanding world.  The kernels (every c_kernels .c file, core.c's table and dmt_run) and the
 * probe table (probes.c) are linked unchanged: one source, three homes.
 *
 *   clock_gettime  CNTVCT_EL0 / CNTFRQ_EL0 (so dmt_run's nanoseconds are counter ticks)
 *   getauxval      AT_HWCAP from ID_AA64ISAR0_EL1 (LSE atomics), as Linux would report it
 *   malloc/free    a bump allocator over the heap the VMM reserved (read-lat's init)
 *   memset/memcpy  what the compiler may emit for struct copies */
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "abi.h"

#define MB ((volatile struct dmtk_mailbox *)DMTK_MAILBOX_IPA)
#define HWCAP_ATOMICS (1ul << 8)
#define AT_HWCAP 16

_Static_assert(offsetof(struct dmtk_mailbox, ttbr0) == DMTK_OFF_TTBR0, "abi.h offsets");
_Static_assert(offsetof(struct dmtk_mailbox, tcr) == DMTK_OFF_TCR, "abi.h offsets");
_Static_assert(offsetof(struct dmtk_mailbox, mair) == DMTK_OFF_MAIR, "abi.h offsets");

/* From core.c and probes.c (the userspace library's ABI; bench/probe.py mirrors it too). */
struct dmt_probe {
	const char *name;
	const char *doc;
	uint32_t flags;
	int (*fn)(char *p);
};
const struct dmt_probe *dmt_probe_at(int i);
int dmt_init(int i, struct dmt_args *a);
int64_t dmt_run(int i, struct dmt_args *a, uint64_t loops);
uint64_t dmt_prefault(void *p, uint64_t n, int write);
uint32_t dmt_get_features(void);

#define SYSREG(name) ({ uint64_t v_; __asm__ __volatile__("mrs %0, " #name : "=r"(v_)); v_; })

static uint64_t cntfrq;

int clock_gettime(clockid_t clk, struct timespec *ts)
{
	(void)clk;
	uint64_t t;
	/* ISB: the counter is read after everything before it (dmt_run's DSB) has completed. */
	__asm__ __volatile__("isb\n\tmrs %0, cntvct_el0" : "=r"(t)::"memory");
	ts->tv_sec = (time_t)(t / cntfrq);
	ts->tv_nsec = (long)((t % cntfrq) * 1000000000ull / cntfrq);
	return 0;
}

unsigned long getauxval(unsigned long type)
{
	if (type != AT_HWCAP)
		return 0;
	return ((SYSREG(id_aa64isar0_el1) >> 20) & 0xf) >= 2 ? HWCAP_ATOMICS : 0;
}

static uint64_t heap_top;

void *malloc(size_t n)
{
	uint64_t p = (heap_top + 15) & ~15ull;
	if (p + n > MB->heap + MB->heap_size)
		return NULL;
	heap_top = p + n;
	return (void *)p;
}

void free(void *p)
{
	(void)p; /* the heap is reset before each kernel init */
}

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memset(void *d, int c, size_t n)
{
	for (unsigned char *p = d; n--;)
		*p++ = (unsigned char)c;
	return d;
}

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *o = d;
	for (const unsigned char *i = s; n--;)
		*o++ = *i++;
	return d;
}

/* Hand control back to the VMM: an 8-byte store to an IPA with no memslot. */
static void exit_to_vmm(uint64_t code)
{
	__asm__ __volatile__("dsb sy\n\tstr %0, [%1]" ::"r"(code), "r"(DMTK_EXIT_IPA) : "memory");
}

static char *window(uint32_t attr)
{
	return (char *)(uintptr_t)DMTK_WINDOW_VA(attr);
}

static int64_t probe(uint32_t index, char *p)
{
	const struct dmt_probe *pr = dmt_probe_at((int)index);
	if (!pr)
		return -2; /* -ENOENT */
	int rc = pr->fn(p);
	__asm__ __volatile__("dsb sy" ::: "memory"); /* a posted store's abort arrives before "done" */
	return rc;
}

static int64_t serve(volatile struct dmtk_mailbox *mb)
{
	struct dmt_args *args = (struct dmt_args *)&mb->args;
	switch (mb->op) {
	case DMTK_OP_INFO:
		mb->cntfrq = cntfrq;
		mb->features = dmt_get_features();
		mb->midr = SYSREG(midr_el1);
		mb->mmfr2 = SYSREG(id_aa64mmfr2_el1);
		return 0;
	case DMTK_OP_INIT:
		heap_top = mb->heap;
		args->buf = window(mb->attr);
		args->ram = (void *)(uintptr_t)mb->ram;
		return dmt_init((int)mb->index, args);
	case DMTK_OP_RUN:
		return dmt_run((int)mb->index, args, mb->loops);
	case DMTK_OP_PROBE:
		return probe(mb->index, window(mb->attr) + mb->offset);
	case DMTK_OP_PREFAULT:
		dmt_prefault(window(mb->attr), mb->target_size, mb->loops != 0);
		return 0;
	default:
		return -22; /* -EINVAL */
	}
}

static __attribute__((noreturn)) void request_loop(void)
{
	for (;;) {
		MB->ret = serve(MB);
		exit_to_vmm(DMTK_EXIT_DONE);
	}
}

extern void (*__init_array_start[])(void);
extern void (*__init_array_end[])(void);

void dmtk_main(void)
{
	cntfrq = SYSREG(cntfrq_el0);
	for (void (**f)(void) = __init_array_start; f < __init_array_end; f++)
		(*f)(); /* core.c's feature detection */
	request_loop();
}

/* Called from the vectors with a fresh stack: report the exception, then serve the next
 * request (the VMM resumes us after reading the report). */
void dmtk_fault(uint64_t vector)
{
	MB->vector = vector;
	MB->esr = SYSREG(esr_el1);
	MB->far = SYSREG(far_el1);
	MB->elr = SYSREG(elr_el1);
	MB->ret = -14; /* -EFAULT */
	exit_to_vmm(DMTK_EXIT_FAULT);
	request_loop();
}
