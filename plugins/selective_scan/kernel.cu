// SelectiveScan CUDA kernel (launcher declared in kernel.h; contract in README.md).
//
// Parallel structure: a channel row (b, c) is scanned by a team of kThreads threads (32..256, a whole
// number of warps); a block holds kChannels teams (128 or 256 threads). The row is processed in chunks
// of kThreads * kItems time steps; thread `tid` owns the contiguous run [t0 + tid*kItems, +kItems).
// Per chunk, the states are processed kStates at a time (one "pass"):
//   1. each thread computes, for its run and the pass's states, the per-step affine maps
//      h -> a*h + b with a = exp(dt*A[c,n]), b = dt*u*B[b,g,n,t] (float32, math:: functions), and
//      composes them into one map per state (the run's aggregate);
//   2. the aggregates are scanned across the warp (shuffles; operator = affine composition), then
//      across the team's warps (warp aggregates in shared memory, one __syncthreads per pass);
//   3. the state entering the chunk (the carry, shared memory) is pushed through the scanned maps:
//      each thread gets the exact state at the start of its run, re-runs its kItems steps and
//      accumulates y[t] += C[n,t] * h[n] in registers; the state at the chunk end becomes the next
//      chunk's carry.
// So every state update is computed once (one exp per (t, n), like the CPU kernel), the sequential
// dependency is only log2(kThreads) shuffle/shared-memory steps per chunk, and a row of any length
// (1 .. 2^31) runs in one block with fixed registers. The team size is picked from the shape only
// (long rows and few rows -> larger teams), so results do not depend on the GPU model.
// Reversed groups (reverse_mask): a row of such a group is scanned in reverse time order, i.e. scan
// step s reads and writes position L-1-s (load_seq/store_seq); everything else is unchanged. A launch
// with an empty mask runs the kernel instantiated without that code (the forward path as it was).
// No device allocation, no host synchronisation: one kernel launch on the given stream.
#include "selective_scan/kernel.h"

#include "cuda_utils.cuh"

