/* The table of kernels, feature detection and the one timed entry point. */
#include <errno.h>
#include <time.h>
#include "sweeps.h"

#define K(ident) extern const struct dmt_kernel dmt_kernel_##ident;
#include "kernels.def"
#undef K

static const struct dmt_kernel *const table[] = {
#define K(ident) &dmt_kernel_##ident,
#include "kernels.def"
#undef K
};

uint32_t dmt_features;

__attribute__((constructor)) static void dmt_detect(void) { dmt_features = dmt_arch_features(); }

#ifndef DMT_SRC_HASH
#define DMT_SRC_HASH "unknown"
#endif

int dmt_abi_version(void) { return DMT_ABI_VERSION; }
const char *dmt_src_hash(void) { return DMT_SRC_HASH; }
const char *dmt_arch(void) { return DMT_ARCH_NAME; }
uint32_t dmt_get_features(void) { return dmt_features; }
int dmt_kernel_count(void) { return (int)(sizeof(table) / sizeof(table[0])); }

const struct dmt_kernel *dmt_kernel_at(int i)
{
	return (i >= 0 && i < dmt_kernel_count()) ? table[i] : NULL;
}

/* A cap below what the CPU has (DMT_MAX_WIDTH, set by the loader): one machine then
 * behaves as a narrower one does, so tests prove they hold on an AVX2-only CPU. */
static uint32_t dmt_max_width = 64;

void dmt_set_max_width(uint32_t width) { dmt_max_width = width; }

/* The sweep widths (sweeps.h has 8-, 16-, 32- and 64-byte primitives).  A 4-byte access
 * exists only as a single word (dmt_check_word: doorbell, mmio-read); a sweep asked for
 * width 4 would otherwise fall through to 64-byte accesses, and wc-burst would store up to
 * 60 bytes past its burst. */
int dmt_width_supported(uint32_t width)
{
	if (width != 8 && width != 16 && width != 32 && width != 64)
		return -EINVAL;
	if (width > dmt_max_width)
		return -EOPNOTSUPP;
	uint32_t need = dmt_width_feature(width);
	return (dmt_features & need) == need ? 0 : -EOPNOTSUPP;
}

int dmt_check_sweep(const struct dmt_args *a)
{
	if (!a->buf || a->size < 256 || a->size % 256)
		return -EINVAL;
	return dmt_width_supported(a->width);
}

int dmt_check_copy(const struct dmt_args *a)
{
	return a->ram ? dmt_check_sweep(a) : -EINVAL;
}

/* Single-word kernels (doorbell, mmio-read): a 4- or 8-byte access at offset 0. */
int dmt_check_word(const struct dmt_args *a)
{
	return (a->buf && a->size >= 8 && (a->width == 4 || a->width == 8)) ? 0 : -EINVAL;
}

uint64_t dmt_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int dmt_supported(int i, const struct dmt_args *a)
{
	const struct dmt_kernel *k = dmt_kernel_at(i);
	if (!k)
		return -ENOENT;
	return k->supported ? k->supported(a) : 0;
}

int dmt_init(int i, struct dmt_args *a)
{
	const struct dmt_kernel *k = dmt_kernel_at(i);
	if (!k)
		return -ENOENT;
	int rc = k->supported ? k->supported(a) : 0;
	if (rc == 0 && k->init)
		rc = k->init(a);
	return rc;
}

/* Runs `loops` iterations of kernel i; returns elapsed ns, or -errno.  Full fences on
 * both sides so that posted, streaming and write-combined stores are complete (and
 * counted) before the stop time is read.  -ERANGE: the kernel's calibrated overhead is at
 * least the measured time, so the access's own time is not measurable at this loop count
 * (clamping it to 1 ns would report a latency that was never seen). */
int64_t dmt_run(int i, struct dmt_args *a, uint64_t loops)
{
	const struct dmt_kernel *k = dmt_kernel_at(i);
	if (!k)
		return -ENOENT;
	dmt_fence_full();
	uint64_t t0 = dmt_now_ns();
	int rc = k->body(a, loops);
	dmt_fence_full();
	uint64_t t1 = dmt_now_ns();
	if (rc)
		return rc;
	int64_t elapsed = (int64_t)(t1 - t0);
	if (k->overhead) {
		int64_t ov = k->overhead(a, loops);
		return ov < elapsed ? elapsed - ov : -ERANGE;
	}
	return elapsed > 0 ? elapsed : 1; /* a region shorter than one clock tick (CNTVCT in the payload) */
}

/* Cost of an empty timed region, for the runner's overhead report. */
int64_t dmt_timer_overhead(uint64_t reps)
{
	uint64_t t0 = dmt_now_ns();
	for (uint64_t r = 0; r < reps; r++) {
		dmt_fence_full();
		(void)dmt_now_ns();
		dmt_fence_full();
		(void)dmt_now_ns();
	}
	return (int64_t)(dmt_now_ns() - t0);
}

/* Touch every page so that page faults are not timed (read-only maps are only read). */
uint64_t dmt_prefault(void *p, uint64_t n, int write)
{
	uint64_t sum = 0;
	for (uint64_t off = 0; off < n; off += 4096) {
		if (write)
			((volatile char *)p)[off] = 0;
		else
			sum += ((volatile char *)p)[off];
	}
	return sum;
}
