// Generic SIMD layer of the CPU kernels: fixed-width lane vectors (GCC/Clang vector extensions),
// the few x86 instructions that the generic vector code does not reliably map to, W x W float
// transposes and the run-time choice between the build's own variant and AVX2 / AVX-512 copies.
// Nothing here knows about an op; the kernels (e.g. selective_scan/cpu_kernel.cpp) build their
// vector code on it.
//
// How a kernel uses the ISA dispatch (x86-64, GCC/Clang, unless DEFMAMBA_NO_ISA_DISPATCH):
//   - write the hot loops as templates over the width W, with DM_ALWAYS_INLINE helpers;
//   - instantiate them in one function per variant: the build's flags (width kBuildWidth) and, under
//     DM_SIMD_X86_DISPATCH, DM_TARGET_AVX2 (W = 8) and DM_TARGET_AVX512 (W = 16): the always-inline
//     templates are then compiled for that function's ISA;
//   - pick the variant once with dispatch_isa().
// With -march=native (DEFMAMBA_NATIVE) or on other architectures only the build's variant exists.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "defmamba_math.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DEFMAMBA_NO_ISA_DISPATCH)
#define DM_SIMD_X86_DISPATCH 1
#endif

#if defined(__GNUC__)
#define DM_ALWAYS_INLINE inline __attribute__((always_inline))
#define DM_NOINLINE __attribute__((noinline))
#define DM_RESTRICT __restrict__
#define DM_UNROLL_16 _Pragma("GCC unroll 16")
#else
#define DM_ALWAYS_INLINE inline
#define DM_NOINLINE
#define DM_RESTRICT
#define DM_UNROLL_16
#endif

#if defined(DM_SIMD_X86_DISPATCH)
#define DM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DM_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#endif

// Runs a statement for k_ = 0 .. K-1: K independent dependency chains written statement by statement
// (the loops are unrolled), so that the out-of-order core interleaves them.
#define DM_EACH(K) for (int k_ = 0; k_ < (K); ++k_)