namespace defmamba {
namespace {

namespace dm = math;

constexpr int kItems = 8;   // time steps per thread run (16-byte loads for __half, 2 x 16 bytes for float)
constexpr int kStates = 4;  // states per pass
constexpr int kMaxState = 1024;                // carry in dynamic shared memory: 2 * kChannels * N floats
constexpr int64_t kTargetThreads = 1 << 18;    // ~ threads that fill a large GPU; bounds the team size
constexpr unsigned kFullMask = 0xffffffffu;

// Applies the composed map h -> a*h + b to a state. A zero state gives b exactly: a composed decay
// product can overflow to inf (delta_softplus = 0 with exp(dt*A) > 1) while the state is still 0, and
// the sequential recurrence then has a finite state, not inf*0 = NaN.
__device__ __forceinline__ float apply_map(float a, float b, float h) { return h == 0.0f ? b : a * h + b; }

// A thread's run of scan steps [ts, ts + K) of a row (`count` of them exist, the rest get `fill`).
// Forward rows: elements row[ts + i], cuda::load_run. Reversed rows: step ts + i is element
// row[L-1-ts-i], so a whole run is the memory run [L-ts-K, L-ts) backwards: loaded with load_run (vector
// loads where aligned) and mirrored in registers; a partial run (the row's last) element by element.
template <int K, typename T>
__device__ __forceinline__ void load_seq(const T* row, int64_t L, int64_t ts, int count, bool reversed, float fill,
                                         float (&v)[K]) {
  if (!reversed) {
    cuda::load_run<K>(row + ts, count, fill, v);
  } else if (count == K) {
    float m[K];
    cuda::load_run<K>(row + (L - ts - K), K, fill, m);
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = m[K - 1 - i];
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = i < count ? cuda::load_f32(row[L - 1 - ts - i]) : fill;
  }
}

// The store of load_seq's run: row[ts + i] (forward) or row[L-1-ts-i] (reversed) = v[i] for i < count.
template <int K, typename T>
__device__ __forceinline__ void store_seq(T* row, int64_t L, int64_t ts, int count, bool reversed,
                                          const float (&v)[K]) {
  if (!reversed) {
    cuda::store_run<K>(row + ts, count, v);
  } else if (count == K) {
    float m[K];
#pragma unroll
    for (int i = 0; i < K; ++i) m[i] = v[K - 1 - i];
    cuda::store_run<K>(row + (L - ts - K), K, m);
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i)
      if (i < count) row[L - 1 - ts - i] = cuda::store_as<T>(v[i]);
  }
}

struct ScanParams {
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* D;           // may be nullptr (= 0)
  const float* delta_bias;  // may be nullptr (= 0)
  void* y;
  int64_t rows;  // batch * channels
  int64_t channels;
  int64_t groups;
  int64_t ch_per_group;
  int64_t length;
  int state;
  bool softplus;
  uint64_t reverse_mask;  // bit g: the rows of group g (< 64) scan backwards in time
};

// 128-thread blocks: at most 168 registers, so that 3 blocks (12 warps) fit an SM's 64K registers.
// kMayReverse = false (reverse_mask == 0): every row forward, the reversed-row code is compiled out.
template <typename T, int kThreads, int kChannels, bool kMayReverse>
__global__ void __launch_bounds__(kThreads* kChannels, (kThreads * kChannels == 128 ? 3 : 1))
    selective_scan_kernel(const ScanParams p) {
  constexpr int K = kItems;
  constexpr int S = kStates;
  constexpr int kWarps = kThreads / 32;  // warps per team
  constexpr int64_t kChunk = static_cast<int64_t>(kThreads) * K;
  static_assert(kThreads % 32 == 0, "a team is a whole number of warps");

  // warp aggregates (a[S], b[S]) of the current pass, double-buffered across passes
  __shared__ float agg_smem[2][kChannels][kWarps][2 * S];
  // carry: state entering the chunk, [2][kChannels][N], double-buffered across chunks
  extern __shared__ float carry_smem[];

  const int team = static_cast<int>(threadIdx.x) / kThreads;
  const int tid = static_cast<int>(threadIdx.x) % kThreads;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int64_t row_raw = static_cast<int64_t>(blockIdx.x) * kChannels + team;
  const bool active = row_raw < p.rows;  // inactive teams run along (barriers, shuffles) but never store
  const int64_t row = active ? row_raw : p.rows - 1;
  const int64_t b = row / p.channels;
  const int64_t c = row % p.channels;
  const int64_t g = c / p.ch_per_group;
  const int N = p.state;
  const int64_t L = p.length;
  // The row's direction: uniform over the team (a team is one row, and no warp spans two teams).
  const bool rev = kMayReverse && g < 64 && ((p.reverse_mask >> g) & 1u) != 0;

  const T* u = static_cast<const T*>(p.u) + row * L;
  const T* delta = static_cast<const T*>(p.delta) + row * L;
  T* y = static_cast<T*>(p.y) + row * L;
  const T* Bg = static_cast<const T*>(p.B) + (b * p.groups + g) * N * L;
  const T* Cg = static_cast<const T*>(p.C) + (b * p.groups + g) * N * L;
  const float* Arow = p.A + c * N;
  const float bias = p.delta_bias != nullptr ? p.delta_bias[c] : 0.0f;
  const float d_skip = p.D != nullptr ? p.D[c] : 0.0f;

  // carry buffer k of this team: carry_smem + (k * kChannels + team) * N
  for (int n = tid; n < N; n += kThreads) carry_smem[team * N + n] = 0.0f;  // h starts at 0 (read after a barrier)

  int cur = 0;       // carry buffer read by this chunk
  int agg_buf = 0;   // aggregate buffer of this pass
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int64_t ts = t0 + static_cast<int64_t>(tid) * K;
    const int64_t left = L - ts;
    const int count = left >= K ? K : (left > 0 ? static_cast<int>(left) : 0);  // valid steps in the run

    float dt[K], du[K], uf[K], yv[K];
    load_seq<K>(delta, L, ts, count, rev, 0.0f, dt);
    load_seq<K>(u, L, ts, count, rev, 0.0f, uf);
#pragma unroll
    for (int i = 0; i < K; ++i) {
      float d = dt[i] + bias;
      if (p.softplus) d = dm::softplus_f32(d);
      d = i < count ? d : 0.0f;
      dt[i] = d;
      du[i] = d * uf[i];
      yv[i] = 0.0f;
    }

    const float* carry_in = carry_smem + (cur * kChannels + team) * N;
    float* carry_out = carry_smem + ((cur ^ 1) * kChannels + team) * N;
    for (int n0 = 0; n0 < N; n0 += S) {
      // ---- 1. per-step maps and the run's aggregate -------------------------------------------------
      float a[K][S], bb[K][S];
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int n = n0 + s;
        const bool has = n < N;
        const float An = has ? Arow[n] : 0.0f;
        float Bv[K];
        load_seq<K>(Bg + static_cast<int64_t>(has ? n : 0) * L, L, ts, has ? count : 0, rev, 0.0f, Bv);
#pragma unroll
        for (int i = 0; i < K; ++i) {
          const bool live = has && i < count;
          a[i][s] = live ? dm::exp_f32(dt[i] * An) : 1.0f;  // padding steps are the identity map
          bb[i][s] = live ? du[i] * Bv[i] : 0.0f;
        }
      }
      float ra[S], rb[S];  // aggregate: h -> ra*h + rb over the run
#pragma unroll
      for (int s = 0; s < S; ++s) {
        ra[s] = a[0][s];
        rb[s] = bb[0][s];
#pragma unroll
        for (int i = 1; i < K; ++i) {
          rb[s] = a[i][s] * rb[s] + bb[i][s];
          ra[s] = ra[s] * a[i][s];
        }
      }

      // ---- 2. inclusive scan over the warp's runs ----------------------------------------------------
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const float pa = __shfl_up_sync(kFullMask, ra[s], off);
          const float pb = __shfl_up_sync(kFullMask, rb[s], off);
          if (lane >= off) {  // (earlier p) then (this r): h -> r.a*(p.a*h + p.b) + r.b
            rb[s] = ra[s] * pb + rb[s];
            ra[s] = ra[s] * pa;
          }
        }
      }

      // ---- 3. state at the start of this warp's part of the chunk ----------------------------------
      float h[S];
      if constexpr (kWarps == 1) {
        __syncwarp();  // the carry written by the previous chunk (or the zero fill) is visible
#pragma unroll
        for (int s = 0; s < S; ++s) h[s] = n0 + s < N ? carry_in[n0 + s] : 0.0f;
      } else {
        if (lane == 31) {
#pragma unroll
          for (int s = 0; s < S; ++s) {
            agg_smem[agg_buf][team][warp][s] = ra[s];
            agg_smem[agg_buf][team][warp][S + s] = rb[s];
          }
        }
        __syncthreads();
#pragma unroll
        for (int s = 0; s < S; ++s) h[s] = n0 + s < N ? carry_in[n0 + s] : 0.0f;
        for (int w = 0; w < warp; ++w) {
#pragma unroll
          for (int s = 0; s < S; ++s) h[s] = apply_map(agg_smem[agg_buf][team][w][s], agg_smem[agg_buf][team][w][S + s], h[s]);
        }
        agg_buf ^= 1;
      }

      // state at the end of this thread's run, then at its start (the previous lane's end)
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const float h_end = apply_map(ra[s], rb[s], h[s]);
        const float h_prev = __shfl_up_sync(kFullMask, h_end, 1);
        if (tid == kThreads - 1 && n0 + s < N) carry_out[n0 + s] = h_end;  // state at the chunk end
        h[s] = lane == 0 ? h[s] : h_prev;
      }

      // ---- 4. re-run the steps from the exact start state; y += C * h ------------------------------
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int n = n0 + s;
        const bool has = n < N;
        float Cv[K];
        load_seq<K>(Cg + static_cast<int64_t>(has ? n : 0) * L, L, ts, has ? count : 0, rev, 0.0f, Cv);
        float hs = h[s];
