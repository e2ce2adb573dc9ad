// TokenSort CUDA kernels (launcher declared in kernel.h; contract in README.md).
//
// 1. key kernel (one thread per token): key = math::token_sort_key (float32), mapped to an
//    order-preserving uint32 by math::sortable_bits (-0.0 -> +0.0, NaN last: the CPU kernel's map);
//    value = the token index l (int32).
// 2. one stable CUB radix sort of (key, index) pairs on the stream:
//    batch == 1: cub::DeviceRadixSort::SortPairs on the 32-bit keys;
//    batch  > 1: the same call on 64-bit keys (b << 32 | bits) over 32 + ceil(log2(batch)) bits, which
//    sorts all rows in one device-wide sort (rows stay contiguous and in order; within a row the key
//    order and, the sort being stable, index order on ties). One call for any batch and any L, no
//    per-row launches and no host synchronisation (the DoubleBuffer selector is set on the host).
// 3. permutation kernel (one thread per sorted position j): perm[b, j] = l, inv_perm[b, l] = j.
// Workspace (tokenSortWorkspaceSize): keys and values, two buffers each, plus CUB's temporary storage,
// each 256-byte aligned. No allocation, no synchronisation (CUDA-graph safe).
#include "token_sort/kernel.h"

#include <cub/device/device_radix_sort.cuh>

#include "cuda_utils.cuh"

namespace defmamba {
namespace {

namespace dm = math;

constexpr int kThreads = 256;
constexpr size_t kAlign = 256;

// Layout of the workspace for (batch, length); identical in the size query and the launch.
struct SortPlan {
  bool wide = false;  // 64-bit composite keys (batch > 1)
  int end_bit = 32;
  int num_items = 0;
  size_t keys_bytes = 0, values_bytes = 0, cub_bytes = 0;
  size_t off_keys0 = 0, off_keys1 = 0, off_vals0 = 0, off_vals1 = 0, off_cub = 0, total = 0;
};

int bit_width(uint64_t v) {
  int w = 0;
  while (v) {
    ++w;
    v >>= 1;
  }
  return w;
}

// Fills `plan`; the CUB size query runs with d_temp_storage == nullptr (no allocation, launch or sync).
cudaError_t make_plan(int64_t batch, int64_t length, SortPlan* plan) {
  SortPlan p;
  const int64_t n = batch * length;
  if (n > 2147483647 || batch > (int64_t{1} << 31)) return cudaErrorInvalidValue;
  p.num_items = static_cast<int>(n);
  p.wide = batch > 1;
  p.end_bit = p.wide ? 32 + bit_width(static_cast<uint64_t>(batch - 1)) : 32;
  p.keys_bytes = static_cast<size_t>(n) * (p.wide ? sizeof(uint64_t) : sizeof(uint32_t));
  p.values_bytes = static_cast<size_t>(n) * sizeof(int32_t);
  cudaError_t err;
  if (p.wide) {
    cub::DoubleBuffer<uint64_t> keys(nullptr, nullptr);
    cub::DoubleBuffer<int32_t> vals(nullptr, nullptr);
    err = cub::DeviceRadixSort::SortPairs(nullptr, p.cub_bytes, keys, vals, p.num_items, 0, p.end_bit);
  } else {
    cub::DoubleBuffer<uint32_t> keys(nullptr, nullptr);
    cub::DoubleBuffer<int32_t> vals(nullptr, nullptr);
    err = cub::DeviceRadixSort::SortPairs(nullptr, p.cub_bytes, keys, vals, p.num_items, 0, p.end_bit);
  }
  if (err != cudaSuccess) return err;
  size_t off = 0;
  p.off_keys0 = off;
  off += cuda::align_up(p.keys_bytes, kAlign);
  p.off_keys1 = off;
  off += cuda::align_up(p.keys_bytes, kAlign);
  p.off_vals0 = off;
  off += cuda::align_up(p.values_bytes, kAlign);
  p.off_vals1 = off;
  off += cuda::align_up(p.values_bytes, kAlign);
  p.off_cub = off;
  off += cuda::align_up(p.cub_bytes, kAlign);
  p.total = off + kAlign;  // slack: the caller's pointer is aligned up to kAlign
  *plan = p;
  return cudaSuccess;
}

template <typename T>
__device__ __forceinline__ float token_key(const T* in, int64_t idx, int64_t l, int64_t length) {
  const float k = dm::token_sort_key(cuda::load_f32(in[idx]), l, length);
  return k == 0.0f ? 0.0f : k;  // -0.0 -> +0.0 (sortable_bits does the same; this is the float view)
}

template <typename T, typename Key>
__global__ void __launch_bounds__(kThreads)
    token_keys_kernel(const T* __restrict__ in, Key* __restrict__ keys, int32_t* __restrict__ vals, int64_t n,
                      int64_t length) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= n) return;
  const int64_t b = idx / length, l = idx - b * length;
  const uint32_t bits = dm::sortable_bits(token_key(in, idx, l, length));
  if constexpr (sizeof(Key) == 8) {
    keys[idx] = (static_cast<uint64_t>(b) << 32) | bits;  // row first, then the key
  } else {
    keys[idx] = bits;
  }
  vals[idx] = static_cast<int32_t>(l);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    token_float_keys_kernel(const T* __restrict__ in, float* __restrict__ keys, int64_t n, int64_t length) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= n) return;
  keys[idx] = length > 1 ? token_key(in, idx, idx % length, length) : 0.0f;
}

template <typename Index>
__global__ void __launch_bounds__(kThreads)
    token_perm_kernel(const int32_t* __restrict__ sorted, Index* __restrict__ perm, Index* __restrict__ inv_perm,
                      int64_t n, int64_t length) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= n) return;
  const int64_t row = idx - idx % length;
  const int32_t l = sorted[idx];
  perm[idx] = static_cast<Index>(l);
  inv_perm[row + l] = static_cast<Index>(idx - row);
}

