#include "sweeps.h"

static int body(struct dmt_args *a, uint64_t loops)
{
	for (uint64_t l = 0; l < loops; l++)
		dmt_copy(a->ram, a->buf, a->size, a->width, 0);
	return 0;
}

DMT_KERNEL(copy_from) = {
	.name = "copy-from", .kind = "bandwidth", .unit = "GB/s",
	.params = "width=8|16|32|*64",
	.doc = "copy mapping -> RAM (BAR read-back); GB/s counts bytes copied once",
	.per_loop = DMT_PER_SIZE, .flags = DMT_READS | DMT_NEEDS_SRC | DMT_SIZED,
	.default_size = 64ull << 20,
	.supported = dmt_check_copy, .body = body,
};
