/* arm64 primitives.  Inline asm fixes the instruction (LDR/STR, LDP/STP of Q registers,
 * LD1/ST1 of four registers, STNP for streaming stores) because on Device memory the
 * instruction is the access: the compiler must not split, merge or reorder it.
 * Access sizes per width: 8 -> one X register, 16 -> one Q, 32 -> a Q pair, 64 -> four Q;
 * the streaming pairs (STNP) keep them: 8 -> STNP X,X, 16 -> STNP Q,Q. */
#ifndef DMT_ARCH_ARM64_H
#define DMT_ARCH_ARM64_H
#include <arm_neon.h>
#include <sys/auxv.h>
#include <string.h>

#define DMT_ARCH_NAME "arm64"

static inline void dmt_fence_full(void) { __asm__ __volatile__("dsb sy" ::: "memory"); }
static inline void dmt_fence_store(void) { __asm__ __volatile__("dsb st" ::: "memory"); }

static inline uint64_t dmt_dczid(void)
{
	uint64_t v;
	__asm__ __volatile__("mrs %0, dczid_el0" : "=r"(v));
	return v;
}

static inline uint32_t dmt_arch_features(void)
{
	uint32_t f = DMT_F_NEON;
	unsigned long hw = getauxval(AT_HWCAP);
	if (hw & (1ul << 8)) /* HWCAP_ATOMICS */
		f |= DMT_F_LSE;
	if (!(dmt_dczid() & 0x10))
		f |= DMT_F_DCZVA;
	return f;
}

static inline uint32_t dmt_width_feature(uint32_t width)
{
	(void)width;
	return DMT_F_NEON;
}

typedef uint64_t dmt_v8;
#define LD8(p) (*(const volatile uint64_t *)(p))
#define ST8(p, v) (*(volatile uint64_t *)(p) = (v))
#define NT2_8(p, x, y) __asm__ __volatile__("stnp %x1, %x2, [%0]" ::"r"(p), "r"(x), "r"(y) : "memory")
#define XOR8(a, b) ((a) ^ (b))
#define FOLD8(a) (a)
#define PAT8 0x5a5a5a5a5a5a5a5aull
#define ZERO8 0ull

typedef uint64x2_t dmt_v16;
static inline dmt_v16 dmt_ld16(const void *p)
{
	dmt_v16 v;
	__asm__ __volatile__("ldr %q0, [%1]" : "=w"(v) : "r"(p) : "memory");
	return v;
}
#define LD16(p) dmt_ld16(p)
#define ST16(p, v) __asm__ __volatile__("str %q1, [%0]" ::"r"(p), "w"(v) : "memory")
#define NT2_16(p, x, y) __asm__ __volatile__("stnp %q1, %q2, [%0]" ::"r"(p), "w"(x), "w"(y) : "memory")
#define XOR16(a, b) veorq_u64((a), (b))
#define FOLD16(a) vgetq_lane_u64((a), 0)
#define PAT16 vdupq_n_u64(PAT8)
#define ZERO16 vdupq_n_u64(0)

typedef struct { uint64x2_t a, b; } dmt_v32;
static inline dmt_v32 dmt_ld32(const void *p)
{
	dmt_v32 v;
	__asm__ __volatile__("ldp %q0, %q1, [%2]" : "=w"(v.a), "=w"(v.b) : "r"(p) : "memory");
	return v;
}
static inline dmt_v32 dmt_xor32(dmt_v32 x, dmt_v32 y)
{
	return (dmt_v32){veorq_u64(x.a, y.a), veorq_u64(x.b, y.b)};
}
#define LD32(p) dmt_ld32(p)
#define ST32(p, v) __asm__ __volatile__("stp %q1, %q2, [%0]" ::"r"(p), "w"((v).a), "w"((v).b) : "memory")
#define NT2_32(p, x, y)                                                                        \
	__asm__ __volatile__("stnp %q1, %q2, [%0]\n\tstnp %q3, %q4, [%0, #32]" ::"r"(p), "w"((x).a), \
			     "w"((x).b), "w"((y).a), "w"((y).b) : "memory")
