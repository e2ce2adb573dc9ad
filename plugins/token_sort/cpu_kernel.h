// TokenSort CPU kernel: plain C++ on raw pointers. It is the ORT CPU kernel and the reference the
// CUDA kernels are checked against. Contract: plugins/token_sort/README.md.
#pragma once

#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_scratch.h"
#include "defmamba_math.h"

namespace defmamba {

// token_offset: (Bt, L) of T (float, Half or double); perm, inv_perm: (Bt, L) int64.
//   key[l] = tanh(token_offset[b, l]) + (l + 0.5)/(L - 1)*2 - 1   (float32; float64 for double)
//   perm[b]     = stable ascending argsort of key (ties keep index order; NaN keys sort last)
//   inv_perm[b] = inverse permutation: inv_perm[b, perm[b, j]] = j
// L = 1 gives perm = inv_perm = [0]. Precondition: L < 2^32.
template <typename T>
void token_sort_cpu(int64_t batch, int64_t length, const T* token_offset, int64_t* perm, int64_t* inv_perm,
                    const Parallel& par = Parallel{}, const Scratch& scratch = Scratch{});

extern template void token_sort_cpu<float>(int64_t, int64_t, const float*, int64_t*, int64_t*, const Parallel&, const Scratch&);
extern template void token_sort_cpu<Half>(int64_t, int64_t, const Half*, int64_t*, int64_t*, const Parallel&, const Scratch&);
extern template void token_sort_cpu<double>(int64_t, int64_t, const double*, int64_t*, int64_t*, const Parallel&, const Scratch&);

}  // namespace defmamba
