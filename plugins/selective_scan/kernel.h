// CUDA launcher of SelectiveScan (implemented in kernel.cu). Backend-neutral: CUDA runtime types
// only, no TensorRT or ONNX Runtime types, so the TensorRT plugin, the ORT CUDA op and the C test
// ABI all call the same function. Contract: ../README.md and README.md in this folder.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace defmamba {

// y = SelectiveScan(u, delta, A, B, C, D, delta_bias); T = float or __half (I/O), A/D/delta_bias float32,
// recurrence in float32. Layouts: u, delta, y (batch, channels, length); B, C (batch, groups, state, length);
// A (channels, state); D, delta_bias (channels) — D and delta_bias may be nullptr (= 0).
// reverse_mask: bit g set = group g (channels c with c / (channels / groups) == g) scans backwards in time
// (t = L-1 .. 0, h starts at 0 before t = L-1), i.e. y = flip(scan(flip(inputs))) along L for its rows;
// only groups 0..63 can be reversed, bits of groups >= `groups` are ignored.
// No allocation, no synchronisation: safe under CUDA-graph capture. Returns the launch error, if any.
template <typename T>
cudaError_t launchSelectiveScan(const T* u, const T* delta, const float* A, const T* B, const T* C, const float* D,
                                const float* delta_bias, T* y, int64_t batch, int64_t channels, int64_t groups,
                                int64_t state, int64_t length, bool delta_softplus, cudaStream_t stream,
                                uint64_t reverse_mask = 0);

}  // namespace defmamba