namespace defmamba {
namespace simd {

// ---- lane vectors -------------------------------------------------------------------------------
// Simd<W>::F / I / U: W floats / int32 / uint32. W = 1 is plain scalars (any compiler); W = 4, 8, 16
// are GCC/Clang vector extensions (fixed typedefs: a vector_size depending on a template parameter
// is not reliably supported).
template <int W>
struct Simd;
template <>
struct Simd<1> {
  typedef float F;
  typedef int32_t I;
  typedef uint32_t U;
};
#if defined(__GNUC__)
typedef float VecF4 __attribute__((vector_size(16)));
typedef float VecF8 __attribute__((vector_size(32)));
typedef float VecF16 __attribute__((vector_size(64)));
typedef int32_t VecI4 __attribute__((vector_size(16)));
typedef int32_t VecI8 __attribute__((vector_size(32)));
typedef int32_t VecI16 __attribute__((vector_size(64)));
typedef uint32_t VecU4 __attribute__((vector_size(16)));
typedef uint32_t VecU8 __attribute__((vector_size(32)));
typedef uint32_t VecU16 __attribute__((vector_size(64)));
template <>
struct Simd<4> {
  typedef VecF4 F;
  typedef VecI4 I;
  typedef VecU4 U;
};
template <>
struct Simd<8> {
  typedef VecF8 F;
  typedef VecI8 I;
  typedef VecU8 U;
};
template <>
struct Simd<16> {
  typedef VecF16 F;
  typedef VecI16 I;
  typedef VecU16 U;
};
#endif

template <typename To, typename From>
DM_ALWAYS_INLINE To bit_cast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast size");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

template <typename V>
DM_ALWAYS_INLINE V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
DM_ALWAYS_INLINE void vstore(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V>
DM_ALWAYS_INLINE V vsplat(float s) {
  if constexpr (std::is_same<V, float>::value) {
    return s;
  } else {
    return V{} + s;  // for constants only (0 + s drops the sign of -0)
  }
}


// ---- ISA primitives -----------------------------------------------------------------------------
// clamp_below(x, lo) = x < lo ? lo : x and clamp_above(x, hi) = x > hi ? hi : x (a NaN x passes
// through), scale_pow2(e, n) = e * 2^n for integral n with one rounding. The generic forms are
// vector-extension code (compare + blend); on x86 the clamps map exactly onto (v)maxps(lo, x) /
// (v)minps(hi, x), which return their second operand when either is NaN, and the 16-lane scale onto
// vscalefps. The x86 overloads carry their own target attribute: they are inlined once the
// ISA-generic templates have been inlined into the matching target("...") function.
template <typename V>
DM_ALWAYS_INLINE V clamp_below(V x, V lo) {
  return x < lo ? lo : x;
}
template <typename V>
DM_ALWAYS_INLINE V clamp_above(V x, V hi) {
  return x > hi ? hi : x;
}
// lookup16(tab, idx): per lane tab[bits of idx & 15], a 16-entry float table spread over 16 / W
// vectors. Generic form: one lane at a time.
template <typename V>
DM_ALWAYS_INLINE V lookup16(const V* tab, V idx) {
  if constexpr (std::is_same<V, float>::value) {
    return tab[math::f32_to_bits(idx) & 15u];
  } else {
    constexpr int W = sizeof(V) / sizeof(float);
    float t[16], ix[W], out[W];
    std::memcpy(t, tab, sizeof(t));
    std::memcpy(ix, &idx, sizeof(ix));
    for (int l = 0; l < W; ++l) out[l] = t[math::f32_to_bits(ix[l]) & 15u];
    return vload<V>(out);
  }
}
// (GCC only: Clang rejects calls with wide vector arguments into target("...") functions from the
// ISA-generic templates before inlining; LLVM selects maxps / minps for the generic ternaries itself.)
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
#define DM_SIMD_X86_PRIMITIVES 1
[[maybe_unused]] inline VecF4 clamp_below(VecF4 x, VecF4 lo) { return reinterpret_cast<VecF4>(_mm_max_ps(lo, x)); }
[[maybe_unused]] inline VecF4 clamp_above(VecF4 x, VecF4 hi) { return reinterpret_cast<VecF4>(_mm_min_ps(hi, x)); }
[[maybe_unused]] __attribute__((target("avx"))) inline VecF8 clamp_below(VecF8 x, VecF8 lo) {
  return reinterpret_cast<VecF8>(_mm256_max_ps(lo, x));
}
[[maybe_unused]] __attribute__((target("avx"))) inline VecF8 clamp_above(VecF8 x, VecF8 hi) {
  return reinterpret_cast<VecF8>(_mm256_min_ps(hi, x));
}
// (the masked forms with a full mask avoid GCC 12's -Wmaybe-uninitialized on _mm512_undefined_ps)
[[maybe_unused]] __attribute__((target("avx512f"))) inline VecF16 clamp_below(VecF16 x, VecF16 lo) {
  return reinterpret_cast<VecF16>(_mm512_mask_max_ps(lo, static_cast<__mmask16>(0xffff), lo, x));
}
[[maybe_unused]] __attribute__((target("avx512f"))) inline VecF16 clamp_above(VecF16 x, VecF16 hi) {
  return reinterpret_cast<VecF16>(_mm512_mask_min_ps(hi, static_cast<__mmask16>(0xffff), hi, x));
}
[[maybe_unused]] __attribute__((target("avx512f"))) inline VecF16 scale_pow2(VecF16 e, VecF16 n) {
  return reinterpret_cast<VecF16>(_mm512_mask_scalef_ps(e, static_cast<__mmask16>(0xffff), e, n));
}
[[maybe_unused]] __attribute__((target("avx512f"))) inline VecF16 lookup16(const VecF16* tab, VecF16 idx) {
  const __m512 t = reinterpret_cast<__m512>(tab[0]);
  return reinterpret_cast<VecF16>(
      _mm512_maskz_permutexvar_ps(static_cast<__mmask16>(0xffff), reinterpret_cast<__m512i>(idx), t));
}
[[maybe_unused]] __attribute__((target("avx2"))) inline VecF8 lookup16(const VecF8* tab, VecF8 idx) {
  const __m256i i = reinterpret_cast<__m256i>(idx);
  const __m256 lo = _mm256_permutevar8x32_ps(reinterpret_cast<__m256>(tab[0]), i);  // low 3 bits
  const __m256 hi = _mm256_permutevar8x32_ps(reinterpret_cast<__m256>(tab[1]), i);
  return reinterpret_cast<VecF8>(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28))));  // bit 3
}
#endif

