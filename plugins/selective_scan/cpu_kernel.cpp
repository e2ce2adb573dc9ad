// SelectiveScan CPU kernel (see cpu_kernel.h and README.md).
//
// Work layout: the kernel vectorises across channels, not states. A block of W channels of one
// group (W = the SIMD width: 16 AVX-512, 8 AVX2, 4 SSE2/NEON, 1 without vector extensions) runs in
// the W lanes, so B[n, t] and C[n, t] (shared by the group) are scalars broadcast to all lanes, y[t]
// accumulates lane-wise (no horizontal sum) and the N states are N independent dependency chains per
// time step. Per batch b:
//   1. B[b], C[b] (G, N, L) are converted to float and transposed to (G, L, N) once, so that the N
//      values of a time step are contiguous (one cache line for N = 16); shared by a group's blocks.
//   2. The (group, block of W channels) pairs are split into tasks (Parallel::for_each). Per block,
//      the time axis runs in chunks of kChunk steps:
//      a. u and delta of the W channels are transposed to (kChunk, W) float with in-register W x W
//         transposes (float I/O and whole tiles: straight from the tensors; otherwise through a
//         converted, zero-padded (W, kChunk) staging buffer: float16, a partial block or chunk);
//      b. prepass, lane-wise: dt = softplus(delta + bias), dt * u;
//      c. recurrence, t outer and n inner: h[n] = exp(dt * A[:, n]) * h[n] + (dt u) * B[n, t],
//         acc += C[n, t] * h[n]; y = acc + D u. For N == 16 the 16 state vectors live in registers,
//         other N keep them in a small L1 buffer. The next chunk's rows (or the next block's first
//         chunk) are prefetched a few lines per time step;
//      d. y (kChunk, W) is transposed back and stored (rounded once to T).
//
// SIMD and ISA dispatch (x86-64, GCC/Clang; the generic layer is common/cpu_simd.h): the code is
// templated over the width W (GCC vector extensions) and instantiated three times: W = 4 with the
// build's flags (portable SSE2 by default), W = 8 with target("avx2,fma") and W = 16 with
// target("avx512f,..."); the prepass and the recurrence of each variant are compiled as separate
// functions (Stages*). The widest variant the CPU supports is picked once at run time
// (simd::dispatch_isa). With DEFMAMBA_NATIVE (-march=native) or on other architectures only the
// build's own variant exists.
//
// Arithmetic: every variant evaluates, lane by lane, the float32 algorithms of defmamba_math.h with
// the same operations in the same order: softplus_table_f32 for dt (division-free), and for the
// decay factors exp(dt * A) = exp2_table_f32(dt * a) with a = A * log2(e) computed once per block
// (a 16-entry table and a degree-3 polynomial: ~10 vector operations per state update instead of
// ~16 for the Cephes exp_f32 that the CUDA kernel uses; both <= 2 ulp). y adds D u last to
// sum_n C h: for N == 16 as four partial sums (n mod 4) added pairwise, for other N in order
// n = 0..N-1. With GCC on x86 the clamps use (v)maxps / (v)minps, which return exactly what the
// ternaries return (NaN included), and the AVX-512 variant applies the power of two with one
// vscalefps, which rounds once like the reference's (e * 2^m1) * 2^m2. That variant also drops
// exp2's clamps for a chunk when max |dt| * max |a| < 2^17 (checked per chunk and block; false for
// inf): then x + magic still rounds x to a multiple of 1/16 and vscalefps under- or overflows
// exactly as after the clamps, so the result is the same. The variants may differ in the last bit
// where the compiler contracts a * b + c into an FMA differently (SSE2 has none).
#include "cpu_kernel.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_simd.h"

