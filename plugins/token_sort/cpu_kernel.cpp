// TokenSort CPU kernel (see cpu_kernel.h and README.md).
//
// Keys are mapped to order-preserving unsigned integers (math::sortable_bits: -0 == +0, NaN last) and
// sorted with an LSD radix sort (11-bit digits: 3 passes for float keys, 6 for double keys; a pass
// whose digit is the same for every key is skipped). LSD radix sort is stable, which gives exactly
// the tie rule of the contract. Short rows use insertion sort. Rows run in parallel.
#include "cpu_kernel.h"

#include <cstring>
#include <type_traits>

namespace defmamba {
namespace {

namespace dm = math;

constexpr int kDigitBits = 11;
constexpr uint32_t kRadix = 1u << kDigitBits;
constexpr int64_t kInsertionMax = 48;

template <typename K>
constexpr int radix_passes() {
  return static_cast<int>((sizeof(K) * 8 + kDigitBits - 1) / kDigitBits);
}

// Stable argsort of keys[0..n) (ascending); idx receives the permutation. keys is clobbered.
template <typename K>
void stable_argsort(uint32_t n, K* keys, uint32_t* idx, K* keys_tmp, uint32_t* idx_tmp, uint32_t* hist) {
  for (uint32_t i = 0; i < n; ++i) idx[i] = i;
  if (n <= kInsertionMax) {
    for (uint32_t i = 1; i < n; ++i) {
      const K k = keys[i];
      const uint32_t v = idx[i];
      uint32_t j = i;
      for (; j > 0 && keys[j - 1] > k; --j) {  // strict '>' keeps equal keys in index order
        keys[j] = keys[j - 1];
        idx[j] = idx[j - 1];
      }
      keys[j] = k;
      idx[j] = v;
    }
    return;
  }
  constexpr int P = radix_passes<K>();
  std::memset(hist, 0, sizeof(uint32_t) * kRadix * P);
  for (uint32_t i = 0; i < n; ++i) {
    const K k = keys[i];
    for (int p = 0; p < P; ++p) ++hist[p * kRadix + static_cast<uint32_t>((k >> (p * kDigitBits)) & (kRadix - 1))];
  }
  K* src_k = keys;
  uint32_t* src_i = idx;
  K* dst_k = keys_tmp;
  uint32_t* dst_i = idx_tmp;
  for (int p = 0; p < P; ++p) {
    uint32_t* h = hist + p * kRadix;
    const int shift = p * kDigitBits;
    if (h[static_cast<uint32_t>((src_k[0] >> shift) & (kRadix - 1))] == n) continue;  // trivial pass
    uint32_t sum = 0;
    for (uint32_t d = 0; d < kRadix; ++d) {
      const uint32_t c = h[d];
      h[d] = sum;
      sum += c;
    }
    for (uint32_t i = 0; i < n; ++i) {
      const K k = src_k[i];
      const uint32_t pos = h[static_cast<uint32_t>((k >> shift) & (kRadix - 1))]++;
      dst_k[pos] = k;
      dst_i[pos] = src_i[i];
    }
    std::swap(src_k, dst_k);
    std::swap(src_i, dst_i);
  }
  if (src_i != idx) std::memcpy(idx, src_i, sizeof(uint32_t) * n);
}

inline float load_value(float v) { return v; }
inline float load_value(Half v) { return dm::half_to_f32(v.bits); }
inline double load_value(double v) { return v; }

}  // namespace

template <typename T>
void token_sort_cpu(int64_t batch, int64_t length, const T* token_offset, int64_t* perm, int64_t* inv_perm,
                    const Parallel& par, const Scratch& scratch) {
  if (batch <= 0 || length <= 0) return;
  using Key = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  using UKey = typename std::conditional<std::is_same<T, double>::value, uint64_t, uint32_t>::type;
  const uint32_t n = static_cast<uint32_t>(length);
  // per running row task: keys and indices twice (radix sort ping-pong) and the digit histograms
  const size_t key_bytes = (2 * static_cast<size_t>(n) * sizeof(UKey) + 63) / 64 * 64;
  const size_t idx_bytes = (2 * static_cast<size_t>(n) * sizeof(uint32_t) + 63) / 64 * 64;
  ScratchSlots row_scratch(scratch, key_bytes + idx_bytes + sizeof(uint32_t) * kRadix * radix_passes<UKey>());
  par.for_each(static_cast<size_t>(batch), [&](size_t b) {
    const T* in = token_offset + static_cast<int64_t>(b) * length;
    int64_t* pr = perm + static_cast<int64_t>(b) * length;
    int64_t* ip = inv_perm + static_cast<int64_t>(b) * length;
    if (n == 1) {
      pr[0] = 0;
      ip[0] = 0;
      return;
    }
    const ScratchSlots::Lease buf = row_scratch.lease();
    char* base = static_cast<char*>(buf.get());
    UKey* keys = reinterpret_cast<UKey*>(base);
    uint32_t* idx = reinterpret_cast<uint32_t*>(base + key_bytes);
    uint32_t* hist = reinterpret_cast<uint32_t*>(base + key_bytes + idx_bytes);
    for (uint32_t l = 0; l < n; ++l) {
      const Key v = load_value(in[l]);
      keys[l] = dm::sortable_bits(dm::token_sort_key(v, static_cast<int64_t>(l), length));
    }
    stable_argsort<UKey>(n, keys, idx, keys + n, idx + n, hist);
    for (uint32_t j = 0; j < n; ++j) {
      pr[j] = idx[j];
      ip[idx[j]] = j;
    }
  });
}

template void token_sort_cpu<float>(int64_t, int64_t, const float*, int64_t*, int64_t*, const Parallel&, const Scratch&);
template void token_sort_cpu<Half>(int64_t, int64_t, const Half*, int64_t*, int64_t*, const Parallel&, const Scratch&);
template void token_sort_cpu<double>(int64_t, int64_t, const double*, int64_t*, int64_t*, const Parallel&, const Scratch&);

}  // namespace defmamba
