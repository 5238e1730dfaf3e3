/* dmtbench kernel ABI: one descriptor per workload, read by Python through ctypes.
 *
 * A kernel body runs `loops` iterations; dmt_run() brackets it with full fences and a
 * monotonic clock so the timed region never includes Python.  What one iteration does is
 * declared once, in the descriptor (`per_loop`), so the runner derives GB/s or ns per
 * access with no per-kernel code.  Keep this header in sync with bench/kernels.py. */
#ifndef DMT_H
#define DMT_H
#include <stddef.h>
#include <stdint.h>

#define DMT_ABI_VERSION 2

/* What one loop iteration accounts for. */
enum dmt_per_loop {
	DMT_PER_SIZE = 1,   /* one pass over args.size bytes            -> GB/s */
	DMT_PER_BURST = 2,  /* one burst of args.burst bytes            -> GB/s */
	DMT_PER_ACCESS = 3, /* one access (load, store, chase step)     -> ns or M/s */
};

/* What the kernel does to the mapping (the runner enforces target permissions). */
enum dmt_flags {
	DMT_READS = 1u << 0,
	DMT_WRITES = 1u << 1,
	DMT_NEEDS_SRC = 1u << 2,  /* copy: uses args.ram as the RAM side */
	DMT_NEEDS_INIT = 1u << 3, /* init() must run (and writes the mapping) */
	DMT_SIZED = 1u << 4,      /* the result depends on args.size (a sweep makes sense) */
	DMT_NO_DEVICE = 1u << 5,  /* its instruction faults on Device memory on this arch (DC ZVA) */
};

struct dmt_args {
	void *buf;         /* the mapping under test */
	void *ram;         /* RAM buffer of args.size bytes (copy kernels) */
	uint64_t size;     /* bytes of buf used */
	uint32_t width;    /* access width in bytes: 4, 8, 16, 32, 64 */
	uint32_t burst;    /* burst bytes (wc-burst) */
	uint32_t mode;     /* kernel-specific variant index into the `mode` parameter */
	uint32_t stride;   /* chase slot size */
	uint64_t seed;
	uint64_t sink;     /* results the compiler must not drop */
	uint64_t cursor;   /* kernel state kept across calls (burst ring position) */
};

struct dmt_kernel {
	const char *name;
	const char *kind;    /* bandwidth | latency | rate */
	const char *unit;    /* GB/s | ns | M/s */
	const char *params;  /* "key=v1|v2|*default;key2=..." (see bench/kernels.py) */
	const char *doc;
	uint32_t per_loop;   /* enum dmt_per_loop */
	uint32_t flags;      /* enum dmt_flags */
	uint64_t default_size; /* bytes of mapping used when the user names no size */
	int (*supported)(const struct dmt_args *a);           /* 0 or -errno */
	int (*init)(struct dmt_args *a);                       /* may be NULL */
	int (*body)(struct dmt_args *a, uint64_t loops);       /* 0 or -errno */
	/* May be NULL: ns of the loop's own work that is not the access (a dependency
	 * chain's ALU ops), measured right after the body and subtracted by dmt_run. */
	int64_t (*overhead)(struct dmt_args *a, uint64_t loops);
};

/* Each kernel file defines exactly one descriptor with this macro; kernels.def lists it. */
#define DMT_KERNEL(ident) const struct dmt_kernel dmt_kernel_##ident

/* Features detected once at load time (bench/kernels.py names them). */
enum dmt_feature {
	DMT_F_SSE2 = 1u << 0,
	DMT_F_AVX2 = 1u << 1,
	DMT_F_AVX512 = 1u << 2,
	DMT_F_MOVDIR64B = 1u << 3,
	DMT_F_NEON = 1u << 8,
	DMT_F_DCZVA = 1u << 9, /* DC ZVA permitted (DCZID_EL0.DZP == 0) */
	DMT_F_LSE = 1u << 10,
};
extern uint32_t dmt_features;
int dmt_width_supported(uint32_t width);
void dmt_set_max_width(uint32_t width);
uint64_t dmt_now_ns(void); /* the clock dmt_run reads (CLOCK_MONOTONIC) */

/* Common checks shared by the kernels. */
int dmt_check_sweep(const struct dmt_args *a);
int dmt_check_copy(const struct dmt_args *a);
int dmt_check_word(const struct dmt_args *a);

#endif