#pragma unroll
        for (int i = 0; i < K; ++i) {
          hs = a[i][s] * hs + bb[i][s];
          yv[i] += Cv[i] * hs;
        }
      }
    }

    if (active && count > 0) {
#pragma unroll
      for (int i = 0; i < K; ++i) yv[i] = yv[i] + d_skip * uf[i];
      store_seq<K>(y, L, ts, count, rev, yv);
    }
    cur ^= 1;
  }
}

template <typename T, int kThreads, int kChannels>
cudaError_t launch_config(const ScanParams& p, cudaStream_t stream) {
  const int64_t blocks = cuda::ceil_div(p.rows, kChannels);
  if (blocks > cuda::kMaxGridX) return cudaErrorInvalidConfiguration;
  const size_t smem = 2 * static_cast<size_t>(kChannels) * static_cast<size_t>(p.state) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (p.reverse_mask != 0)
    selective_scan_kernel<T, kThreads, kChannels, true><<<grid, kThreads * kChannels, smem, stream>>>(p);
  else
    selective_scan_kernel<T, kThreads, kChannels, false><<<grid, kThreads * kChannels, smem, stream>>>(p);
  return cuda::launch_status();
}

// Threads per channel row (the team size), from the shape only: the smallest team whose chunk covers
// the row, grown only while the grid stays below ~kTargetThreads threads (many rows -> small teams,
// which scan with shuffles only; few long rows -> larger teams). 256-thread teams (one block per SM at
// ~180 registers) only for at most kMaxRows256 rows; otherwise 128-thread blocks, 3 per SM, keep all
// rows of e.g. DefMamba-S stage 1 at batch 1 (288 rows) resident in one wave.
constexpr int64_t kMaxRows256 = 64;

