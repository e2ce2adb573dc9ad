// Unit test of plugins/common/defmamba_math.h (no ONNX Runtime needed); registered with ctest.
//   exp_f32 / log1p_f32 / softplus_f32 against libm in double precision (ulp bounds),
//   float16 conversions against exhaustive round trips and the compiler's _Float16 (if available).
#include "defmamba_math.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "expect.h"

namespace dm = defmamba::math;

// error in units of the float32 ulp of the exact (double) value
static double ulp_error(float got, double exact) {
  if (std::isinf(exact) && std::isinf(got) && (exact > 0) == (got > 0)) return 0.0;
  const float ef = static_cast<float>(exact);
  double ulp = std::nextafter(std::fabs(ef), std::numeric_limits<float>::infinity()) - std::fabs(ef);
  if (ulp == 0.0 || !std::isfinite(ulp)) ulp = std::numeric_limits<float>::denorm_min();
  return std::fabs(static_cast<double>(got) - exact) / ulp;
}

// Sweep every float in [lo, hi] (step: every `stride`-th bit pattern) and report the max ulp error.
template <typename F, typename G>
static double sweep(F f, G exact, float lo, float hi, uint32_t stride, float* worst_x) {
  double worst = 0.0;
  *worst_x = lo;
  for (float x = lo; x <= hi;) {
    const double e = ulp_error(f(x), exact(static_cast<double>(x)));
    if (e > worst) {
      worst = e;
      *worst_x = x;
    }
    uint32_t b = dm::f32_to_bits(x);
    // walk the bit patterns in the direction of increasing value
    if (x < 0.0f) {
      b = (b - 0x80000000u > stride) ? b - stride : 0x00000000u;
    } else {
      b += stride;
    }
    const float nx = dm::bits_to_f32(b);
    if (!(nx > x)) break;
    x = nx;
  }
  return worst;
}