template <typename Index>
__global__ void __launch_bounds__(kThreads) token_identity_kernel(Index* perm, Index* inv_perm, int64_t n) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= n) return;
  perm[idx] = 0;
  inv_perm[idx] = 0;
}

template <typename Key>
cudaError_t run_sort(const SortPlan& plan, char* base, cudaStream_t stream, int32_t** sorted_values) {
  cub::DoubleBuffer<Key> keys(reinterpret_cast<Key*>(base + plan.off_keys0), reinterpret_cast<Key*>(base + plan.off_keys1));
  cub::DoubleBuffer<int32_t> vals(reinterpret_cast<int32_t*>(base + plan.off_vals0),
                                  reinterpret_cast<int32_t*>(base + plan.off_vals1));
  size_t cub_bytes = plan.cub_bytes;
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(base + plan.off_cub, cub_bytes, keys, vals, plan.num_items,
                                                          0, plan.end_bit, stream);
  *sorted_values = vals.Current();
  return err;
}

}  // namespace

cudaError_t tokenSortWorkspaceSize(int64_t batch, int64_t length, size_t* bytes) {
  if (bytes == nullptr) return cudaErrorInvalidValue;
  *bytes = 0;
  if (batch < 0 || length < 0) return cudaErrorInvalidValue;
  if (batch == 0 || length <= 1) return cudaSuccess;  // nothing to sort
  SortPlan plan;
  const cudaError_t err = make_plan(batch, length, &plan);
  if (err == cudaSuccess) *bytes = plan.total;
  return err;
}

size_t tokenSortWorkspaceSize(int64_t batch, int64_t length) {
  size_t bytes = 0;
  return tokenSortWorkspaceSize(batch, length, &bytes) == cudaSuccess ? bytes : 0;
}

template <typename T, typename Index>
cudaError_t launchTokenSort(const T* token_offset, Index* perm, Index* inv_perm, int64_t batch, int64_t length,
                            void* workspace, size_t workspace_size, cudaStream_t stream) {
  if (batch < 0 || length < 0) return cudaErrorInvalidValue;
  if (batch == 0 || length == 0) return cudaSuccess;
  if (token_offset == nullptr || perm == nullptr || inv_perm == nullptr) return cudaErrorInvalidValue;
  const int64_t n = batch * length;
  if (n / batch != length || n > 2147483647) return cudaErrorInvalidValue;
  const int64_t blocks = cuda::ceil_div(n, kThreads);
  if (length == 1) {
    token_identity_kernel<Index><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(perm, inv_perm, n);
    return cuda::launch_status();
  }
  SortPlan plan;
  cudaError_t err = make_plan(batch, length, &plan);
  if (err != cudaSuccess) return err;
  if (workspace == nullptr || workspace_size < plan.total) return cudaErrorInvalidValue;
  char* base = reinterpret_cast<char*>(cuda::align_up(reinterpret_cast<uintptr_t>(workspace), kAlign));
  int32_t* sorted = nullptr;
  if (plan.wide) {
    token_keys_kernel<T, uint64_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        token_offset, reinterpret_cast<uint64_t*>(base + plan.off_keys0), reinterpret_cast<int32_t*>(base + plan.off_vals0),
        n, length);
    if ((err = cuda::launch_status()) != cudaSuccess) return err;
    err = run_sort<uint64_t>(plan, base, stream, &sorted);
  } else {
    token_keys_kernel<T, uint32_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        token_offset, reinterpret_cast<uint32_t*>(base + plan.off_keys0), reinterpret_cast<int32_t*>(base + plan.off_vals0),
        n, length);
    if ((err = cuda::launch_status()) != cudaSuccess) return err;
    err = run_sort<uint32_t>(plan, base, stream, &sorted);
  }
  if (err != cudaSuccess) return err;
  token_perm_kernel<Index><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(sorted, perm, inv_perm, n, length);
  return cuda::launch_status();
}

template <typename T>
cudaError_t launchTokenSortKeys(const T* token_offset, float* keys, int64_t batch, int64_t length,
                                cudaStream_t stream) {
  if (batch < 0 || length < 0) return cudaErrorInvalidValue;
  if (batch == 0 || length == 0) return cudaSuccess;
  if (token_offset == nullptr || keys == nullptr) return cudaErrorInvalidValue;
  const int64_t n = batch * length;
  const int64_t blocks = cuda::ceil_div(n, kThreads);
  if (blocks > cuda::kMaxGridX) return cudaErrorInvalidConfiguration;
  token_float_keys_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(token_offset, keys, n, length);
  return cuda::launch_status();
}

template cudaError_t launchTokenSort<float, int32_t>(const float*, int32_t*, int32_t*, int64_t, int64_t, void*, size_t,
                                                     cudaStream_t);
template cudaError_t launchTokenSort<float, int64_t>(const float*, int64_t*, int64_t*, int64_t, int64_t, void*, size_t,
                                                     cudaStream_t);
template cudaError_t launchTokenSort<__half, int32_t>(const __half*, int32_t*, int32_t*, int64_t, int64_t, void*,
                                                      size_t, cudaStream_t);
template cudaError_t launchTokenSort<__half, int64_t>(const __half*, int64_t*, int64_t*, int64_t, int64_t, void*,
                                                      size_t, cudaStream_t);
template cudaError_t launchTokenSortKeys<float>(const float*, float*, int64_t, int64_t, cudaStream_t);
template cudaError_t launchTokenSortKeys<__half>(const __half*, float*, int64_t, int64_t, cudaStream_t);

}  // namespace defmamba
