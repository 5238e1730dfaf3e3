#include <errno.h>
#include "sweeps.h"

/* Bursts of `burst` bytes made of the widest stores (up to args.width), each followed by
 * a store fence: the BlueFlame / write-combined doorbell pattern.  Bursts walk the mapping
 * as a ring, so consecutive bursts hit consecutive lines as a NIC's WC buffers do. */
static uint32_t store_width(const struct dmt_args *a)
{
	return a->burst < a->width ? a->burst : a->width;
}

/* Every store stays inside its burst and every burst inside the mapping: the burst is a
 * power of two >= the store width (dmt_width_supported() takes only 8..64, each a power of
 * two), and the mapping a whole number of bursts. */
static int supported(const struct dmt_args *a)
{
	uint32_t b = a->burst;
	if (!a->buf || b < 8 || b > 256 || (b & (b - 1)) || a->size < b || a->size % b)
		return -EINVAL;
	int rc = dmt_width_supported(store_width(a));
	return rc ? rc : (b % store_width(a) ? -EINVAL : 0);
}

static int body(struct dmt_args *a, uint64_t loops)
{
	char *base = a->buf;
	uint32_t w = store_width(a);
	uint64_t pos = a->cursor % a->size;
	for (uint64_t l = 0; l < loops; l++) {
		dmt_burst(base + pos, a->burst, w);
		dmt_fence_store();
		pos += a->burst;
		if (pos >= a->size)
			pos = 0;
	}
	a->cursor = pos;
	return 0;
}

DMT_KERNEL(wc_burst) = {
	.name = "wc-burst", .kind = "bandwidth", .unit = "GB/s",
	.params = "burst=8|16|32|*64|128|256",
	.doc = "bursts of burst bytes + store fence (write-combining doorbell); also bursts/s",
	.per_loop = DMT_PER_BURST, .flags = DMT_WRITES | DMT_SIZED,
	.default_size = 4096,
	.supported = supported, .body = body,
};
