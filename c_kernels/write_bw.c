#include "sweeps.h"

static int body(struct dmt_args *a, uint64_t loops)
{
	for (uint64_t l = 0; l < loops; l++)
		dmt_write(a->buf, a->size, a->width, a->mode == 1);
	return 0;
}

DMT_KERNEL(write_bw) = {
	.name = "write-bw", .kind = "bandwidth", .unit = "GB/s",
	.params = "width=8|16|32|*64;mode=*plain|nt",
	.doc = "sequential stores of width bytes (nt: non-temporal/streaming stores)",
	.per_loop = DMT_PER_SIZE, .flags = DMT_WRITES | DMT_SIZED,
	.default_size = 64ull << 20,
	.supported = dmt_check_sweep, .body = body,
};
