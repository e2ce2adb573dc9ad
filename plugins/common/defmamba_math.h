// Per-element math shared by the CPU kernels (the C++ reference) and the future CUDA kernels.
//
// Everything here is a small DM_HD inline function on plain scalars: no ONNX Runtime, TensorRT or
// CUDA-runtime types. The formulas follow plugins/README.md; the float32 operation order is kept
// close to PyTorch's (grid_sample, interpolate, the official DefMamba code) so that float32 results
// differ from the PyTorch reference by a few ulp only.
//
// Vectorisation: the functions are branch-free (ternaries that compilers turn into selects) and
// call no libm function except tanh, so loops over them auto-vectorise with
// -O3 -fno-math-errno -fno-trapping-math at any -march (see CMakeLists.txt).
#pragma once

#include <cstdint>

#if !defined(__CUDACC__)
#include <cmath>
#include <cstring>
#endif

#if defined(__CUDACC__)
#define DM_HD __host__ __device__ __forceinline__
#else
#define DM_HD inline
#endif

namespace defmamba {

// float16 storage type of the kernels (IEEE binary16 bits). Layout-compatible with Ort::Float16_t
// and CUDA's __half; converted with half_to_f32 / f32_to_half below.
struct Half {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2, "Half must be 2 bytes");

namespace math {

// ------------------------------------------------------------------------------------------------
// bit casts
DM_HD float bits_to_f32(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
#endif
}

DM_HD uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
#endif
}

// ------------------------------------------------------------------------------------------------
// float16 <-> float32 (IEEE binary16, round-to-nearest-even; inf/NaN/subnormals handled),
// branch-free so that conversion loops vectorise.
DM_HD float half_to_f32(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;                 // exponent mask after the shift
  uint32_t o = static_cast<uint32_t>(h & 0x7fffu) << 13;      // exponent + mantissa
  const uint32_t e = o & shifted_exp;
  o += (127u - 15u) << 23;                                    // rebias the exponent
  o = (e == shifted_exp) ? o + ((128u - 16u) << 23) : o;      // inf / NaN
  // zero / subnormal: renormalise through a float subtraction (exact)
  const float sub = bits_to_f32(o + (1u << 23)) - bits_to_f32(113u << 23);
  o = (e == 0u) ? f32_to_bits(sub) : o;
  return bits_to_f32(o | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

DM_HD uint16_t f32_to_half(float x) {
  uint32_t f = f32_to_bits(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  const uint32_t f32_inf = 255u << 23;
  const uint32_t f16_max = (127u + 16u) << 23;                // 65536: first value that rounds to inf
  const float denorm_magic = bits_to_f32(((127u - 15u) + (23u - 10u) + 1u) << 23);  // 0.5f
  // overflow / inf / NaN
  const uint32_t o_big = (f > f32_inf) ? 0x7e00u : 0x7c00u;
  // result is a float16 subnormal or zero: let the float adder do the rounding
  const uint32_t o_sub = f32_to_bits(bits_to_f32(f) + denorm_magic) - f32_to_bits(denorm_magic);
  // normal: rebias and round to nearest even
  const uint32_t mant_odd = (f >> 13) & 1u;
  const uint32_t o_norm = (f + (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd) >> 13;
  uint32_t o = (f < (113u << 23)) ? o_sub : o_norm;
  o = (f >= f16_max) ? o_big : o;
  return static_cast<uint16_t>(o | (sign >> 16));
}

// Uniform load/store helpers for the kernels' element types.
DM_HD float to_f32(float v) { return v; }
DM_HD float to_f32(Half v) { return half_to_f32(v.bits); }
template <typename T>
DM_HD T from_f32(float v);
template <>
DM_HD float from_f32<float>(float v) { return v; }
template <>
DM_HD Half from_f32<Half>(float v) { return Half{f32_to_half(v)}; }

// ------------------------------------------------------------------------------------------------
// exp in float32, vectorisable (Cephes expf polynomial, Cody-Waite range reduction).
// Accuracy: <= 2 ulp against a correctly rounded expf over the normal range (tested in
// plugins/tests/test_math.cpp against std::exp). Special values: exp(-inf) = 0, exp(+inf) = +inf,
// NaN -> NaN; results below FLT_MIN are subnormal like expf (x < -103.97 gives 0), x > 88.72
// overflows to +inf. The power of two is applied in two factors 2^n1 * 2^n2 so that both stay
// normal floats for every n in [-150, 145].
DM_HD float exp_f32(float x) {
  x = x < -104.0f ? -104.0f : x;  // keeps NaN
  x = x > 100.0f ? 100.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = static_cast<int32_t>(f32_to_bits(t) - f32_to_bits(magic));  // == n
  float r = x - n * 0.693359375f;  // ln2 split in two parts (Cody-Waite)
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  const int32_t n1 = ni >> 1;  // arithmetic shift; both halves in [-75, 73]: 2^n1, 2^n2 are normal
  const int32_t n2 = ni - n1;
  const float s1 = bits_to_f32(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_f32(static_cast<uint32_t>(n2 + 127) << 23);
  return (e * s1) * s2;
}

#if !defined(__CUDACC__)
// 2^x in float32 for the CPU scan's decay factors, exp(dt * A) = 2^(dt * (A * log2 e)): a 16-entry
// table of 2^(j/16) and a degree-3 polynomial on |r| <= 1/32 (fewer operations than exp_f32's
// degree-7 polynomial; the recurrence evaluates one per state update). x = m + j/16 + r with m, j
// integers taken from x + 1.5 * 2^19 (which rounds x to a multiple of 1/16; r = x - (m + j/16) is
// exact), then 2^x = (T[j] + T[j] * q(r)) * 2^m, the power of two applied in two factors so that the
// result rounds once (subnormal results included), like vscalefps does in the AVX-512 kernel.
// Accuracy: <= 2 ulp over the normal range (plugins/tests/test_math.cpp); 2^(-inf) = 0,
// 2^(+inf) = +inf, NaN -> NaN; x < -150 gives 0 and x >= 128 gives +inf. Host only (the CUDA kernel
// uses exp_f32: a table indexed per lane is a poor fit for a GPU).
constexpr float kExp2Table16[16] = {
    0x1.000000p+0f, 0x1.0b5586p+0f, 0x1.172b84p+0f, 0x1.2387a6p+0f, 0x1.306fe0p+0f, 0x1.3dea64p+0f,
    0x1.4bfdaep+0f, 0x1.5ab07ep+0f, 0x1.6a09e6p+0f, 0x1.7a1148p+0f, 0x1.8ace54p+0f, 0x1.9c4918p+0f,
    0x1.ae89fap+0f, 0x1.c199bep+0f, 0x1.d5818ep+0f, 0x1.ea4afap+0f};  // 2^(j/16), rounded to float
constexpr float kExp2Magic = 786432.0f;  // 1.5 * 2^19: x + magic rounds x to a multiple of 1/16
constexpr float kExp2C1 = 0.693147180559945f, kExp2C2 = 0.240226506959101f, kExp2C3 = 0.0555041086648216f;

// e * 2^m for the table exps, with t = x + kExp2Magic (m = floor of x rounded to 1/16, |m| <= 240):
// applied in two normal factors so that the result rounds once (subnormals included).
inline float exp2_table_scale(float e, float t) {
  const int32_t m = static_cast<int32_t>(f32_to_bits(t) - f32_to_bits(kExp2Magic)) >> 4;
  const int32_t m1 = m >> 1;
  const int32_t m2 = m - m1;
  return (e * bits_to_f32(static_cast<uint32_t>(m1 + 127) << 23)) * bits_to_f32(static_cast<uint32_t>(m2 + 127) << 23);
}

inline float exp2_table_f32(float x) {
  x = x < -160.0f ? -160.0f : x;  // keeps NaN
  x = x > 160.0f ? 160.0f : x;
  const float t = x + kExp2Magic;
  const float n = t - kExp2Magic;  // x rounded to a multiple of 1/16
  const float r = x - n;           // exact, |r| <= 1/32
  const uint32_t tb = f32_to_bits(t);
  const float T = kExp2Table16[tb & 15u];
  const float q = ((kExp2C3 * r + kExp2C2) * r + kExp2C1) * r;
  const float e = T * q + T;
  return exp2_table_scale(e, t);  // e * 2^floor(n), floor(n) in [-160, 160]
}

// e^x for x <= 0 on the same table: n = x log2(e) rounded to a multiple of 1/16, r = x - n ln2 with
// ln2 in two parts (n * kLn2Hi is exact: n has <= 12 significant bits, kLn2Hi 9), e^r by its
// degree-3 Taylor polynomial (|r| <= ln2/32: error 1e-8). Exact to <= 2 ulp like exp2_table_f32;
// x < -160 gives 0, NaN -> NaN.
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
inline float exp_neg_table_f32(float x) {
  x = x < -160.0f ? -160.0f : x;  // keeps NaN
  const float t = x * 1.44269504088896341f + kExp2Magic;
  const float n = t - kExp2Magic;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  const uint32_t tb = f32_to_bits(t);
  const float T = kExp2Table16[tb & 15u];
  const float q = ((0.166666672f * r + 0.5f) * r + 1.0f) * r;
  const float e = T * q + T;
  return exp2_table_scale(e, t);  // floor(n) in [-231, 0]
}

// softplus for the CPU scan without divisions: max(v, 0) + log1p(w), w = e^-|v| in (0, 1], with
// log1p(w) = w P(w) and P a degree-9 least-squares fit of log1p(w)/w on [0, 1] (P(0) = 1, so a tiny
// w gives exactly w). <= 3 ulp against log1p(exp(v)) in double (plugins/tests/test_math.cpp), like
// softplus_f32; v >= 17 gives exactly v, v = +inf gives +inf, NaN -> NaN.
constexpr float kLog1pP[10] = {-0.003256378462538123f, 0.019907161593437195f, -0.057064201682806015f,
                               0.10614264756441116f,   -0.15311862528324127f, 0.19678117334842682f,
                               -0.24954558908939362f,  0.33330005407333374f,  -0.4999990463256836f,
                               1.0f};
inline float softplus_table_f32(float v) {
  const float w = exp_neg_table_f32(v < 0.0f ? v : -v);  // e^-|v| (NaN stays NaN)
  float p = kLog1pP[0];
  for (int i = 1; i < 10; ++i) p = p * w + kLog1pP[i];
  return w * p + (v > 0.0f ? v : 0.0f);
}
#endif

// log1p in float32 for z > -1 (vectorisable; FreeBSD/musl log1pf algorithm made branch-free).
// Accuracy ~1 ulp; log1p(+inf) = +inf is not needed by the kernels and not guaranteed.
DM_HD float log1p_f32(float z) {
  const float u = 1.0f + z;
  uint32_t iu = f32_to_bits(u);
  iu += 0x3f800000u - 0x3f3504f3u;  // so that the reduced mantissa lands in [sqrt(2)/2, sqrt(2))
  const int32_t k = static_cast<int32_t>(iu >> 23) - 0x7f;
  // c = the rounding error of u = 1 + z, divided by u (exact correction log1p(z) - log(u))
  float c = (k >= 2) ? 1.0f - (u - z) : z - (u - 1.0f);
  c = c / u;
  iu = (iu & 0x007fffffu) + 0x3f3504f3u;
  const float f = bits_to_f32(iu) - 1.0f;
  const float s = f / (2.0f + f);
  const float zz = s * s;
  const float w = zz * zz;
  const float t1 = w * (0.40000972152f + w * 0.24279078841f);
  const float t2 = zz * (0.66666662693f + w * 0.28498786688f);
  const float R = t2 + t1;
  const float hfsq = 0.5f * f * f;
  const float dk = static_cast<float>(k);
  return s * (hfsq + R) + (dk * 9.0580006145e-06f + c) - hfsq + f + dk * 6.9313812256e-01f;
}

// softplus as in the reference kernels: v > 20 ? v : log1p(exp(v)), in float32.
DM_HD float softplus_f32(float v) { return v > 20.0f ? v : log1p_f32(exp_f32(v)); }

DM_HD float tanh_f32(float v) {
#if defined(__CUDA_ARCH__)
  return tanhf(v);
#else
  return std::tanh(v);
#endif
}

DM_HD double tanh_f64(double v) {
#if defined(__CUDA_ARCH__)
  return tanh(v);
#else
  return std::tanh(v);
#endif
}

// ------------------------------------------------------------------------------------------------
// Bilinear sampling, align_corners=True, zero padding (PyTorch grid_sample semantics, with the
// position already in pixel units of the sampled plane: y in [0, h-1] hits the first..last row).
// Returns the four taps (flat index into an h x w plane, weight); an out-of-bounds tap gets weight 0
// and index 0, so a sum over the taps never reads outside the plane. A NaN position gives index 0 for
// all taps and a NaN first weight, so the sample is NaN (as with PyTorch's grid_sample).
struct BilinearTaps {
  int64_t idx[4];  // nw, ne, sw, se
  float w[4];
};

DM_HD BilinearTaps bilinear_taps_zero_pad(int64_t h, int64_t w, float y, float x) {
  BilinearTaps t;
#if defined(__CUDA_ARCH__)
  const float y0 = floorf(y), x0 = floorf(x);
#else
  const float y0 = std::floor(y), x0 = std::floor(x);
#endif
  const float y1 = y0 + 1.0f, x1 = x0 + 1.0f;
  // PyTorch's weight formulas (grid_sampler_2d, bilinear)
  const float w_nw = (x1 - x) * (y1 - y);
  const float w_ne = (x - x0) * (y1 - y);
  const float w_sw = (x1 - x) * (y - y0);
  const float w_se = (x - x0) * (y - y0);
  const float hf = static_cast<float>(h), wf = static_cast<float>(w);
  // bounds tested in float (false for NaN) before any float -> int conversion
  const bool iy0 = y0 >= 0.0f && y0 < hf, iy1 = y1 >= 0.0f && y1 < hf;
  const bool ix0 = x0 >= 0.0f && x0 < wf, ix1 = x1 >= 0.0f && x1 < wf;
  const int64_t r0 = iy0 ? static_cast<int64_t>(y0) : 0, r1 = iy1 ? static_cast<int64_t>(y1) : 0;
  const int64_t c0 = ix0 ? static_cast<int64_t>(x0) : 0, c1 = ix1 ? static_cast<int64_t>(x1) : 0;
  t.idx[0] = (iy0 && ix0) ? r0 * w + c0 : 0;
  t.w[0] = (iy0 && ix0) ? w_nw : 0.0f;
  t.idx[1] = (iy0 && ix1) ? r0 * w + c1 : 0;
  t.w[1] = (iy0 && ix1) ? w_ne : 0.0f;
  t.idx[2] = (iy1 && ix0) ? r1 * w + c0 : 0;
  t.w[2] = (iy1 && ix0) ? w_sw : 0.0f;
  t.idx[3] = (iy1 && ix1) ? r1 * w + c1 : 0;
  t.w[3] = (iy1 && ix1) ? w_se : 0.0f;
  const bool nan = !(y == y) || !(x == x);
  t.w[0] = nan ? y + x : t.w[0];
  return t;
}

// Same as above, evaluated directly on a plane of any element type.
template <typename T>
DM_HD float bilinear_zero_pad(const T* plane, int64_t h, int64_t w, float y, float x) {
  const BilinearTaps t = bilinear_taps_zero_pad(h, w, y, x);
  return t.w[0] * to_f32(plane[t.idx[0]]) + t.w[1] * to_f32(plane[t.idx[1]]) +
         t.w[2] * to_f32(plane[t.idx[2]]) + t.w[3] * to_f32(plane[t.idx[3]]);
}

// align_corners=True unnormalisation: [-1, 1] -> [0, size-1] (PyTorch grid_sampler_unnormalize).
DM_HD float unnormalize_align_corners(float coord, int64_t size) {
  return ((coord + 1.0f) / 2.0f) * static_cast<float>(size - 1);
}

// ------------------------------------------------------------------------------------------------
// PyTorch bilinear resize, align_corners=False, no scale factor given (F.interpolate(size=...)):
//   src = max(0, (dst + 0.5) * (in / out) - 0.5)  in float32
//   i0 = (int)src; i1 = min(i0 + 1, in - 1); lambda = src - i0   (value = (1-l)*v[i0] + l*v[i1])
struct ResizeTap {
  int64_t i0, i1;
  float lambda;  // weight of i1
};

DM_HD ResizeTap resize_source_index(int64_t dst, int64_t in_size, int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  src = src < 0.0f ? 0.0f : src;
  ResizeTap r;
  r.i0 = static_cast<int64_t>(src);
  r.i0 = r.i0 > in_size - 1 ? in_size - 1 : r.i0;
  r.i1 = r.i0 < in_size - 1 ? r.i0 + 1 : r.i0;
  float l = src - static_cast<float>(r.i0);
  l = l < 0.0f ? 0.0f : (l > 1.0f ? 1.0f : l);
  r.lambda = l;
  return r;
}

// ------------------------------------------------------------------------------------------------
// DeformGather reference points (plugins/deform_gather/README.md). For pixel (i, j) of an H x W map
// (H, W >= 2) with raw offsets (off_y, off_x) = offset[b, 0:2, i, j]:
//   pos = ref + tanh(off)/(size-1),  ref[i] = (i + 0.5)/(size-1)*2 - 1      (normalised, [-1, 1])
//   key[i] = (i * (size/(size-1)))/(size-1)*2 - 1                           (linspace(0,size,size))
//   sample at (py, px) = unnormalise(pos)            in pixels of x
//   bias   at (ty, tx) = unnormalise((key - pos)/2)  in pixels of the resized (H x W) table
DM_HD float deform_ref_coord(int64_t i, int64_t size) {
  return (static_cast<float>(i) + 0.5f) / static_cast<float>(size - 1) * 2.0f - 1.0f;
}

DM_HD float deform_key_coord(int64_t i, int64_t size) {
  const float step = static_cast<float>(size) / static_cast<float>(size - 1);
  return (static_cast<float>(i) * step) / static_cast<float>(size - 1) * 2.0f - 1.0f;
}

struct DeformPoint {
  float py, px;  // sample position in x, pixels
  float ty, tx;  // sample position in the resized bias table, pixels
};

DM_HD DeformPoint deform_point(int64_t i, int64_t j, int64_t h, int64_t w, float off_y, float off_x) {
  const float pos_y = deform_ref_coord(i, h) + tanh_f32(off_y) / static_cast<float>(h - 1);
  const float pos_x = deform_ref_coord(j, w) + tanh_f32(off_x) / static_cast<float>(w - 1);
  const float disp_y = (deform_key_coord(i, h) - pos_y) * 0.5f;
  const float disp_x = (deform_key_coord(j, w) - pos_x) * 0.5f;
  DeformPoint p;
  p.py = unnormalize_align_corners(pos_y, h);
  p.px = unnormalize_align_corners(pos_x, w);
  p.ty = unnormalize_align_corners(disp_y, h);
  p.tx = unnormalize_align_corners(disp_x, w);
  return p;
}

// ------------------------------------------------------------------------------------------------
// TokenSort key: tanh(token_offset[l]) + (l + 0.5)/(L - 1)*2 - 1, in float32 (float64 for float64
// input). Only meaningful for L >= 2 (L = 1 divides by zero; the permutation is then [0]).
DM_HD float token_sort_key(float t, int64_t l, int64_t length) {
  return tanh_f32(t) + ((static_cast<float>(l) + 0.5f) / static_cast<float>(length - 1) * 2.0f - 1.0f);
}

DM_HD double token_sort_key(double t, int64_t l, int64_t length) {
  return tanh_f64(t) + ((static_cast<double>(l) + 0.5) / static_cast<double>(length - 1) * 2.0 - 1.0);
}

// Order-preserving map from a key to an unsigned integer (ascending float order == ascending
// integer order). -0.0 is mapped like +0.0 (they compare equal, so a stable sort keeps index
// order), and every NaN is mapped to the largest value (NaN keys sort last, like torch.sort).
DM_HD uint32_t sortable_bits(float k) {
  uint32_t b = f32_to_bits(k);
  b = (k == 0.0f) ? 0u : b;
  b = (k != k) ? 0x7fffffffu : b;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

DM_HD uint64_t sortable_bits(double k) {
  uint64_t b;
#if defined(__CUDA_ARCH__)
  b = static_cast<uint64_t>(__double_as_longlong(k));
#else
  std::memcpy(&b, &k, sizeof(b));
#endif
  b = (k == 0.0) ? 0ull : b;
  b = (k != k) ? 0x7fffffffffffffffull : b;
  return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}

}  // namespace math
}  // namespace defmamba
