// C test ABI of the CUDA kernels: libdefmamba_cuda_kernels.so (built when CUDA is enabled; not part of
// the Python package). tests/plugins/test_cuda_kernels.py loads it with ctypes and passes raw device pointers
// (torch.cuda tensors' data_ptr()), sizes, dtype codes and a stream (torch's cuda_stream handle, 0 =
// legacy default stream). Every function returns a cudaError_t value (0 = success) and never
// synchronises; dm_cuda_error_string turns a code into text.
//
// dtype codes: 0 = float32, 1 = float16.  index codes (TokenSort): 0 = int32, 1 = int64.
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "deform_gather/kernel.h"
#include "selective_scan/kernel.h"
#include "token_sort/kernel.h"

#define DM_ABI extern "C" __attribute__((visibility("default")))

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

DM_ABI int dm_cuda_abi_version() { return 2; }  // 2: dm_selective_scan takes reverse_mask

DM_ABI const char* dm_cuda_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

// u, delta, y (batch, channels, length); B, C (batch, groups, state, length) of dtype; A (channels, state),
// D, delta_bias (channels) float32, D / delta_bias may be null. reverse_mask: bit g = group g scans backwards.
DM_ABI int dm_selective_scan(const void* u, const void* delta, const void* A, const void* B, const void* C,
                             const void* D, const void* delta_bias, void* y, int64_t batch, int64_t channels,
                             int64_t groups, int64_t state, int64_t length, int delta_softplus, int dtype,
                             void* stream, uint64_t reverse_mask) {
  const float* Af = static_cast<const float*>(A);
  const float* Df = static_cast<const float*>(D);
  const float* bf = static_cast<const float*>(delta_bias);
  if (dtype == 0)
    return defmamba::launchSelectiveScan<float>(static_cast<const float*>(u), static_cast<const float*>(delta), Af,
                                                static_cast<const float*>(B), static_cast<const float*>(C), Df, bf,
                                                static_cast<float*>(y), batch, channels, groups, state, length,
                                                delta_softplus != 0, as_stream(stream), reverse_mask);
  if (dtype == 1)
    return defmamba::launchSelectiveScan<__half>(static_cast<const __half*>(u), static_cast<const __half*>(delta), Af,
                                                 static_cast<const __half*>(B), static_cast<const __half*>(C), Df, bf,
                                                 static_cast<__half*>(y), batch, channels, groups, state, length,
                                                 delta_softplus != 0, as_stream(stream), reverse_mask);
  return cudaErrorInvalidValue;
}

// x, feat (batch, channels, height, width); offset (batch, offset_channels, height, width);
// rpe_table (channels, table_h, table_w); all of dtype.
DM_ABI int dm_deform_gather(const void* x, const void* offset, const void* rpe_table, void* feat, int64_t batch,
                            int64_t channels, int64_t height, int64_t width, int64_t offset_channels, int64_t table_h,
                            int64_t table_w, int dtype, void* stream) {
  if (dtype == 0)
    return defmamba::launchDeformGather<float>(static_cast<const float*>(x), static_cast<const float*>(offset),
                                               static_cast<const float*>(rpe_table), static_cast<float*>(feat), batch,
                                               channels, height, width, offset_channels, table_h, table_w,
                                               as_stream(stream));
  if (dtype == 1)
    return defmamba::launchDeformGather<__half>(static_cast<const __half*>(x), static_cast<const __half*>(offset),
                                                static_cast<const __half*>(rpe_table), static_cast<__half*>(feat),
                                                batch, channels, height, width, offset_channels, table_h, table_w,
                                                as_stream(stream));
  return cudaErrorInvalidValue;
}

// *bytes = tokenSortWorkspaceSize(batch, length).
DM_ABI int dm_token_sort_workspace_size(int64_t batch, int64_t length, size_t* bytes) {
  return defmamba::tokenSortWorkspaceSize(batch, length, bytes);
}

// token_offset (batch, length) of dtype; perm, inv_perm (batch, length) of index type.
DM_ABI int dm_token_sort(const void* token_offset, void* perm, void* inv_perm, int64_t batch, int64_t length,
                         int dtype, int index_type, void* workspace, size_t workspace_size, void* stream) {
  const cudaStream_t s = as_stream(stream);
  if (dtype == 0 && index_type == 0)
    return defmamba::launchTokenSort<float, int32_t>(static_cast<const float*>(token_offset),
                                                     static_cast<int32_t*>(perm), static_cast<int32_t*>(inv_perm),
                                                     batch, length, workspace, workspace_size, s);
  if (dtype == 0 && index_type == 1)
    return defmamba::launchTokenSort<float, int64_t>(static_cast<const float*>(token_offset),
                                                     static_cast<int64_t*>(perm), static_cast<int64_t*>(inv_perm),
                                                     batch, length, workspace, workspace_size, s);
  if (dtype == 1 && index_type == 0)
    return defmamba::launchTokenSort<__half, int32_t>(static_cast<const __half*>(token_offset),
                                                      static_cast<int32_t*>(perm), static_cast<int32_t*>(inv_perm),
                                                      batch, length, workspace, workspace_size, s);
  if (dtype == 1 && index_type == 1)
    return defmamba::launchTokenSort<__half, int64_t>(static_cast<const __half*>(token_offset),
                                                      static_cast<int64_t*>(perm), static_cast<int64_t*>(inv_perm),
                                                      batch, length, workspace, workspace_size, s);
  return cudaErrorInvalidValue;
}

// keys (batch, length) float32: the sort keys exactly as launchTokenSort computes them.
DM_ABI int dm_token_sort_keys(const void* token_offset, void* keys, int64_t batch, int64_t length, int dtype,
                              void* stream) {
  if (dtype == 0)
    return defmamba::launchTokenSortKeys<float>(static_cast<const float*>(token_offset), static_cast<float*>(keys),
                                                batch, length, as_stream(stream));
  if (dtype == 1)
    return defmamba::launchTokenSortKeys<__half>(static_cast<const __half*>(token_offset), static_cast<float*>(keys),
                                                 batch, length, as_stream(stream));
  return cudaErrorInvalidValue;
}