namespace defmamba {
namespace {

namespace dm = math;
using namespace simd;  // lane vectors, ISA primitives, transposes, dispatch (common/cpu_simd.h)

constexpr int64_t kTransposeBlock = 512;  // time steps per B/C transpose task
constexpr double kTaskGrain = 1 << 18;    // ~ state updates per task
constexpr int64_t kChunk = 64;            // time steps per chunk (a multiple of every W); 24 KB buffers at W=16
constexpr int kNS = 16;                   // the state size with the states held in registers
constexpr int kMaxPrefetch = 3 * 16 * 4;  // cache lines prefetched per chunk: 3 tensors x 16 rows x 4

// ---- per-element math ---------------------------------------------------------------------------
// Per lane these are dm::exp2_table_f32 and dm::softplus_table_f32: the same operations in the same
// order. vsoftplus_table works on K vectors statement by statement (the K loops are unrolled),
// which interleaves K independent dependency chains for the out-of-order core.

// 2^x per lane: dm::exp2_table_f32 (same operations in the same order). tab: the 2^(j/16) table in
// 16 / W vectors (Exp2Table<W>). kClamp = false skips the clamps to [-160, 160]; only for the 16-lane
// scale_pow2 form and |x| < 2^17 (then x + magic still rounds x to a multiple of 1/16 and vscalefps
// applies any power of two with one rounding: the same result as with the clamps).
template <int W>
struct Exp2Table {
  typename Simd<W>::F v[W >= 16 ? 1 : 16 / W];
  Exp2Table() { std::memcpy(v, dm::kExp2Table16, sizeof(v)); }
};

// Per lane dm::exp2_table_scale: e * 2^floor(n), n = t - magic, in two factors (one rounding).
template <int W>
DM_ALWAYS_INLINE typename Simd<W>::F vexp2_scale(typename Simd<W>::F e, typename Simd<W>::F t) {
  typedef typename Simd<W>::F V;
  typedef typename Simd<W>::I VI;
  const VI m = (bit_cast<VI>(t) - bit_cast<VI>(vsplat<V>(dm::kExp2Magic))) >> 4;  // arithmetic shift
  const VI m1 = m >> 1;
  const VI m2 = m - m1;
  return (e * bit_cast<V>((m1 + 127) << 23)) * bit_cast<V>((m2 + 127) << 23);
}

template <int W, bool kScalef, bool kClamp>
DM_ALWAYS_INLINE typename Simd<W>::F vexp2(typename Simd<W>::F x, const Exp2Table<W>& tab) {
  typedef typename Simd<W>::F V;
  static_assert(kClamp || kScalef, "unclamped exp2 needs scale_pow2");
  const V magic = vsplat<V>(dm::kExp2Magic);
#if defined(DM_SIMD_X86_PRIMITIVES)
  // x = dt * a is rounded once, as in exp2_table_f32: keeps the compiler from contracting the product
  // into x + magic and x - n (two FMAs instead of a multiply and two additions: slower on CPUs whose
  // additions and FMAs issue to different pipes, e.g. Zen 4)
  asm("" : "+v"(x));
#endif
  if constexpr (kClamp) {
    x = clamp_below(x, vsplat<V>(-160.0f));  // keeps NaN
    x = clamp_above(x, vsplat<V>(160.0f));
  }
  const V t = x + magic;
  const V n = t - magic;
  const V r = x - n;
  const V T = lookup16(tab.v, t);
  const V q = ((vsplat<V>(dm::kExp2C3) * r + dm::kExp2C2) * r + dm::kExp2C1) * r;
  const V e = T * q + T;
#if defined(DM_SIMD_X86_PRIMITIVES)
  if constexpr (kScalef) return scale_pow2(e, n);  // e * 2^floor(n)
#endif
  return vexp2_scale<W>(e, t);
}

// v[k] = softplus(v[k]) per lane: dm::softplus_table_f32 (same operations in the same order).
template <int K, int W, bool kScalef>
DM_ALWAYS_INLINE void vsoftplus_table(typename Simd<W>::F* v, const Exp2Table<W>& tab) {
  typedef typename Simd<W>::F V;
  const V magic = vsplat<V>(dm::kExp2Magic);
  V z[K], t[K], n[K], r[K], w[K], p[K];
  DM_EACH(K) z[k_] = v[k_] < 0.0f ? v[k_] : -v[k_];  // -|v|, NaN stays NaN
  DM_EACH(K) z[k_] = clamp_below(z[k_], vsplat<V>(-160.0f));
  DM_EACH(K) t[k_] = z[k_] * 1.44269504088896341f + magic;
  DM_EACH(K) n[k_] = t[k_] - magic;
  DM_EACH(K) r[k_] = z[k_] - n[k_] * dm::kLn2Hi;
  DM_EACH(K) r[k_] = r[k_] - n[k_] * dm::kLn2Lo;
  DM_EACH(K) {
    const V T = lookup16(tab.v, t[k_]);
    const V q = ((vsplat<V>(0.166666672f) * r[k_] + 0.5f) * r[k_] + 1.0f) * r[k_];
    w[k_] = T * q + T;
  }
#if defined(DM_SIMD_X86_PRIMITIVES)
  if constexpr (kScalef) {
    DM_EACH(K) w[k_] = scale_pow2(w[k_], n[k_]);
  } else
#endif
  {
    DM_EACH(K) w[k_] = vexp2_scale<W>(w[k_], t[k_]);
  }
  DM_EACH(K) p[k_] = vsplat<V>(dm::kLog1pP[0]);
  for (int i = 1; i < 10; ++i) DM_EACH(K) p[k_] = p[k_] * w[k_] + dm::kLog1pP[i];
  DM_EACH(K) v[k_] = w[k_] * p[k_] + (v[k_] > 0.0f ? v[k_] : vsplat<V>(0.0f));
}


// ---- stages -------------------------------------------------------------------------------------
// B or C of one group, (N, L) -> (L, N) float, time steps [t0, t1).
template <int W, typename T>
DM_ALWAYS_INLINE void bc_transpose(const T* DM_RESTRICT src, float* DM_RESTRICT dst, int64_t n_state,
                                   int64_t length, int64_t t0, int64_t t1) {
  int64_t t = t0;
  if constexpr (std::is_same<T, float>::value && W > 1) {
    if (n_state % W == 0)
      for (; t + W <= t1; t += W)
        for (int64_t n = 0; n < n_state; n += W)
          transpose_tile<W>(src + n * length + t, length, dst + t * n_state + n, n_state);
  }
  for (int64_t n = 0; n < n_state; ++n)
    for (int64_t tt = t; tt < t1; ++tt) dst[tt * n_state + n] = dm::to_f32(src[n * length + tt]);
}

// dt = delta + bias (softplus'd), dtu = dt * u over rows x W floats in lane layout (rows a multiple of
// 4 when W > 1); d holds delta on entry, dt on exit. Returns max |dt| over the rows and lanes (NaN
// lanes are skipped: a NaN dt gives NaN decay factors on the fast path as on the clamped one).
template <int W, bool kScalef>
DM_ALWAYS_INLINE float lane_prepass(int64_t rows, bool softplus, const float* DM_RESTRICT bias, float* DM_RESTRICT d,
                                    const float* DM_RESTRICT uf, float* DM_RESTRICT dtu) {
  typedef typename Simd<W>::F V;
  constexpr int K = W > 1 ? 4 : 1;  // rows per step, interleaved
  const V bv = vload<V>(bias);
  const Exp2Table<W> tab;
  V amax = vsplat<V>(0.0f);
  for (int64_t t = 0; t < rows; t += K) {
    V v[K];
    DM_EACH(K) v[k_] = vload<V>(d + (t + k_) * W) + bv;
    if (softplus) vsoftplus_table<K, W, kScalef>(v, tab);
    DM_EACH(K) {
      vstore(d + (t + k_) * W, v[k_]);
      vstore(dtu + (t + k_) * W, v[k_] * vload<V>(uf + (t + k_) * W));
      const V av = v[k_] < 0.0f ? -v[k_] : v[k_];
      amax = av > amax ? av : amax;
    }
  }
  float lanes[W], m = 0.0f;
  std::memcpy(lanes, &amax, sizeof(lanes));
  for (int l = 0; l < W; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

// Buffers of one chunk, lane layout: dt, dtu, uf, yb (tn, W); a, hs (N, W); dsk (W). bt, ct: the
// chunk's (tn, N) B and C values, broadcast to the lanes. pf: cache lines to prefetch, spread over
// the time steps.
struct ChunkArgs {
  int64_t tn, n_state;
  const float* dt;
  const float* dtu;
  const float* uf;
  const float* a;
  const float* dsk;
  const float* bt;
  const float* ct;
  float* yb;
  float* hs;
  const char* const* pf;
  int64_t n_pf;
  bool clamp;    // false: every dt * a is known to lie in (-2^17, 2^17) (the unclamped exp2 applies)
  bool reverse;  // the rows are visited tn-1 .. 0 (a group that scans backwards in time)
};

DM_ALWAYS_INLINE void prefetch_step(const ChunkArgs& c, int64_t t, int64_t per_step) {
#if defined(__GNUC__)
  const int64_t end = (t + 1) * per_step < c.n_pf ? (t + 1) * per_step : c.n_pf;
  for (int64_t i = t * per_step; i < end; ++i) __builtin_prefetch(c.pf[i], 0, 3);
#else
  (void)c, (void)t, (void)per_step;
#endif
}

// The recurrence for N == 16, the states in registers. a holds A * log2(e): exp(dt A) = 2^(dt a).
template <int W, bool kScalef, bool kClamp>
DM_ALWAYS_INLINE void scan_chunk16(const ChunkArgs& c) {
  typedef typename Simd<W>::F V;
  const Exp2Table<W> tab;
  const float* DM_RESTRICT a = c.a;
  const int64_t per_step = (c.n_pf + c.tn - 1) / c.tn;
  V h[kNS];
  for (int n = 0; n < kNS; ++n) h[n] = vload<V>(c.hs + n * W);
  const int64_t step = c.reverse ? -1 : 1;
  for (int64_t i = 0, t = c.reverse ? c.tn - 1 : 0; i < c.tn; ++i, t += step) {
    prefetch_step(c, i, per_step);
    const V d = vload<V>(c.dt + t * W), du = vload<V>(c.dtu + t * W);
    const float* DM_RESTRICT b = c.bt + t * kNS;
    const float* DM_RESTRICT cc = c.ct + t * kNS;
    V acc[4];
    DM_UNROLL_16
    for (int n = 0; n < kNS; ++n) {
      const V da = vexp2<W, kScalef, kClamp>(d * vload<V>(a + n * W), tab);
      h[n] = da * h[n] + du * b[n];
      acc[n % 4] = n < 4 ? cc[n] * h[n] : acc[n % 4] + cc[n] * h[n];
    }
    const V sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    vstore(c.yb + t * W, sum + vload<V>(c.dsk) * vload<V>(c.uf + t * W));
  }
  for (int n = 0; n < kNS; ++n) vstore(c.hs + n * W, h[n]);
}

// Any N: the states live in hs.
template <int W, bool kScalef, bool kClamp>
DM_ALWAYS_INLINE void scan_chunk_any(const ChunkArgs& c) {
  typedef typename Simd<W>::F V;
  const Exp2Table<W> tab;
  const int64_t N = c.n_state;
  const int64_t per_step = (c.n_pf + c.tn - 1) / c.tn;
  float* DM_RESTRICT hs = c.hs;
  const int64_t step = c.reverse ? -1 : 1;
  for (int64_t i = 0, t = c.reverse ? c.tn - 1 : 0; i < c.tn; ++i, t += step) {
    prefetch_step(c, i, per_step);
    const V d = vload<V>(c.dt + t * W), du = vload<V>(c.dtu + t * W);
    const float* DM_RESTRICT b = c.bt + t * N;
    const float* DM_RESTRICT cc = c.ct + t * N;
    V acc = vsplat<V>(0.0f);
    for (int64_t n = 0; n < N; ++n) {
      const V da = vexp2<W, kScalef, kClamp>(d * vload<V>(c.a + n * W), tab);
      const V hn = da * vload<V>(hs + n * W) + du * b[n];
      vstore(hs + n * W, hn);
      acc = acc + cc[n] * hn;
    }
    vstore(c.yb + t * W, acc + vload<V>(c.dsk) * vload<V>(c.uf + t * W));
  }
}

// The stages of one variant, each compiled once, as its own function, for that ISA.
#define DM_SCAN_STAGES(NAME, ATTR, WIDTH, SCALEF)                                                         \
  struct NAME {                                                                                           \
    static constexpr int W = WIDTH;                                                                       \
    ATTR static void bc_f32(const float* src, float* dst, int64_t n, int64_t len, int64_t t0, int64_t t1) { \
      bc_transpose<WIDTH>(src, dst, n, len, t0, t1);                                                      \
    }                                                                                                     \
    ATTR static void bc_f16(const Half* src, float* dst, int64_t n, int64_t len, int64_t t0, int64_t t1) {  \
      bc_transpose<WIDTH>(src, dst, n, len, t0, t1);                                                      \
    }                                                                                                     \
    ATTR static void to_lanes(const float* src, int64_t ld, float* dst, int64_t tiles) {                  \
      rows_to_lanes<WIDTH>(src, ld, dst, tiles);                                                          \
    }                                                                                                     \
    ATTR static void to_rows(const float* src, float* dst, int64_t ld, int64_t tiles) {                   \
      lanes_to_rows<WIDTH>(src, dst, ld, tiles);                                                          \
    }                                                                                                     \
    ATTR static float prepass(int64_t rows, bool softplus, const float* bias, float* d, const float* uf,  \
                              float* dtu) {                                                               \
      return lane_prepass<WIDTH, SCALEF>(rows, softplus, bias, d, uf, dtu);                               \
    }                                                                                                     \
    ATTR static void scan(const ChunkArgs& c) {                                                           \
      constexpr bool kFast = SCALEF; /* the unclamped exp2 needs vscalefps */                             \
      if (c.n_state == kNS) {                                                                             \
        if (kFast && !c.clamp)                                                                            \
          scan_chunk16<WIDTH, SCALEF, !kFast>(c);                                                         \
        else                                                                                              \
          scan_chunk16<WIDTH, SCALEF, true>(c);                                                           \
      } else {                                                                                            \
        if (kFast && !c.clamp)                                                                            \
          scan_chunk_any<WIDTH, SCALEF, !kFast>(c);                                                       \
        else                                                                                              \
          scan_chunk_any<WIDTH, SCALEF, true>(c);                                                         \
      }                                                                                                   \
    }                                                                                                     \
  };

// ---- one block of channels ----------------------------------------------------------------------
template <typename T>
struct BlockArgs {
  int64_t length, n_state;
  int64_t lanes;  // channels in this block (<= W)
  bool softplus;
  bool reverse;    // the block's group scans backwards in time
  const T* u;      // row of the block's first channel; channel l at u + l * length
  const T* delta;  // likewise
  T* y;            // likewise
  const float* A;  // A[c0] (lanes rows of n_state)
  const float* D;  // D[c0]
  const float* bias;
  const float* bt;  // (L, N) of the block's group, float32
  const float* ct;
  // the block this task runs next (prefetched during the last chunk); next_lanes = 0: none
  const T* next_u;
  const T* next_delta;
  T* next_y;
  int64_t next_lanes;
  bool next_reverse;
};

// Floats of scratch one task needs (block_impl: 64-byte aligned buffers + the prefetch list).
inline size_t block_scratch_floats(int64_t W, int64_t N) {
  return static_cast<size_t>(6 * kChunk * W + 2 * N * W + 2 * W + 16) +
         kMaxPrefetch * sizeof(const char*) / sizeof(float) + 2;
}

// Appends the cache lines of rows [0, lanes) x [t0, t0 + n) of the three tensors to pf.
template <typename T>
DM_ALWAYS_INLINE int64_t add_prefetch(const char** pf, int64_t count, const T* u, const T* delta, const T* y,
                                      int64_t ld, int64_t lanes, int64_t t0, int64_t n) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  for (const T* base : {u, delta, static_cast<const T*>(y)})
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t t = 0; t < n && count < kMaxPrefetch; t += kLine)
        pf[count++] = reinterpret_cast<const char*>(base + l * ld + t0 + t);
  return count;
}

// Stages: one of the Stages* structs (width W, per-ISA stage functions).
template <typename Stages, typename T>
DM_ALWAYS_INLINE void block_impl(const BlockArgs<T>& p, float* scratch_raw) {
  constexpr int W = Stages::W;
  const int64_t L = p.length, N = p.n_state, lanes = p.lanes;
  // 64-byte aligned: staging (W, kChunk) x 2, lane layout (kChunk, W) x 4, a, hs (N, W), dsk, bias
  // (W), then the prefetch list
  float* s = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch_raw) + 63) & ~uintptr_t(63));
  float* su = s;  // u staging, later y staging
  float* sd = su + W * kChunk;
  float* uf = sd + W * kChunk;
  float* dt = uf + kChunk * W;
  float* dtu = dt + kChunk * W;
  float* yb = dtu + kChunk * W;
  float* a = yb + kChunk * W;
  float* hs = a + N * W;
  float* dsk = hs + N * W;
  float* bias = dsk + W;
  const char** pf = reinterpret_cast<const char**>(
      (reinterpret_cast<uintptr_t>(bias + W) + alignof(const char*) - 1) & ~uintptr_t(alignof(const char*) - 1));

  for (int64_t l = 0; l < W; ++l) {
    dsk[l] = l < lanes ? p.D[l] : 0.0f;
    bias[l] = l < lanes ? p.bias[l] : 0.0f;
  }
  // a = A * log2(e) (the recurrence evaluates exp(dt A) as 2^(dt a)); amax = max |a| (NaN skipped)
  float amax = 0.0f;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t l = 0; l < W; ++l) {
      const float v = l < lanes ? p.A[l * N + n] * 1.44269504088896341f : 0.0f;  // padding lanes: h stays 0
      a[n * W + l] = v;
      amax = (v < 0.0f ? -v : v) > amax ? (v < 0.0f ? -v : v) : amax;
      hs[n * W + l] = 0.0f;
    }

  // chunk k covers [k kChunk, (k + 1) kChunk) of the time axis, or for a reversed group the k-th
  // kChunk steps from the end, [L - (k + 1) kChunk, L - k kChunk), clipped to [0, L); the rows of a
  // chunk stay in time order in the buffers and a reversed group visits them last to first. So a
  // reversed group gives exactly flip(forward scan of the flipped inputs): the same chunks, the same
  // operations in the same order.
  const auto chunk_range = [L](int64_t k, bool reverse, int64_t* t0, int64_t* tn) {
    const int64_t a = k * kChunk, b = a + kChunk < L ? a + kChunk : L;
    *t0 = reverse ? L - b : a;
    *tn = b - a;
  };
  const int64_t n_chunks = (L + kChunk - 1) / kChunk;
  for (int64_t k = 0; k < n_chunks; ++k) {
    int64_t t0, tn;
    chunk_range(k, p.reverse, &t0, &tn);
    const int64_t tp = (tn + W - 1) / W * W;  // padded to whole tiles
    // the lines the recurrence prefetches: the next chunk, or the next block's first chunk
    int64_t n_pf = 0;
    if (k + 1 < n_chunks) {
      int64_t nt0, nn;
      chunk_range(k + 1, p.reverse, &nt0, &nn);
      n_pf = add_prefetch(pf, 0, p.u, p.delta, p.y, L, lanes, nt0, nn);
    } else if (p.next_lanes > 0) {
      int64_t nt0, nn;
      chunk_range(0, p.next_reverse, &nt0, &nn);
      n_pf = add_prefetch(pf, 0, p.next_u, p.next_delta, p.next_y, L, p.next_lanes, nt0, nn);
    }
    // float I/O and a whole (W, kChunk) tile: transpose straight from / to the tensors
    const bool direct = std::is_same<T, float>::value && lanes == W && tn == kChunk;
    // a. u, delta -> (tp, W) float
    if (direct) {
      const float* pu = reinterpret_cast<const float*>(p.u) + t0;
      const float* pd = reinterpret_cast<const float*>(p.delta) + t0;
      Stages::to_lanes(pu, L, uf, tp / W);
      Stages::to_lanes(pd, L, dt, tp / W);
    } else {
      for (int64_t l = 0; l < W; ++l) {
        float* DM_RESTRICT ru = su + l * kChunk;
        float* DM_RESTRICT rd = sd + l * kChunk;
        int64_t t = 0;
        if (l < lanes) {
          const T* DM_RESTRICT pu = p.u + l * L + t0;
          const T* DM_RESTRICT pd = p.delta + l * L + t0;
          for (; t < tn; ++t) {
            ru[t] = dm::to_f32(pu[t]);
            rd[t] = dm::to_f32(pd[t]);
          }
        }
        for (; t < tp; ++t) {
          ru[t] = 0.0f;
          rd[t] = 0.0f;
        }
      }
      Stages::to_lanes(su, kChunk, uf, tp / W);
      Stages::to_lanes(sd, kChunk, dt, tp / W);
    }
    // b. dt, dt * u (rows up to a multiple of 4 <= tp)
    const float dtmax = Stages::prepass(W > 1 ? (tn + 3) / 4 * 4 : tn, p.softplus, bias, dt, uf, dtu);
    // c. recurrence; |dt a| < 2^17 for the whole chunk (false for inf) -> no clamps needed
    const bool in_range = dtmax * amax < 131072.0f;
    const ChunkArgs c{tn, N, dt, dtu, uf, a, dsk, p.bt + t0 * N, p.ct + t0 * N, yb, hs, pf, n_pf, !in_range, p.reverse};
    Stages::scan(c);
    // d. y -> (W, tp), store the valid part
    if (direct) {
      float* py = reinterpret_cast<float*>(p.y) + t0;
      Stages::to_rows(yb, py, L, tp / W);
    } else {
      Stages::to_rows(yb, su, kChunk, tp / W);
      for (int64_t l = 0; l < lanes; ++l) {
        const float* DM_RESTRICT ry = su + l * kChunk;
        T* DM_RESTRICT py = p.y + l * L + t0;
        for (int64_t t = 0; t < tn; ++t) py[t] = dm::from_f32<T>(ry[t]);
      }
    }
  }
}

