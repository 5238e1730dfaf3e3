#include "sweeps.h"

/* Dependent reads of one word: the next address depends on the value just read (ANDed
 * with a zero the compiler cannot see), so each read completes before the next issues,
 * as a driver polling a status register does.  Never writes. */
static int body(struct dmt_args *a, uint64_t loops)
{
	const char *p = a->buf;
	uint64_t zero = 0, v = 0;
	__asm__ __volatile__("" : "+r"(zero));
	for (uint64_t l = 0; l < loops; l++)
		v = dmt_load_one(p + (v & zero), a->width);
	a->sink ^= v;
	return 0;
}

DMT_KERNEL(mmio_read) = {
	.name = "mmio-read", .kind = "latency", .unit = "ns",
	.params = "width=4|*8",
	.doc = "dependent 4/8-byte reads of one word (register read latency)",
	.per_loop = DMT_PER_ACCESS, .flags = DMT_READS,
	.default_size = 4096,
	.supported = dmt_check_word, .body = body,
};
