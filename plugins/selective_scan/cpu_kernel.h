// SelectiveScan CPU kernel: plain C++ on raw pointers. It is the ORT CPU kernel and the reference
// the CUDA kernels are checked against. Contract: plugins/selective_scan/README.md.
#pragma once

#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_scratch.h"
#include "defmamba_math.h"

namespace defmamba {

struct SelectiveScanShape {
  int64_t batch;     // Bt
  int64_t channels;  // Ch, a multiple of groups
  int64_t groups;    // G: channel c uses B/C group c / (Ch / G)
  int64_t state;     // N (16 in DefMamba; any N >= 1 works, N == 16 keeps the states in registers)
  int64_t length;    // L
  // Bit g set: group g scans backwards in time (t = L-1 .. 0; h starts at 0 after t = L-1), i.e. its
  // channels give flip(scan(flip(inputs))) along L. Groups >= 64 cannot be reversed.
  uint64_t reverse_mask = 0;
};

// Contiguous row-major tensors:
//   u, delta, y: (Bt, Ch, L) of T;  B, C: (Bt, G, N, L) of T;  A: (Ch, N), D, delta_bias: (Ch,) float.
// T is float or Half; the recurrence always runs in float32. y must not alias an input.
//   dt = delta + delta_bias[c]; if (delta_softplus) dt = softplus(dt)
//   h[n] = exp(dt * A[c,n]) * h[n] + dt * B[b,g,n,t] * u      (h starts at 0)
//   y = sum_n C[b,g,n,t] * h[n] + D[c] * u
// t runs 0 .. L-1, or L-1 .. 0 for the groups in s.reverse_mask.
// Channels are computed W at a time in SIMD lanes (W = 16 AVX-512, 8 AVX2, 4 SSE2; see cpu_kernel.cpp).
// Scratch: one float buffer of Bt-independent size 2*G*N*L (B, C transposed to (L, N) per batch)
// plus ~(384 + 2*N)*W floats per concurrently running task, independent of L; all from `scratch`
// (ORT: the session's arena), taken once per call, never inside the time loop.
template <typename T>
void selective_scan_cpu(const SelectiveScanShape& s, const T* u, const T* delta, const float* A, const T* B,
                        const T* C, const float* D, const float* delta_bias, bool delta_softplus, T* y,
                        const Parallel& par = Parallel{}, const Scratch& scratch = Scratch{});

// Which SIMD variant selective_scan_cpu runs on this CPU ("avx512", "avx2", "build(sse2)", ...).
const char* selective_scan_cpu_isa();

extern template void selective_scan_cpu<float>(const SelectiveScanShape&, const float*, const float*,
                                               const float*, const float*, const float*, const float*,
                                               const float*, bool, float*, const Parallel&, const Scratch&);
extern template void selective_scan_cpu<Half>(const SelectiveScanShape&, const Half*, const Half*, const float*,
                                              const Half*, const Half*, const float*, const float*, bool, Half*,
                                              const Parallel&, const Scratch&);

}  // namespace defmamba