// ---- variants and dispatch ----------------------------------------------------------------------
template <typename T>
struct Variant {
  int lanes;
  void (*block)(const BlockArgs<T>&, float*);
  void (*bc)(const T*, float*, int64_t, int64_t, int64_t, int64_t);
};

DM_SCAN_STAGES(StagesBuild, DM_NOINLINE, kBuildWidth, kBuildScalef)

template <typename T>
void block_build_isa(const BlockArgs<T>& p, float* scratch) {
  block_impl<StagesBuild, T>(p, scratch);
}

template <typename Stages, typename T>
constexpr auto bc_fn() {
  if constexpr (std::is_same<T, float>::value) {
    return &Stages::bc_f32;
  } else {
    return &Stages::bc_f16;
  }
}

#if defined(DM_SIMD_X86_DISPATCH)
DM_SCAN_STAGES(StagesAvx2, DM_TARGET_AVX2 DM_NOINLINE, 8, false)
DM_SCAN_STAGES(StagesAvx512, DM_TARGET_AVX512 DM_NOINLINE, 16, true)

template <typename T>
DM_TARGET_AVX2 void block_avx2(const BlockArgs<T>& p, float* scratch) {
  block_impl<StagesAvx2, T>(p, scratch);
}

template <typename T>
DM_TARGET_AVX512 void block_avx512(const BlockArgs<T>& p, float* scratch) {
  block_impl<StagesAvx512, T>(p, scratch);
}
#endif

