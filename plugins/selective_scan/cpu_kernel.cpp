// SelectiveScan CPU kernel (see cpu_kernel.h and README.md).
//
// Work layout, per batch b:
//   1. B[b] and C[b] (G, N, L) are converted to float and transposed to (G, L, N) once, so that the N
//      values B[:, t] of a time step are contiguous; they are shared by the Ch/G channels of a group.
//   2. Channels are split into tasks (Parallel::for_each). Per channel:
//      a. prepass over t (vectorised): dt = softplus(delta + bias), dt*u, u in float32;
//      b. time loop in chunks of kChunk steps: first exp(dt[t] * A[c, n]) for the whole chunk in one
//         flat vectorised loop (the dominant cost), then the recurrence with the state h[16] held in
//         SIMD registers (N == 16; other N use a scalar loop) and y[t] = sum_n C[t, n] h[n] + D u[t].
//
// SIMD and ISA dispatch (x86-64, GCC/Clang): the per-channel code is a template over the vector
// width W (GCC vector extensions) and is instantiated three times: W = 4 with the build's flags
// (portable SSE2 by default), W = 8 with target("avx2,fma") and W = 16 with target("avx512f,...").
// The widest variant the CPU supports is picked once at run time (__builtin_cpu_supports). With
// DEFMAMBA_NATIVE (-march=native) or on other architectures only the build's own variant exists.
// All variants evaluate the same float32 formulas; they may differ in the last bits (FMA
// contraction, summation order of the 16-term dot product).
#include "cpu_kernel.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DEFMAMBA_NO_ISA_DISPATCH)
#define DM_SCAN_X86_DISPATCH 1
#endif

#if defined(__GNUC__)
#define DM_ALWAYS_INLINE inline __attribute__((always_inline))
#define DM_RESTRICT __restrict__
#else
#define DM_ALWAYS_INLINE inline
#define DM_RESTRICT
#endif