#define XOR32(a, b) dmt_xor32((a), (b))
#define FOLD32(x) vgetq_lane_u64(veorq_u64((x).a, (x).b), 0)
#define PAT32 ((dmt_v32){vdupq_n_u64(PAT8), vdupq_n_u64(PAT8)})
#define ZERO32 ((dmt_v32){vdupq_n_u64(0), vdupq_n_u64(0)})

/* Four named Q registers, not uint64x2x4_t: GCC keeps a tuple accumulator in memory
 * (read-bw's loop then spilled it to the stack every 64 bytes).  LD1/ST1 still take
 * the tuple, which needs four consecutive registers. */
typedef struct { uint64x2_t a, b, c, d; } dmt_v64;
static inline dmt_v64 dmt_ld64(const void *p)
{
	uint64x2x4_t t;
	__asm__ __volatile__("ld1 {%S0.2d, %T0.2d, %U0.2d, %V0.2d}, [%1]" : "=w"(t) : "r"(p) : "memory");
	return (dmt_v64){t.val[0], t.val[1], t.val[2], t.val[3]};
}
static inline void dmt_st64(void *p, dmt_v64 v)
{
	uint64x2x4_t t = {{v.a, v.b, v.c, v.d}};
	__asm__ __volatile__("st1 {%S1.2d, %T1.2d, %U1.2d, %V1.2d}, [%0]" ::"r"(p), "w"(t) : "memory");
}
static inline void dmt_nt64(void *p, dmt_v64 v)
{
	__asm__ __volatile__("stnp %q1, %q2, [%0]\n\tstnp %q3, %q4, [%0, #32]" ::"r"(p), "w"(v.a), "w"(v.b),
			     "w"(v.c), "w"(v.d) : "memory");
}
static inline dmt_v64 dmt_xor64(dmt_v64 x, dmt_v64 y)
{
	return (dmt_v64){veorq_u64(x.a, y.a), veorq_u64(x.b, y.b), veorq_u64(x.c, y.c), veorq_u64(x.d, y.d)};
}
static inline uint64_t dmt_fold64(dmt_v64 x)
{
	return vgetq_lane_u64(veorq_u64(veorq_u64(x.a, x.b), veorq_u64(x.c, x.d)), 0);
}
#define LD64(p) dmt_ld64(p)
#define ST64(p, v) dmt_st64((p), (v))
#define NT2_64(p, x, y) (dmt_nt64((p), (x)), dmt_nt64((char *)(p) + 64, (y)))
#define XOR64(a, b) dmt_xor64((a), (b))
#define FOLD64(a) dmt_fold64(a)
#define PAT64 ((dmt_v64){vdupq_n_u64(PAT8), vdupq_n_u64(PAT8), vdupq_n_u64(PAT8), vdupq_n_u64(PAT8)})
#define ZERO64 ((dmt_v64){vdupq_n_u64(0), vdupq_n_u64(0), vdupq_n_u64(0), vdupq_n_u64(0)})

#define DMT_TGT8 "arch=armv8-a"
#define DMT_TGT16 "arch=armv8-a"
#define DMT_TGT32 "arch=armv8-a"
#define DMT_TGT64 "arch=armv8-a"

/* Zeroing with DC ZVA where EL0 may use it: the instruction Linux's memset uses for
 * large blocks, and the one whose behaviour on Device memory the probes look at. */
static inline int dmt_zero(void *p, uint64_t n)
{
	uint64_t dczid = dmt_dczid();
	if (dczid & 0x10)
		return -95; /* -EOPNOTSUPP: DC ZVA prohibited at EL0 */
	uint64_t block = 4ull << (dczid & 0xf);
	if (n % block)
		return -22;
	for (char *c = p, *end = c + n; c < end; c += block)
		__asm__ __volatile__("dc zva, %0" ::"r"(c) : "memory");
	return 0;
}

#endif
