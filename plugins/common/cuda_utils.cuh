// Helpers shared by the CUDA kernels (plugins/<op>/kernel.cu). nvcc only; no ORT or TensorRT types.
//
// Element access: the kernels' I/O types are float and __half (kernel.h). Loads convert to float32
// exactly (__half2float), stores round to nearest even (__float2half_rn): the same conversions as
// math::half_to_f32 / math::f32_to_half used by the CPU kernels, with the hardware instructions.
// All per-element arithmetic comes from defmamba_math.h (the CPU kernels' code).
#pragma once

#if !defined(__CUDACC__)
#error "cuda_utils.cuh is for nvcc-compiled sources (.cu)"
#endif

// defmamba_math.h skips <cmath>/<cstring> under nvcc; its host branches still use std::floor,
// std::tanh and std::memcpy, so provide them here before including it.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "defmamba_math.h"

namespace defmamba {
namespace cuda {

// ---- element conversion ---------------------------------------------------------------------------
__device__ __forceinline__ float load_f32(float v) { return v; }
__device__ __forceinline__ float load_f32(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T store_as(float v);
template <>
__device__ __forceinline__ float store_as<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half store_as<__half>(float v) { return __float2half_rn(v); }

// ---- launch helpers -------------------------------------------------------------------------------
constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// The error of the launch just made (cudaGetLastError also clears a sticky launch error so that the
// next launch reports its own). Never synchronises.
inline cudaError_t launch_status() { return cudaGetLastError(); }

// ---- run loads/stores -----------------------------------------------------------------------------
// A thread's run of K consecutive elements p[0..K) of a row, converted to float. `count` (<= K) of
// them exist (the rest of the run lies past the row end and gets `fill`). Whole, 16-byte aligned runs
// are read with 16-byte vector loads; others element by element.
template <int K>
__device__ __forceinline__ void load_run(const float* p, int count, float fill, float (&v)[K]) {
  static_assert(K % 4 == 0, "run length");
  if (count == K && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
#pragma unroll
    for (int i = 0; i < K; i += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + i);
      v[i] = q.x;
      v[i + 1] = q.y;
      v[i + 2] = q.z;
      v[i + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = i < count ? p[i] : fill;
  }
}

template <int K>
__device__ __forceinline__ void load_run(const __half* p, int count, float fill, float (&v)[K]) {
  static_assert(K % 8 == 0, "run length");
  if (count == K && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
#pragma unroll
    for (int i = 0; i < K; i += 8) {
      const uint4 q = *reinterpret_cast<const uint4*>(p + i);
      const __half2* h = reinterpret_cast<const __half2*>(&q);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __half22float2(h[k]);
        v[i + 2 * k] = f.x;
        v[i + 2 * k + 1] = f.y;
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = i < count ? __half2float(p[i]) : fill;
  }
}

template <int K>
__device__ __forceinline__ void store_run(float* p, int count, const float (&v)[K]) {
  if (count == K && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
#pragma unroll
    for (int i = 0; i < K; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i)
      if (i < count) p[i] = v[i];
  }
}

template <int K>
__device__ __forceinline__ void store_run(__half* p, int count, const float (&v)[K]) {
  if (count == K && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
#pragma unroll
    for (int i = 0; i < K; i += 8) {
      uint4 q;
      __half2* h = reinterpret_cast<__half2*>(&q);
#pragma unroll
      for (int k = 0; k < 4; ++k) h[k] = __floats2half2_rn(v[i + 2 * k], v[i + 2 * k + 1]);
      *reinterpret_cast<uint4*>(p + i) = q;
    }
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i)
      if (i < count) p[i] = __float2half_rn(v[i]);
  }
}

}  // namespace cuda
}  // namespace defmamba
