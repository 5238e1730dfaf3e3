#include "sweeps.h"

static int body(struct dmt_args *a, uint64_t loops)
{
	for (uint64_t l = 0; l < loops; l++) {
		int rc = dmt_zero(a->buf, a->size);
		if (rc)
			return rc;
	}
	return 0;
}

DMT_KERNEL(zero) = {
	.name = "zero", .kind = "bandwidth", .unit = "GB/s",
	.params = "",
	.doc = "memset-style zeroing (rep stosb on x86_64, DC ZVA on arm64)",
	.per_loop = DMT_PER_SIZE, .flags = DMT_WRITES | DMT_SIZED,
	.default_size = 64ull << 20,
	.supported = dmt_check_sweep, .body = body,
};
