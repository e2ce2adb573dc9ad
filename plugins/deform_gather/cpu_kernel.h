// DeformGather CPU kernel: plain C++ on raw pointers. It is the ORT CPU kernel and the reference the
// CUDA kernels are checked against. Contract: plugins/deform_gather/README.md.
#pragma once

#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_scratch.h"
#include "defmamba_math.h"

namespace defmamba {

struct DeformGatherShape {
  int64_t batch;            // Bt
  int64_t channels;         // Ch
  int64_t height;           // H >= 2
  int64_t width;            // W >= 2
  int64_t offset_channels;  // K >= 2 (channel 0 = dy, 1 = dx, the rest is ignored)
  int64_t table_h;          // Th >= 1
  int64_t table_w;          // Tw >= 1
};

// Contiguous row-major tensors of T (float or Half), computed in float32:
//   x: (Bt, Ch, H, W), offset: (Bt, K, H, W), rpe_table: (Ch, Th, Tw) -> feat: (Bt, Ch, H, W)
//   feat[b,c,i,j] = bilinear(x[b,c], py, px) + bilinear(resize(rpe_table[c], H, W), ty, tx)
// with (py, px, ty, tx) = math::deform_point(i, j, H, W, offset[b,0,i,j], offset[b,1,i,j]).
// Preconditions (checked by the ORT op): H, W >= 2, H*W < 2^31; feat does not alias an input.
template <typename T>
void deform_gather_cpu(const DeformGatherShape& s, const T* x, const T* offset, const T* rpe_table, T* feat,
                       const Parallel& par = Parallel{}, const Scratch& scratch = Scratch{});

extern template void deform_gather_cpu<float>(const DeformGatherShape&, const float*, const float*, const float*,
                                              float*, const Parallel&, const Scratch&);
extern template void deform_gather_cpu<Half>(const DeformGatherShape&, const Half*, const Half*, const Half*, Half*,
                                             const Parallel&, const Scratch&);

}  // namespace defmamba
