// CUDA launcher of DeformGather (implemented in kernel.cu). CUDA runtime types only.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace defmamba {

// feat = DeformGather(x, offset, rpe_table); T = float or __half, computed in float32.
// x, feat (batch, channels, height, width); offset (batch, offset_channels >= 2, height, width);
// rpe_table (channels, table_h, table_w). height, width >= 2. No allocation, no synchronisation.
template <typename T>
cudaError_t launchDeformGather(const T* x, const T* offset, const T* rpe_table, T* feat, int64_t batch,
                               int64_t channels, int64_t height, int64_t width, int64_t offset_channels,
                               int64_t table_h, int64_t table_w, cudaStream_t stream);

}  // namespace defmamba
