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

/* DC ZVA to any Device type is an alignment fault on arm64 hardware (QEMU does not
 * model it): the planner refuses zero where the effective type is Device. */
#if defined(__aarch64__) && !defined(DMT_FORCE_GENERIC)
#define ZERO_FLAGS (DMT_WRITES | DMT_SIZED | DMT_NO_DEVICE)
#else
#define ZERO_FLAGS (DMT_WRITES | DMT_SIZED)
#endif

DMT_KERNEL(zero) = {
	.name = "zero", .kind = "bandwidth", .unit = "GB/s",
	.params = "",
	.doc = "memset-style zeroing (rep stosb on x86_64, DC ZVA on arm64: refused on Device memory, where it faults)",
	.per_loop = DMT_PER_SIZE, .flags = ZERO_FLAGS,
	.default_size = 64ull << 20,
	.supported = dmt_check_sweep, .body = body,
};
