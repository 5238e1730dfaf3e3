/* x86_64 primitives: fences and width-exact sweeps.  Wide widths use intrinsics in
 * functions compiled for their own ISA, so the library runs on any x86_64 and the
 * runner picks what the CPU has at run time (dmt_features). */
#ifndef DMT_ARCH_X86_64_H
#define DMT_ARCH_X86_64_H
#include <immintrin.h>
#include <string.h>

#define DMT_ARCH_NAME "x86_64"

static inline void dmt_fence_full(void) { __asm__ __volatile__("mfence" ::: "memory"); }
static inline void dmt_fence_store(void) { __asm__ __volatile__("sfence" ::: "memory"); }

static inline uint32_t dmt_arch_features(void)
{
	uint32_t f = DMT_F_SSE2;
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		f |= DMT_F_AVX2;
	if (__builtin_cpu_supports("avx512f"))
		f |= DMT_F_AVX512;
	return f;
}

static inline uint32_t dmt_width_feature(uint32_t width)
{
	return width == 64 ? DMT_F_AVX512 : width == 32 ? DMT_F_AVX2 : DMT_F_SSE2;
}

/* 8-byte accesses go through volatile so the compiler can neither widen nor merge them. */
typedef uint64_t dmt_v8;
#define LD8(p) (*(const volatile uint64_t *)(p))
#define ST8(p, v) (*(volatile uint64_t *)(p) = (v))
#define NT2_8(p, x, y) (_mm_stream_si64((long long *)(p), (long long)(x)), _mm_stream_si64((long long *)(p) + 1, (long long)(y)))
#define XOR8(a, b) ((a) ^ (b))
#define FOLD8(a) (a)
#define PAT8 0x5a5a5a5a5a5a5a5aull
#define ZERO8 0ull

#define LD16(p) _mm_load_si128((const __m128i *)(p))
#define ST16(p, v) _mm_store_si128((__m128i *)(p), (v))
#define NT2_16(p, x, y) (_mm_stream_si128((__m128i *)(p), (x)), _mm_stream_si128((__m128i *)(p) + 1, (y)))
#define XOR16(a, b) _mm_xor_si128((a), (b))
#define FOLD16(a) ((uint64_t)_mm_cvtsi128_si64(a))
#define PAT16 _mm_set1_epi64x(PAT8)
#define ZERO16 _mm_setzero_si128()

#define LD32(p) _mm256_load_si256((const __m256i *)(p))
#define ST32(p, v) _mm256_store_si256((__m256i *)(p), (v))
#define NT2_32(p, x, y) (_mm256_stream_si256((__m256i *)(p), (x)), _mm256_stream_si256((__m256i *)(p) + 1, (y)))
#define XOR32(a, b) _mm256_xor_si256((a), (b))
#define FOLD32(a) ((uint64_t)_mm256_extract_epi64((a), 0))
#define PAT32 _mm256_set1_epi64x(PAT8)
#define ZERO32 _mm256_setzero_si256()

#define LD64(p) _mm512_load_si512((const void *)(p))
#define ST64(p, v) _mm512_store_si512((void *)(p), (v))
#define NT2_64(p, x, y) (_mm512_stream_si512((void *)(p), (x)), _mm512_stream_si512((void *)((char *)(p) + 64), (y)))
#define XOR64(a, b) _mm512_xor_si512((a), (b))
#define FOLD64(a) ((uint64_t)_mm512_reduce_add_epi64(a))
#define PAT64 _mm512_set1_epi64(PAT8)
#define ZERO64 _mm512_setzero_si512()

#define DMT_TGT8 "sse2"
#define DMT_TGT16 "sse2"
#define DMT_TGT32 "avx2"
#define DMT_TGT64 "avx512f"
typedef __m128i dmt_v16;
typedef __m256i dmt_v32;
typedef __m512i dmt_v64;

/* memset-style zeroing: rep stosb is what glibc uses for large sizes on ERMS CPUs. */
static inline int dmt_zero(void *p, uint64_t n)
{
	__asm__ __volatile__("rep stosb" : "+D"(p), "+c"(n) : "a"(0) : "memory");
	return 0;
}

#endif
