/* Portable fallback for other architectures: every width is made of volatile 8-byte
 * accesses, so results are comparable only within this fallback (metadata says so). */
#ifndef DMT_ARCH_GENERIC_H
#define DMT_ARCH_GENERIC_H
#include <string.h>

#define DMT_ARCH_NAME "generic"

static inline void dmt_fence_full(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void dmt_fence_store(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline uint32_t dmt_arch_features(void) { return 0; }
static inline uint32_t dmt_width_feature(uint32_t width) { (void)width; return 0; }

#define DMT_GEN_VEC(W, N)                                                                      \
	typedef struct { uint64_t q[N]; } dmt_v##W;                                            \
	static inline dmt_v##W dmt_ld##W(const void *p)                                        \
	{                                                                                      \
		dmt_v##W v;                                                                    \
		for (int i = 0; i < N; i++)                                                    \
			v.q[i] = ((const volatile uint64_t *)p)[i];                            \
		return v;                                                                      \
	}                                                                                      \
	static inline void dmt_st##W(void *p, dmt_v##W v)                                      \
	{                                                                                      \
		for (int i = 0; i < N; i++)                                                    \
			((volatile uint64_t *)p)[i] = v.q[i];                                  \
	}                                                                                      \
	static inline dmt_v##W dmt_xor##W(dmt_v##W a, dmt_v##W b)                              \
	{                                                                                      \
		for (int i = 0; i < N; i++)                                                    \
			a.q[i] ^= b.q[i];                                                      \
		return a;                                                                      \
	}                                                                                      \
	static inline dmt_v##W dmt_fill##W(uint64_t x)                                         \
	{                                                                                      \
		dmt_v##W v;                                                                    \
		for (int i = 0; i < N; i++)                                                    \
			v.q[i] = x;                                                            \
		return v;                                                                      \
	}
DMT_GEN_VEC(8, 1)
DMT_GEN_VEC(16, 2)
DMT_GEN_VEC(32, 4)
DMT_GEN_VEC(64, 8)
#define LDW(W, p) dmt_ld##W(p)
#define LD8(p) dmt_ld8(p)
#define LD16(p) dmt_ld16(p)
#define LD32(p) dmt_ld32(p)
#define LD64(p) dmt_ld64(p)
#define ST8(p, v) dmt_st8((p), (v))
#define ST16(p, v) dmt_st16((p), (v))
#define ST32(p, v) dmt_st32((p), (v))
#define ST64(p, v) dmt_st64((p), (v))
/* No portable streaming store: NT falls back to plain stores. */
#define DMT_GEN_NT2(W, p, x, y) (dmt_st##W((p), (x)), dmt_st##W((char *)(p) + W, (y)))
#define NT2_8(p, x, y) DMT_GEN_NT2(8, p, x, y)
#define NT2_16(p, x, y) DMT_GEN_NT2(16, p, x, y)
#define NT2_32(p, x, y) DMT_GEN_NT2(32, p, x, y)
#define NT2_64(p, x, y) DMT_GEN_NT2(64, p, x, y)
#define XOR8(a, b) dmt_xor8((a), (b))
#define XOR16(a, b) dmt_xor16((a), (b))
#define XOR32(a, b) dmt_xor32((a), (b))
#define XOR64(a, b) dmt_xor64((a), (b))
#define FOLD8(a) ((a).q[0])
#define FOLD16(a) ((a).q[0])
#define FOLD32(a) ((a).q[0])
#define FOLD64(a) ((a).q[0])
#define PAT8 dmt_fill8(0x5a5a5a5a5a5a5a5aull)
#define ZERO8 dmt_fill8(0)
#define PAT16 dmt_fill16(0x5a5a5a5a5a5a5a5aull)
#define ZERO16 dmt_fill16(0)
#define PAT32 dmt_fill32(0x5a5a5a5a5a5a5a5aull)
#define ZERO32 dmt_fill32(0)
#define PAT64 dmt_fill64(0x5a5a5a5a5a5a5a5aull)
#define ZERO64 dmt_fill64(0)
#define DMT_TGT8 "default"
#define DMT_TGT16 "default"
#define DMT_TGT32 "default"
#define DMT_TGT64 "default"

static inline int dmt_zero(void *p, uint64_t n)
{
	memset(p, 0, n);
	return 0;
}

#endif