int main() {
  float wx = 0.0f;
  // exp over the range used by the scan (dt*A <= 0, plus positive args for delta_softplus=0)
  double e_exp = sweep([](float x) { return dm::exp_f32(x); }, [](double x) { return std::exp(x); },
                       -87.0f, 88.0f, 211, &wx);
  std::printf("exp_f32     max error %.3f ulp (at %.9g) over [-87, 88]\n", e_exp, wx);
  EXPECT(e_exp <= 2.0, "exp_f32 error %.3f ulp > 2 at x=%.9g", e_exp, wx);
  // agree with std::exp(float) (libm expf) to within 2 ulp as well
  double e_vs_libm = 0.0;
  for (float x = -87.0f; x < 88.0f; x += 0.000731f) {
    const double e = ulp_error(dm::exp_f32(x), static_cast<double>(std::exp(x)));
    if (e > e_vs_libm) e_vs_libm = e;
  }
  std::printf("exp_f32     max difference to std::exp(float) %.3f ulp\n", e_vs_libm);
  EXPECT(e_vs_libm <= 2.0, "exp_f32 differs from std::exp by %.3f ulp", e_vs_libm);
  // subnormal range: absolute error below the smallest normal's ulp
  for (float x = -103.9f; x < -87.4f; x += 0.01f) {
    const double d = std::fabs(static_cast<double>(dm::exp_f32(x)) - std::exp(static_cast<double>(x)));
    EXPECT(d <= 2.0 * std::numeric_limits<float>::denorm_min(), "exp_f32 subnormal error %g at %g", d, x);
  }
  EXPECT(dm::exp_f32(0.0f) == 1.0f, "exp(0) != 1");
  EXPECT(dm::exp_f32(-std::numeric_limits<float>::infinity()) == 0.0f, "exp(-inf) != 0");
  EXPECT(dm::exp_f32(-1000.0f) == 0.0f, "exp(-1000) != 0");
  EXPECT(dm::exp_f32(-104.0f) == 0.0f, "exp(-104) != 0");
  EXPECT(std::isinf(dm::exp_f32(89.0f)), "exp(89) not inf");
  EXPECT(std::isinf(dm::exp_f32(std::numeric_limits<float>::infinity())), "exp(inf) not inf");
  EXPECT(std::isnan(dm::exp_f32(std::nanf(""))), "exp(nan) not nan");
  EXPECT(std::isfinite(dm::exp_f32(88.72f)), "exp(88.72) overflowed");

  // exp2_table_f32 (the CPU scan's decay factors) over the normal range, the subnormal range and edges
  double e_exp2 = sweep([](float x) { return dm::exp2_table_f32(x); }, [](double x) { return std::exp2(x); },
                        -126.0f, 127.9f, 211, &wx);
  std::printf("exp2_table  max error %.3f ulp (at %.9g) over [-126, 128)\n", e_exp2, wx);
  EXPECT(e_exp2 <= 2.0, "exp2_table_f32 error %.3f ulp > 2 at x=%.9g", e_exp2, wx);
  for (float x = -150.5f; x < -126.0f; x += 0.01f) {
    const double d = std::fabs(static_cast<double>(dm::exp2_table_f32(x)) - std::exp2(static_cast<double>(x)));
    EXPECT(d <= 1.0 * std::numeric_limits<float>::denorm_min(), "exp2_table_f32 subnormal error %g at %g", d, x);
  }
  for (float x = -20.0f; x <= 20.0f; x += 1.0f / 16)  // exact powers and table points
    if (x == std::floor(x))
      EXPECT(dm::exp2_table_f32(x) == std::ldexp(1.0f, static_cast<int>(x)), "exp2(%g) is not exact", x);
  EXPECT(dm::exp2_table_f32(-std::numeric_limits<float>::infinity()) == 0.0f, "exp2(-inf) != 0");
  EXPECT(dm::exp2_table_f32(-151.0f) == 0.0f && dm::exp2_table_f32(-1e30f) == 0.0f, "exp2 underflow != 0");
  EXPECT(std::isinf(dm::exp2_table_f32(128.0f)) && std::isinf(dm::exp2_table_f32(1e30f)), "exp2(128) not inf");
  EXPECT(std::isinf(dm::exp2_table_f32(std::numeric_limits<float>::infinity())), "exp2(inf) not inf");
  EXPECT(std::isnan(dm::exp2_table_f32(std::nanf(""))), "exp2(nan) not nan");
  EXPECT(std::isfinite(dm::exp2_table_f32(127.99f)), "exp2(127.99) overflowed");

  // log1p on (0, e^20], the range softplus uses, and a bit below 0
  double e_l1p = sweep([](float x) { return dm::log1p_f32(x); }, [](double x) { return std::log1p(x); },
                       -0.75f, 4.9e8f, 199, &wx);
  std::printf("log1p_f32   max error %.3f ulp (at %.9g) over [-0.75, 4.9e8]\n", e_l1p, wx);
  EXPECT(e_l1p <= 2.0, "log1p_f32 error %.3f ulp > 2 at x=%.9g", e_l1p, wx);
  EXPECT(dm::log1p_f32(0.0f) == 0.0f, "log1p(0) != 0");
  EXPECT(dm::log1p_f32(1e-30f) == 1e-30f, "log1p(tiny) != tiny");

  // softplus: against log1p(exp(v)) in double (the float32 reference rounds twice, we allow 3 ulp)
  double e_sp = sweep([](float x) { return dm::softplus_f32(x); },
                      [](double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }, -80.0f, 30.0f, 223, &wx);
  std::printf("softplus    max error %.3f ulp (at %.9g) over [-80, 30]\n", e_sp, wx);
  EXPECT(e_sp <= 3.0, "softplus_f32 error %.3f ulp > 3 at x=%.9g", e_sp, wx);

  // the CPU scan's division-free softplus (same bound as softplus_f32) and its e^x, x <= 0
  double e_en = sweep([](float x) { return dm::exp_neg_table_f32(x); }, [](double x) { return std::exp(x); },
                      -87.0f, 0.0f, 211, &wx);
  std::printf("exp_neg_tab max error %.3f ulp (at %.9g) over [-87, 0]\n", e_en, wx);
  EXPECT(e_en <= 2.0, "exp_neg_table_f32 error %.3f ulp > 2 at x=%.9g", e_en, wx);
  double e_sp2 = sweep([](float x) { return dm::softplus_table_f32(x); },
                       [](double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }, -80.0f, 30.0f, 223, &wx);
  std::printf("softplus_table max error %.3f ulp (at %.9g) over [-80, 30]\n", e_sp2, wx);
  EXPECT(e_sp2 <= 3.0, "softplus_table_f32 error %.3f ulp > 3 at x=%.9g", e_sp2, wx);
  EXPECT(dm::softplus_table_f32(25.0f) == 25.0f && dm::softplus_table_f32(1e30f) == 1e30f, "softplus(big) != v");
  EXPECT(dm::softplus_table_f32(-1e30f) == 0.0f && dm::softplus_table_f32(-200.0f) == 0.0f, "softplus(-big) != 0");
  EXPECT(std::isinf(dm::softplus_table_f32(std::numeric_limits<float>::infinity())), "softplus(inf) != inf");
  EXPECT(dm::softplus_table_f32(-std::numeric_limits<float>::infinity()) == 0.0f, "softplus(-inf) != 0");
  EXPECT(std::isnan(dm::softplus_table_f32(std::nanf(""))), "softplus(nan) not nan");
  EXPECT(dm::exp_neg_table_f32(0.0f) == 1.0f && dm::exp_neg_table_f32(-200.0f) == 0.0f, "exp_neg edges");

  // float16: every half round-trips exactly through float; float -> half is round-to-nearest-even
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = dm::half_to_f32(static_cast<uint16_t>(h));
    const bool nan = ((h & 0x7c00u) == 0x7c00u) && (h & 0x03ffu);
    if (nan) {
      EXPECT(std::isnan(f), "half 0x%04x should be NaN", h);
      EXPECT((dm::f32_to_half(f) & 0x7c00u) == 0x7c00u && (dm::f32_to_half(f) & 0x3ffu), "NaN lost");
    } else {
      EXPECT(dm::f32_to_half(f) == h, "half 0x%04x does not round-trip (got 0x%04x)", h, dm::f32_to_half(f));
    }
  }
  EXPECT(dm::half_to_f32(0x3c00u) == 1.0f && dm::half_to_f32(0xc000u) == -2.0f, "half constants");
  EXPECT(dm::half_to_f32(0x0001u) == std::ldexp(1.0f, -24), "smallest subnormal");
  EXPECT(dm::f32_to_half(65520.0f) == 0x7c00u && dm::f32_to_half(65519.0f) == 0x7bffu, "overflow rounding");
  EXPECT(dm::f32_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00u, "tie to even (down)");
  EXPECT(dm::f32_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02u, "tie to even (up)");