namespace defmamba {
namespace {

namespace dm = math;

constexpr int64_t kTransposeBlock = 512;  // time steps per transpose task
constexpr double kTaskGrain = 1 << 18;    // ~ L*N state updates per channel task
constexpr int64_t kChunk = 64;            // time steps per exp chunk (2 * 64 * 16 floats in L1)
constexpr int kNS = 16;                   // the specialised state size

template <typename T>
void transpose_block(const T* src /* (N, L) */, float* dst /* (L, N) */, int64_t n_state, int64_t length,
                     int64_t t0, int64_t t1) {
  for (int64_t n = 0; n < n_state; ++n) {
    const T* s = src + n * length;
    float* d = dst + n;
    for (int64_t t = t0; t < t1; ++t) d[t * n_state] = dm::to_f32(s[t]);
  }
}

// Per-channel prepass: dt, dt*u and u in float32 (vectorised over t).
template <typename T>
DM_ALWAYS_INLINE void channel_prepass(int64_t length, const T* DM_RESTRICT u, const T* DM_RESTRICT delta,
                                      float bias, bool softplus, float* DM_RESTRICT dt, float* DM_RESTRICT dtu,
                                      float* DM_RESTRICT uf) {
  if (softplus) {
    for (int64_t t = 0; t < length; ++t) {
      const float uv = dm::to_f32(u[t]);
      const float d = dm::softplus_f32(dm::to_f32(delta[t]) + bias);
      dt[t] = d;
      dtu[t] = d * uv;
      uf[t] = uv;
    }
  } else {
    for (int64_t t = 0; t < length; ++t) {
      const float uv = dm::to_f32(u[t]);
      const float d = dm::to_f32(delta[t]) + bias;
      dt[t] = d;
      dtu[t] = d * uv;
      uf[t] = uv;
    }
  }
}

// exp(dt[t] * a[n]) for a chunk of time steps, (tn, 16) row-major: one flat vectorised loop.
DM_ALWAYS_INLINE void chunk_decay(int64_t tn, const float* DM_RESTRICT dt, const float* DM_RESTRICT a,
                                  float* DM_RESTRICT da) {
  for (int64_t t = 0; t < tn; ++t)
    for (int n = 0; n < kNS; ++n) da[t * kNS + n] = dm::exp_f32(dt[t] * a[n]);
}

// Scalar recurrence for any state size (also the fallback without vector extensions).
DM_ALWAYS_INLINE void scan_generic(int64_t length, int64_t n_state, const float* DM_RESTRICT dt,
                                   const float* DM_RESTRICT dtu, const float* DM_RESTRICT uf,
                                   const float* DM_RESTRICT a, float d_skip, const float* DM_RESTRICT bt,
                                   const float* DM_RESTRICT ct, float* DM_RESTRICT out, float* DM_RESTRICT h) {
  for (int64_t n = 0; n < n_state; ++n) h[n] = 0.0f;
  for (int64_t t = 0; t < length; ++t) {
    const float d = dt[t], du = dtu[t];
    const float* b = bt + t * n_state;
    const float* c = ct + t * n_state;
    float acc = 0.0f;
    for (int64_t n = 0; n < n_state; ++n) {
      h[n] = dm::exp_f32(d * a[n]) * h[n] + du * b[n];
      acc += c[n] * h[n];
    }
    out[t] = acc + d_skip * uf[t];
  }
}

#if defined(__GNUC__)
// GCC/Clang vector extensions; the widths are fixed typedefs (a vector_size depending on a template
// parameter is not reliably supported).
typedef float VecF4 __attribute__((vector_size(16)));
typedef float VecF8 __attribute__((vector_size(32)));
typedef float VecF16 __attribute__((vector_size(64)));

DM_ALWAYS_INLINE float hsum(VecF4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
#if defined(__clang__) || __GNUC__ >= 12
DM_ALWAYS_INLINE float hsum(VecF8 v) {
  return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
}
DM_ALWAYS_INLINE float hsum(VecF16 v) {
  return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
              __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}
#else
DM_ALWAYS_INLINE float hsum(VecF8 v) {
  return hsum(VecF4{v[0], v[1], v[2], v[3]} + VecF4{v[4], v[5], v[6], v[7]});
}
DM_ALWAYS_INLINE float hsum(VecF16 v) {
  return hsum(VecF8{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]} +
              VecF8{v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]});
}
#endif

// The 16-float state as 16/W vectors of W lanes (kept in registers).
template <int W>
struct Simd;
template <>
struct Simd<4> {
  typedef VecF4 V;
};
template <>
struct Simd<8> {
  typedef VecF8 V;
};
template <>
struct Simd<16> {
  typedef VecF16 V;
};

template <typename V>
DM_ALWAYS_INLINE V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <int W>
DM_ALWAYS_INLINE void scan16(int64_t length, const float* DM_RESTRICT dt, const float* DM_RESTRICT dtu,
                             const float* DM_RESTRICT uf, const float* DM_RESTRICT a_row, float d_skip,
                             const float* DM_RESTRICT bt, const float* DM_RESTRICT ct, float* DM_RESTRICT out,
                             float* DM_RESTRICT da /* kChunk * 16 */) {
  using V = typename Simd<W>::V;
  static_assert(sizeof(V) == 4 * W, "vector width");
  constexpr int kParts = kNS / W;
  float a[kNS];
  for (int n = 0; n < kNS; ++n) a[n] = a_row[n];
  V h[kParts];
  for (int k = 0; k < kParts; ++k) h[k] = V{};
  for (int64_t t0 = 0; t0 < length; t0 += kChunk) {
    const int64_t tn = length - t0 < kChunk ? length - t0 : kChunk;
    chunk_decay(tn, dt + t0, a, da);
    for (int64_t t = 0; t < tn; ++t) {
      const float du = dtu[t0 + t];
      const float* b = bt + (t0 + t) * kNS;
      const float* c = ct + (t0 + t) * kNS;
      V acc = V{};
      for (int k = 0; k < kParts; ++k) {
        h[k] = vload<V>(da + t * kNS + k * W) * h[k] + du * vload<V>(b + k * W);
        acc += vload<V>(c + k * W) * h[k];
      }
      out[t0 + t] = hsum(acc) + d_skip * uf[t0 + t];
    }
  }
}
#endif

struct ChannelArgs {
  int64_t length, n_state;
  float bias, d_skip;
  bool softplus;
  const float* a_row;
  const float* bt;
  const float* ct;
};

// Whole per-channel computation for SIMD width W (W = 0: scalar code only).
template <int W, typename T>
DM_ALWAYS_INLINE void channel_impl(const ChannelArgs& p, const T* u, const T* delta, T* y, float* scratch) {
  const int64_t L = p.length;
  float* dt = scratch;
  float* dtu = dt + L;
  float* uf = dtu + L;
  float* yf = uf + L;
  float* work = yf + L;  // max(kChunk * 16, N) floats
  channel_prepass(L, u, delta, p.bias, p.softplus, dt, dtu, uf);
  float* out = std::is_same<T, float>::value ? reinterpret_cast<float*>(y) : yf;
#if defined(__GNUC__)
  if (W > 0 && p.n_state == kNS) {
    scan16<(W > 0 ? W : 4)>(L, dt, dtu, uf, p.a_row, p.d_skip, p.bt, p.ct, out, work);
  } else
#endif
  {
    scan_generic(L, p.n_state, dt, dtu, uf, p.a_row, p.d_skip, p.bt, p.ct, out, work);
  }
  if (!std::is_same<T, float>::value) {
    for (int64_t t = 0; t < L; ++t) y[t] = dm::from_f32<T>(yf[t]);
  }
}

template <typename T>
using ChannelFn = void (*)(const ChannelArgs&, const T*, const T*, T*, float*);

#if defined(__GNUC__)
#if defined(__AVX512F__)
constexpr int kBuildWidth = 16;
#elif defined(__AVX2__)
constexpr int kBuildWidth = 8;
#else
constexpr int kBuildWidth = 4;
#endif
#else
constexpr int kBuildWidth = 0;
#endif

template <typename T>
void channel_build_isa(const ChannelArgs& p, const T* u, const T* delta, T* y, float* scratch) {
  channel_impl<kBuildWidth, T>(p, u, delta, y, scratch);
}

#if defined(DM_SCAN_X86_DISPATCH)
template <typename T>
__attribute__((target("avx2,fma,f16c"))) void channel_avx2(const ChannelArgs& p, const T* u, const T* delta, T* y,
                                                           float* scratch) {
  channel_impl<8, T>(p, u, delta, y, scratch);
}

template <typename T>
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,f16c"))) void channel_avx512(
    const ChannelArgs& p, const T* u, const T* delta, T* y, float* scratch) {
  channel_impl<16, T>(p, u, delta, y, scratch);
}
#endif

