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

// perm, inv_perm = TokenSort(token_offset): stable ascending order of the float32 key
// tanh(token_offset[b, l]) + (l + 0.5) / (L - 1) * 2 - 1. T = float or __half; Index = int32_t or int64_t.
// token_offset (batch, length); perm, inv_perm (batch, length). Any length (no TopK limit).
// The workspace must hold tokenSortWorkspaceSize(batch, length) bytes. No allocation, no sync.
template <typename T, typename Index>
cudaError_t launchTokenSort(const T* token_offset, Index* perm, Index* inv_perm, int64_t batch, int64_t length,
                            void* workspace, size_t workspace_size, cudaStream_t stream);

}  // namespace defmamba
