#include "sweeps.h"

/* One posted store to the same word, then a store fence: a NIC doorbell ring. */
static int body(struct dmt_args *a, uint64_t loops)
{
	for (uint64_t l = 0; l < loops; l++) {
		dmt_store_one(a->buf, a->width, l);
		dmt_fence_store();
	}
	return 0;
}

DMT_KERNEL(doorbell) = {
	.name = "doorbell", .kind = "rate", .unit = "M/s",
	.params = "width=4|*8",
	.doc = "single 4/8-byte store + store fence per loop: millions of writes/s",
	.per_loop = DMT_PER_ACCESS, .flags = DMT_WRITES,
	.default_size = 4096,
	.supported = dmt_check_word, .body = body,
};