// The widest variant this CPU runs (resolved once). DEFMAMBA_CPU_ISA=build|avx2|avx512 in the
// environment caps the choice (for testing the variants on one machine).
template <typename T>
ChannelFn<T> select_channel_fn() {
#if defined(DM_SCAN_X86_DISPATCH)
  const char* env = std::getenv("DEFMAMBA_CPU_ISA");
  const std::string cap = env ? env : "";
  if (cap == "build") return &channel_build_isa<T>;
  if (kBuildWidth < 16 && cap != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return &channel_avx512<T>;
  if (kBuildWidth < 8 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return &channel_avx2<T>;
#endif
  return &channel_build_isa<T>;
}

template <typename T>
ChannelFn<T> channel_fn() {
  static const ChannelFn<T> fn = select_channel_fn<T>();
  return fn;
}

}  // namespace

const char* selective_scan_cpu_isa() {
  const ChannelFn<float> fn = channel_fn<float>();
#if defined(DM_SCAN_X86_DISPATCH)
  if (fn == &channel_avx512<float>) return "avx512";
  if (fn == &channel_avx2<float>) return "avx2";
#endif
  (void)fn;
  return kBuildWidth == 16 ? "build(avx512)" : kBuildWidth == 8 ? "build(avx2)" : kBuildWidth == 4 ? "build(sse2)"
                                                                                                    : "scalar";
}

template <typename T>
void selective_scan_cpu(const SelectiveScanShape& s, const T* u, const T* delta, const float* A, const T* B,
                        const T* C, const float* D, const float* delta_bias, bool delta_softplus, T* y,
                        const Parallel& par) {
  const int64_t Bt = s.batch, Ch = s.channels, G = s.groups, N = s.state, L = s.length;
  if (Bt <= 0 || Ch <= 0 || L <= 0 || N <= 0 || G <= 0) return;
  const int64_t ch_per_group = Ch / G;
  const ChannelFn<T> channel = channel_fn<T>();

  // B and C of one batch, converted and transposed: (G, L, N) each; reused for every batch.
  const size_t bc_elems = static_cast<size_t>(G * L * N);
  std::unique_ptr<float[]> bc(new float[2 * bc_elems]);
  float* BT = bc.get();
  float* CT = bc.get() + bc_elems;

  const size_t t_blocks = static_cast<size_t>((L + kTransposeBlock - 1) / kTransposeBlock);
  const size_t n_tasks = task_count(static_cast<size_t>(Ch), static_cast<double>(L * N), kTaskGrain);
  const size_t scratch_floats =
      4 * static_cast<size_t>(L) + static_cast<size_t>(N > kChunk * kNS ? N : kChunk * kNS) + 16;

  for (int64_t b = 0; b < Bt; ++b) {
    const T* Bb = B + b * G * N * L;
    const T* Cb = C + b * G * N * L;
    par.for_each(static_cast<size_t>(G) * t_blocks * 2, [&](size_t i) {
      const bool is_c = (i & 1) != 0;
      const size_t gi = (i >> 1) / t_blocks, blk = (i >> 1) % t_blocks;
      const int64_t t0 = static_cast<int64_t>(blk) * kTransposeBlock;
      const int64_t t1 = t0 + kTransposeBlock < L ? t0 + kTransposeBlock : L;
      const int64_t off = static_cast<int64_t>(gi) * N * L;
      transpose_block(is_c ? Cb + off : Bb + off, (is_c ? CT : BT) + off, N, L, t0, t1);
    });

    par.for_each(n_tasks, [&](size_t task) {
      size_t c_begin, c_end;
      split_range(static_cast<size_t>(Ch), n_tasks, task, &c_begin, &c_end);
      std::unique_ptr<float[]> scratch(new float[scratch_floats]);
      for (size_t ci = c_begin; ci < c_end; ++ci) {
        const int64_t c = static_cast<int64_t>(ci);
        const int64_t g = c / ch_per_group;
        const int64_t row = (b * Ch + c) * L;
        const ChannelArgs args{L,         N,          delta_bias[c], D[c], delta_softplus,
                               A + c * N, BT + g * L * N, CT + g * L * N};
        channel(args, u + row, delta + row, y + row, scratch.get());
      }
    });
  }
}

template void selective_scan_cpu<float>(const SelectiveScanShape&, const float*, const float*, const float*,
                                        const float*, const float*, const float*, const float*, bool, float*,
                                        const Parallel&);
template void selective_scan_cpu<Half>(const SelectiveScanShape&, const Half*, const Half*, const float*,
                                       const Half*, const Half*, const float*, const float*, bool, Half*,
                                       const Parallel&);

}  // namespace defmamba
