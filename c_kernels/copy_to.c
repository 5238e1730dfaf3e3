#include "sweeps.h"

static int body(struct dmt_args *a, uint64_t loops)
{
	for (uint64_t l = 0; l < loops; l++)
		dmt_copy(a->buf, a->ram, a->size, a->width, a->mode == 1);
	return 0;
}

DMT_KERNEL(copy_to) = {
	.name = "copy-to", .kind = "bandwidth", .unit = "GB/s",
	.params = "width=8|16|32|*64;mode=*plain|nt",
	.doc = "copy RAM -> mapping (host-to-BAR upload); GB/s counts bytes copied once",
	.per_loop = DMT_PER_SIZE, .flags = DMT_READS | DMT_WRITES | DMT_NEEDS_SRC | DMT_SIZED,
	.default_size = 64ull << 20,
	.supported = dmt_check_copy, .body = body,
};