// ---- W x W transposes ---------------------------------------------------------------------------
#if defined(__GNUC__)
// One butterfly stage: swaps bit S of the row index with bit S of the column index for the rows a
// (bit S clear) and b (bit S set).
template <int S, typename V, size_t... I>
DM_ALWAYS_INLINE void butterfly(V& a, V& b, std::index_sequence<I...>) {
  constexpr int W = static_cast<int>(sizeof...(I));
#if defined(__clang__) || __GNUC__ >= 12
  const V lo = __builtin_shufflevector(a, b, ((I & S) ? static_cast<int>(W + I - S) : static_cast<int>(I))...);
  const V hi = __builtin_shufflevector(a, b, ((I & S) ? static_cast<int>(W + I) : static_cast<int>(I + S))...);
#else
  typedef typename Simd<W>::I VI;
  const V lo = __builtin_shuffle(a, b, VI{((I & S) ? static_cast<int>(W + I - S) : static_cast<int>(I))...});
  const V hi = __builtin_shuffle(a, b, VI{((I & S) ? static_cast<int>(W + I) : static_cast<int>(I + S))...});
#endif
  a = lo;
  b = hi;
}

template <int S, int W, typename V>
DM_ALWAYS_INLINE void transpose_stages(V* r) {
  if constexpr (S < W) {
    for (int i = 0; i < W; ++i)
      if ((i & S) == 0) butterfly<S>(r[i], r[i + S], std::make_index_sequence<W>());
    transpose_stages<2 * S, W>(r);
  }
}
#endif

// dst[j * ld_dst + i] = src[i * ld_src + j] for i, j < W.
template <int W>
DM_ALWAYS_INLINE void transpose_tile(const float* DM_RESTRICT src, int64_t ld_src, float* DM_RESTRICT dst,
                                     int64_t ld_dst) {
#if defined(__GNUC__)
  if constexpr (W > 1) {
    typedef typename Simd<W>::F V;
    V r[W];
    for (int i = 0; i < W; ++i) r[i] = vload<V>(src + i * ld_src);
    transpose_stages<1, W>(r);
    for (int i = 0; i < W; ++i) vstore(dst + i * ld_dst, r[i]);
  } else
#endif
  {
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < W; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
  }
}


// tiles consecutive W x W tiles: rows (stride ld) of src -> lane layout dst (tile k at src + k W,
// dst + k W W), and back.
template <int W>
DM_ALWAYS_INLINE void rows_to_lanes(const float* src, int64_t ld, float* dst, int64_t tiles) {
  for (int64_t k = 0; k < tiles; ++k) transpose_tile<W>(src + k * W, ld, dst + k * W * W, W);
}
template <int W>
DM_ALWAYS_INLINE void lanes_to_rows(const float* src, float* dst, int64_t ld, int64_t tiles) {
  for (int64_t k = 0; k < tiles; ++k) transpose_tile<W>(src + k * W * W, W, dst + k * W, ld);
}

// ---- variants and dispatch ----------------------------------------------------------------------
// kBuildWidth: the lanes of the build's own variant (its -m flags); kBuildScalef: whether that
// variant has scale_pow2 (AVX-512).
#if defined(__GNUC__)
#if defined(__AVX512F__)
constexpr int kBuildWidth = 16;
#elif defined(__AVX2__)
constexpr int kBuildWidth = 8;
#else
constexpr int kBuildWidth = 4;
#endif
#else
constexpr int kBuildWidth = 1;
#endif
#if defined(DM_SIMD_X86_PRIMITIVES) && defined(__AVX512F__)
constexpr bool kBuildScalef = true;
#else
constexpr bool kBuildScalef = false;
#endif

// The variants a kernel may compile: the build's own, DM_TARGET_AVX2 (8 lanes), DM_TARGET_AVX512 (16).
enum class Isa { kBuild, kAvx2, kAvx512 };

// The widest variant this CPU runs, kBuild unless a dispatch variant is wider than the build's own.
// DEFMAMBA_CPU_ISA=build|avx2|avx512 in the environment caps the choice (for testing the variants on
// one machine). Cheap but not free (reads the environment): call it once and keep the result.
inline Isa dispatch_isa() {
#if defined(DM_SIMD_X86_DISPATCH)
  const char* env = std::getenv("DEFMAMBA_CPU_ISA");
  const std::string cap = env ? env : "";
  if (cap != "build") {
    if (kBuildWidth < 16 && cap != "avx2" && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw"))
      return Isa::kAvx512;
    if (kBuildWidth < 8 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  }
#endif
  return Isa::kBuild;
}

}  // namespace simd
}  // namespace defmamba