#if defined(__FLT16_MAX__)
  // compare with the compiler's conversion on a dense sample of floats
  for (uint32_t b = 0; b < 0xffffffffu - 4093u; b += 4093u) {
    const float f = dm::bits_to_f32(b);
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t rb;
    std::memcpy(&rb, &ref, 2);
    if (dm::f32_to_half(f) != rb) {
      EXPECT(false, "f32_to_half(%a) = 0x%04x, compiler says 0x%04x", f, dm::f32_to_half(f), rb);
      break;
    }
  }
#endif

  // sort key bits: order-preserving, -0 == +0, NaN last
  EXPECT(dm::sortable_bits(-1.0f) < dm::sortable_bits(-0.5f), "order neg");
  EXPECT(dm::sortable_bits(-0.5f) < dm::sortable_bits(0.0f), "order neg/0");
  EXPECT(dm::sortable_bits(-0.0f) == dm::sortable_bits(0.0f), "signed zero");
  EXPECT(dm::sortable_bits(0.0f) < dm::sortable_bits(1e-45f), "order 0/denorm");
  EXPECT(dm::sortable_bits(std::numeric_limits<float>::infinity()) < dm::sortable_bits(std::nanf("")), "nan last");
  EXPECT(dm::sortable_bits(-std::nanf("")) == dm::sortable_bits(std::nanf("")), "nan sign");
  EXPECT(dm::sortable_bits(-2.0) < dm::sortable_bits(-0.0) && dm::sortable_bits(-0.0) == dm::sortable_bits(0.0),
         "double order");

  // resize rule (PyTorch align_corners=False): 7 -> 56
  {
    const auto r0 = dm::resize_source_index(0, 7, 56);
    EXPECT(r0.i0 == 0 && r0.i1 == 1 && r0.lambda == 0.0f, "resize dst 0");
    const auto r55 = dm::resize_source_index(55, 7, 56);
    EXPECT(r55.i0 == 6 && r55.i1 == 6, "resize dst 55: i0=%lld i1=%lld", (long long)r55.i0, (long long)r55.i1);
    const auto r5 = dm::resize_source_index(5, 7, 56);  // src = 5.5*0.125 - 0.5 = 0.1875
    EXPECT(r5.i0 == 0 && r5.i1 == 1 && r5.lambda == 0.1875f, "resize dst 5");
  }
  // bilinear taps: interior point, border, outside, NaN
  {
    const auto t = dm::bilinear_taps_zero_pad(3, 4, 1.25f, 2.5f);
    EXPECT(t.idx[0] == 1 * 4 + 2 && t.idx[3] == 2 * 4 + 3, "taps idx");
    EXPECT(std::fabs(t.w[0] + t.w[1] + t.w[2] + t.w[3] - 1.0f) < 1e-6f, "taps weights sum");
    const auto b = dm::bilinear_taps_zero_pad(3, 4, 2.0f, 3.0f);  // last pixel exactly
    EXPECT(b.w[0] == 1.0f && b.w[1] == 0.0f && b.w[2] == 0.0f && b.w[3] == 0.0f, "taps corner");
    const auto o = dm::bilinear_taps_zero_pad(3, 4, -1.5f, 0.0f);
    EXPECT(o.w[0] == 0.0f && o.w[1] == 0.0f && o.w[2] == 0.0f && o.w[3] == 0.0f, "taps outside");
    const auto n = dm::bilinear_taps_zero_pad(3, 4, std::nanf(""), 1.0f);
    EXPECT(std::isnan(n.w[0]) && n.w[1] == 0.0f && n.w[2] == 0.0f && n.w[3] == 0.0f, "taps NaN weights");
    EXPECT(n.idx[0] == 0 && n.idx[1] == 0 && n.idx[2] == 0 && n.idx[3] == 0, "taps NaN indices");
  }

  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all math tests passed\n");
  return 0;
}
