#include "sweeps.h"

static int body(struct dmt_args *a, uint64_t loops)
{
	for (uint64_t l = 0; l < loops; l++)
		a->sink ^= dmt_read(a->buf, a->size, a->width);
	return 0;
}

DMT_KERNEL(read_bw) = {
	.name = "read-bw", .kind = "bandwidth", .unit = "GB/s",
	.params = "width=8|16|32|*64",
	.doc = "sequential loads of width bytes over the mapping (one pass per loop)",
	.per_loop = DMT_PER_SIZE, .flags = DMT_READS | DMT_SIZED,
	.default_size = 64ull << 20,
	.supported = dmt_check_sweep, .body = body,
};