// The variant dispatch_isa() picks for this CPU (resolved once per T).
template <typename T>
Variant<T> select_variant() {
  switch (dispatch_isa()) {
#if defined(DM_SIMD_X86_DISPATCH)
    case Isa::kAvx512: return {16, &block_avx512<T>, bc_fn<StagesAvx512, T>()};
    case Isa::kAvx2: return {8, &block_avx2<T>, bc_fn<StagesAvx2, T>()};
#endif
    default: break;
  }
  return {kBuildWidth, &block_build_isa<T>, bc_fn<StagesBuild, T>()};
}

template <typename T>
const Variant<T>& variant() {
  static const Variant<T> v = select_variant<T>();
  return v;
}

}  // namespace

const char* selective_scan_cpu_isa() {
  const Variant<float>& v = variant<float>();
#if defined(DM_SIMD_X86_DISPATCH)
  if (v.block == &block_avx512<float>) return "avx512";
  if (v.block == &block_avx2<float>) return "avx2";
#endif
  (void)v;
  return kBuildWidth == 16 ? "build(avx512)" : kBuildWidth == 8 ? "build(avx2)" : kBuildWidth == 4 ? "build(sse2)"
                                                                                                    : "scalar";
}

template <typename T>
void selective_scan_cpu(const SelectiveScanShape& s, const T* u, const T* delta, const float* A, const T* B,
                        const T* C, const float* D, const float* delta_bias, bool delta_softplus, T* y,
                        const Parallel& par, const Scratch& scratch) {
  const int64_t Bt = s.batch, Ch = s.channels, G = s.groups, N = s.state, L = s.length;
  if (Bt <= 0 || Ch <= 0 || L <= 0 || N <= 0 || G <= 0) return;
  const int64_t ch_per_group = Ch / G;
  const Variant<T>& var = variant<T>();
  const int64_t W = var.lanes;
  const int64_t blocks_per_group = (ch_per_group + W - 1) / W;
  const size_t n_blocks = static_cast<size_t>(G * blocks_per_group);

  // B and C of one batch, converted and transposed: (G, L, N) each; reused for every batch.
  const size_t bc_elems = static_cast<size_t>(G * L * N);
  ScratchArray<float> bc(scratch, 2 * bc_elems);
  float* BT = bc.data();
  float* CT = bc.data() + bc_elems;

  const size_t t_blocks = static_cast<size_t>((L + kTransposeBlock - 1) / kTransposeBlock);
  const size_t n_tasks = task_count(n_blocks, static_cast<double>(W * L * N), kTaskGrain);
  ScratchSlots task_scratch(scratch, block_scratch_floats(W, N) * sizeof(float));  // one per running task

  for (int64_t b = 0; b < Bt; ++b) {
    const T* Bb = B + b * G * N * L;
    const T* Cb = C + b * G * N * L;
    par.for_each(static_cast<size_t>(G) * t_blocks * 2, [&](size_t i) {
      const bool is_c = (i & 1) != 0;
      const size_t gi = (i >> 1) / t_blocks, blk = (i >> 1) % t_blocks;
      const int64_t t0 = static_cast<int64_t>(blk) * kTransposeBlock;
      const int64_t t1 = t0 + kTransposeBlock < L ? t0 + kTransposeBlock : L;
      const int64_t off = static_cast<int64_t>(gi) * N * L;
      var.bc(is_c ? Cb + off : Bb + off, (is_c ? CT : BT) + off, N, L, t0, t1);
    });

    par.for_each(n_tasks, [&](size_t task) {
      size_t blk_begin, blk_end;
      split_range(n_blocks, n_tasks, task, &blk_begin, &blk_end);
      const ScratchSlots::Lease buf = task_scratch.lease();
      const auto reversed = [&](size_t blk) {
        const int64_t g = static_cast<int64_t>(blk) / blocks_per_group;
        return g < 64 && ((s.reverse_mask >> g) & 1u) != 0;
      };
      const auto first_channel = [&](size_t blk, int64_t* lanes) {
        const int64_t j = static_cast<int64_t>(blk) % blocks_per_group;
        *lanes = ch_per_group - j * W < W ? ch_per_group - j * W : W;
        return static_cast<int64_t>(blk) / blocks_per_group * ch_per_group + j * W;
      };
      for (size_t blk = blk_begin; blk < blk_end; ++blk) {
        int64_t lanes, next_lanes = 0;
        const int64_t c0 = first_channel(blk, &lanes);
        const int64_t g = static_cast<int64_t>(blk) / blocks_per_group;
        const int64_t row = (b * Ch + c0) * L;
        int64_t next_row = row;
        if (blk + 1 < blk_end) next_row = (b * Ch + first_channel(blk + 1, &next_lanes)) * L;
        const BlockArgs<T> args{L,
                                N,
                                lanes,
                                delta_softplus,
                                reversed(blk),
                                u + row,
                                delta + row,
                                y + row,
                                A + c0 * N,
                                D + c0,
                                delta_bias + c0,
                                BT + g * L * N,
                                CT + g * L * N,
                                u + next_row,
                                delta + next_row,
                                y + next_row,
                                next_lanes,
                                blk + 1 < blk_end && reversed(blk + 1)};
        var.block(args, static_cast<float*>(buf.get()));
      }
    });
  }
}

template void selective_scan_cpu<float>(const SelectiveScanShape&, const float*, const float*, const float*,
                                        const float*, const float*, const float*, const float*, bool, float*,
                                        const Parallel&, const Scratch&);
template void selective_scan_cpu<Half>(const SelectiveScanShape&, const Half*, const Half*, const float*,
                                       const Half*, const Half*, const float*, const float*, bool, Half*,
                                       const Parallel&, const Scratch&);

}  // namespace defmamba