int team_size(int64_t rows, int64_t length) {
  int threads = 32;
  while (threads < 256 && static_cast<int64_t>(threads) * kItems < length && rows * threads * 2 <= kTargetThreads &&
         (threads < 128 || rows <= kMaxRows256))
    threads *= 2;
  return threads;
}

}  // namespace

template <typename T>
cudaError_t launchSelectiveScan(const T* u, const T* delta, const float* A, const T* B, const T* C, const float* D,
                                const float* delta_bias, T* y, int64_t batch, int64_t channels, int64_t groups,
                                int64_t state, int64_t length, bool delta_softplus, cudaStream_t stream,
                                uint64_t reverse_mask) {
  if (batch < 0 || channels < 0 || groups < 0 || state < 0 || length < 0) return cudaErrorInvalidValue;
  if (batch == 0 || channels == 0 || length == 0) return cudaSuccess;
  if (groups == 0 || channels % groups != 0 || state == 0 || state > kMaxState) return cudaErrorInvalidValue;
  if (u == nullptr || delta == nullptr || A == nullptr || B == nullptr || C == nullptr || y == nullptr)
    return cudaErrorInvalidValue;
  ScanParams p;
  p.u = u;
  p.delta = delta;
  p.A = A;
  p.B = B;
  p.C = C;
  p.D = D;
  p.delta_bias = delta_bias;
  p.y = y;
  p.rows = batch * channels;
  p.channels = channels;
  p.groups = groups;
  p.ch_per_group = channels / groups;
  p.length = length;
  p.state = static_cast<int>(state);
  p.softplus = delta_softplus;
  // bits of groups that do not exist are ignored (groups >= 64 cannot be reversed)
  p.reverse_mask = groups < 64 ? reverse_mask & ((uint64_t{1} << groups) - 1) : reverse_mask;
  switch (team_size(p.rows, length)) {
    case 32: return launch_config<T, 32, 4>(p, stream);
    case 64: return launch_config<T, 64, 2>(p, stream);
    case 128: return launch_config<T, 128, 1>(p, stream);
    default: return launch_config<T, 256, 1>(p, stream);
  }
}

template cudaError_t launchSelectiveScan<float>(const float*, const float*, const float*, const float*, const float*,
                                                const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                                int64_t, bool, cudaStream_t, uint64_t);
template cudaError_t launchSelectiveScan<__half>(const __half*, const __half*, const float*, const __half*,
                                                 const __half*, const float*, const float*, __half*, int64_t, int64_t,
                                                 int64_t, int64_t, int64_t, bool, cudaStream_t, uint64_t);

}  // namespace defmamba
