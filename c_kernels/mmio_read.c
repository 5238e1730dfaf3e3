#include "sweeps.h"

/* Dependent reads of one word, as a driver polling a status register issues them: the
 * next address is base + (value & zero), with zero a register the compiler cannot see
 * into, so each read completes before the next issues.  The mapping may be read-only
 * (a register BAR), so the word cannot hold a pointer and the chain needs that AND and
 * ADD.  They are timed alone (the same loop without the load) and subtracted by dmt_run
 * through .overhead, so the result is the load's own latency.  Never writes. */

/* One chain step: v = load(base + (v & zero)); `load` is a single asm line so the
 * calibration loop runs exactly the same instructions without it.  v and n are
 * early-clobber: they must not share a register with zero or base. */
#if defined(__x86_64__) && !defined(DMT_FORCE_GENERIC)
#define CHAIN(load)                                                                            \
	__asm__ __volatile__("1:\n\tand %[z], %[v]\n\tadd %[b], %[v]\n\t" load "\n\tdec %[n]\n\tjnz 1b" \
			     : [v] "+&r"(v), [n] "+&r"(n) : [z] "r"(zero), [b] "r"(base) : "memory", "cc")
#define LOAD8 "mov (%[v]), %[v]"
#define LOAD4 "movl (%[v]), %k[v]"
#elif defined(__aarch64__) && !defined(DMT_FORCE_GENERIC)
#define CHAIN(load)                                                                            \
	__asm__ __volatile__("1:\n\tand %[v], %[v], %[z]\n\tadd %[v], %[v], %[b]\n\t" load           \
			     "\n\tsubs %[n], %[n], #1\n\tb.ne 1b"                                 \
			     : [v] "+&r"(v), [n] "+&r"(n) : [z] "r"(zero), [b] "r"(base) : "memory", "cc")
#define LOAD8 "ldr %[v], [%[v]]"
#define LOAD4 "ldr %w[v], [%[v]]"
#endif

#ifdef CHAIN
static uint64_t chase(const char *base, uint64_t n, uint32_t width)
{
	uint64_t v = 0, zero = 0;
	__asm__("" : "+r"(zero)); /* opaque: the compiler must not fold v & zero */
	if (width == 4)
		CHAIN(LOAD4);
	else
		CHAIN(LOAD8);
	return v;
}

/* The same loop without the load: what the chain adds to each read.  Timed in CHUNKS
 * pieces and scaled from the fastest, so that a preemption during the calibration
 * (which would subtract too much) is discarded rather than subtracted.  The cost of the
 * clock read itself (the fastest of CHUNKS back-to-back reads) is taken out: dmt_run's own
 * region holds one clock read too, and subtracting it twice would make a short chain's
 * calibration exceed its measurement (which dmt_run reports as -ERANGE, a failed case). */
#define CHUNKS 8
static int64_t overhead(struct dmt_args *a, uint64_t loops)
{
	const char *base = a->buf;
	uint64_t per = loops >= 8 * CHUNKS ? loops / CHUNKS : loops, best = UINT64_MAX, clock = UINT64_MAX;
	if (!loops)
		return 0;
	int chunks = per == loops ? 1 : CHUNKS;
	for (int c = 0; c < CHUNKS; c++) {
		uint64_t c0 = dmt_now_ns(), c1 = dmt_now_ns();
		clock = c1 - c0 < clock ? c1 - c0 : clock;
		if (c >= chunks)
			continue; /* one loop: the only innermost loop without a load is the chain's */
		uint64_t v = 0, zero = 0, n = per;
		__asm__("" : "+r"(zero));
		uint64_t t0 = dmt_now_ns();
		CHAIN("");
		uint64_t t = dmt_now_ns() - t0;
		best = t < best ? t : best;
	}
	best = best > clock ? best - clock : 0;
	return (int64_t)(best * (double)loops / per);
}
#define OVERHEAD overhead
#else
/* Portable fallback: the compiler's own and/add stay in the chain (not subtracted). */
static uint64_t chase(const char *base, uint64_t n, uint32_t width)
{
	uint64_t zero = 0, v = 0;
	__asm__ __volatile__("" : "+r"(zero));
	for (uint64_t l = 0; l < n; l++)
		v = dmt_load_one(base + (v & zero), width);
	return v;
}
#define OVERHEAD NULL
#endif

static int body(struct dmt_args *a, uint64_t loops)
{
	if (loops)
		a->sink ^= chase(a->buf, loops, a->width);
	return 0;
}

DMT_KERNEL(mmio_read) = {
	.name = "mmio-read", .kind = "latency", .unit = "ns",
	.params = "width=4|*8",
	.doc = "dependent 4/8-byte reads of one word (register read latency; the chain's and+add is timed alone and subtracted)",
	.per_loop = DMT_PER_ACCESS, .flags = DMT_READS,
	.default_size = 4096,
	.supported = dmt_check_word, .body = body, .overhead = OVERHEAD,
};
