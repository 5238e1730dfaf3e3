/* Width-exact sweeps built from the arch primitives (LDn/STn/NT2_n/XORn).  Each sweep
 * moves n bytes (n a multiple of 4 * width) with four independent accesses per step,
 * so the loop, not a dependency chain, is what limits the rate.  Accumulators start
 * from ZEROn, not from a load: every load a sweep issues is one it accounts for.
 * NT2_n(p, x, y) stores x at p and y at p + n as streaming stores of n-byte accesses
 * (on arm64 one STNP pair), so mode=nt keeps the access size of mode=plain. */
#ifndef DMT_SWEEPS_H
#define DMT_SWEEPS_H
#include "dmt.h"
/* DMT_FORCE_GENERIC: build the portable path on any host (tests do, to keep it compiling). */
#if defined(__x86_64__) && !defined(DMT_FORCE_GENERIC)
#include "arch/x86_64.h"
#elif defined(__aarch64__) && !defined(DMT_FORCE_GENERIC)
#include "arch/arm64.h"
#else
#include "arch/generic.h"
#endif

#define DMT_DEFINE_SWEEPS(W)                                                                   \
	__attribute__((target(DMT_TGT##W))) static uint64_t dmt_rd##W(const char *p, uint64_t n) \
	{                                                                                      \
		dmt_v##W a0 = ZERO##W, a1 = a0, a2 = a0, a3 = a0;                             \
		for (uint64_t i = 0; i < n; i += 4 * W) {                                      \
			a0 = XOR##W(a0, LD##W(p + i));                                         \
			a1 = XOR##W(a1, LD##W(p + i + W));                                     \
			a2 = XOR##W(a2, LD##W(p + i + 2 * W));                                 \
			a3 = XOR##W(a3, LD##W(p + i + 3 * W));                                 \
		}                                                                              \
		return FOLD##W(XOR##W(XOR##W(a0, a1), XOR##W(a2, a3)));                        \
	}                                                                                      \
	__attribute__((target(DMT_TGT##W))) static void dmt_wr##W(char *p, uint64_t n, int nt) \
	{                                                                                      \
		dmt_v##W v = PAT##W;                                                           \
		if (nt) {                                                                      \
			for (uint64_t i = 0; i < n; i += 4 * W) {                              \
				NT2_##W(p + i, v, v);                                          \
				NT2_##W(p + i + 2 * W, v, v);                                  \
			}                                                                      \
			return;                                                                \
		}                                                                              \
		for (uint64_t i = 0; i < n; i += 4 * W) {                                      \
			ST##W(p + i, v);                                                       \
			ST##W(p + i + W, v);                                                   \
			ST##W(p + i + 2 * W, v);                                               \
			ST##W(p + i + 3 * W, v);                                               \
		}                                                                              \
	}                                                                                      \
	__attribute__((target(DMT_TGT##W))) static void dmt_cp##W(char *d, const char *s,     \
								   uint64_t n, int nt)          \
	{                                                                                      \
		if (nt) {                                                                      \
			for (uint64_t i = 0; i < n; i += 2 * W) {                              \
				dmt_v##W x = LD##W(s + i), y = LD##W(s + i + W);               \
				NT2_##W(d + i, x, y);                                          \
			}                                                                      \
			return;                                                                \
		}                                                                              \
		for (uint64_t i = 0; i < n; i += 2 * W) {                                      \
			dmt_v##W x = LD##W(s + i), y = LD##W(s + i + W);                       \
			ST##W(d + i, x);                                                       \
			ST##W(d + i + W, y);                                                   \
		}                                                                              \
	}                                                                                      \
	/* One burst: n bytes of W-byte stores, no unrolling (n may be a single store). */    \
	__attribute__((target(DMT_TGT##W))) static void dmt_bs##W(char *p, uint64_t n)       \
	{                                                                                      \
		dmt_v##W v = PAT##W;                                                           \
		for (uint64_t i = 0; i < n; i += W)                                            \
			ST##W(p + i, v);                                                       \
	}

DMT_DEFINE_SWEEPS(8)
DMT_DEFINE_SWEEPS(16)
DMT_DEFINE_SWEEPS(32)
DMT_DEFINE_SWEEPS(64)

/* The dispatchers take only the widths dmt_width_supported() accepts (8, 16, 32, 64): each
 * kernel's supported() checks the width first, so the 64-byte default is never reached
 * with another width. */
static inline uint64_t dmt_read(const void *p, uint64_t n, uint32_t w)
{
	switch (w) {
	case 8: return dmt_rd8(p, n);
	case 16: return dmt_rd16(p, n);
	case 32: return dmt_rd32(p, n);
	default: return dmt_rd64(p, n);
	}
}

static inline void dmt_write(void *p, uint64_t n, uint32_t w, int nt)
{
	switch (w) {
	case 8: dmt_wr8(p, n, nt); break;
	case 16: dmt_wr16(p, n, nt); break;
	case 32: dmt_wr32(p, n, nt); break;
	default: dmt_wr64(p, n, nt); break;
	}
}

static inline void dmt_copy(void *d, const void *s, uint64_t n, uint32_t w, int nt)
{
	switch (w) {
	case 8: dmt_cp8(d, s, n, nt); break;
	case 16: dmt_cp16(d, s, n, nt); break;
	case 32: dmt_cp32(d, s, n, nt); break;
	default: dmt_cp64(d, s, n, nt); break;
	}
}

static inline void dmt_burst(void *p, uint64_t n, uint32_t w)
{
	switch (w) {
	case 8: dmt_bs8(p, n); break;
	case 16: dmt_bs16(p, n); break;
	case 32: dmt_bs32(p, n); break;
	default: dmt_bs64(p, n); break;
	}
}

/* A 4- or 8-byte single-copy access, for registers and doorbells. */
static inline void dmt_store_one(void *p, uint32_t w, uint64_t v)
{
	if (w == 4)
		*(volatile uint32_t *)p = (uint32_t)v;
	else
		*(volatile uint64_t *)p = v;
}

static inline uint64_t dmt_load_one(const void *p, uint32_t w)
{
	return w == 4 ? *(const volatile uint32_t *)p : *(const volatile uint64_t *)p;
}

#endif
