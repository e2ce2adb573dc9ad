// CUDA launcher of TokenSort (implemented in kernel.cu). CUDA runtime types only.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace defmamba {

// Bytes of device workspace launchTokenSort needs for (batch, length); computed on the host without
// touching the device (CUB's size query), so it can be called at engine build time.
size_t tokenSortWorkspaceSize(int64_t batch, int64_t length);

// Same, reporting errors: *bytes = the workspace size (0 when nothing is sorted: batch == 0 or
// length <= 1). The size comes from CUB's size query (d_temp_storage == nullptr), which makes no
// allocation, launch or synchronisation but reads the current device's properties (PTX version, SM
// count), so it needs a CUDA device; the overload above returns 0 when that query fails (a later
// launch then reports cudaErrorInvalidValue). Limits: batch * length <= 2^31 - 1.
cudaError_t tokenSortWorkspaceSize(int64_t batch, int64_t length, size_t* bytes);

// perm, inv_perm = TokenSort(token_offset): stable ascending order of the float32 key
// tanh(token_offset[b, l]) + (l + 0.5) / (L - 1) * 2 - 1. T = float or __half; Index = int32_t or int64_t.
// token_offset (batch, length); perm, inv_perm (batch, length). Any length (no TopK limit).
// The workspace must hold tokenSortWorkspaceSize(batch, length) bytes. No allocation, no sync.
template <typename T, typename Index>
cudaError_t launchTokenSort(const T* token_offset, Index* perm, Index* inv_perm, int64_t batch, int64_t length,
                            void* workspace, size_t workspace_size, cudaStream_t stream);

// Test/debug helper: the float32 sort keys (token_sort_key with -0.0 -> +0.0; 0 for length 1),
// keys (batch, length). No workspace.
template <typename T>
cudaError_t launchTokenSortKeys(const T* token_offset, float* keys, int64_t batch, int64_t length,
                                cudaStream_t stream);

}  // namespace defmamba
