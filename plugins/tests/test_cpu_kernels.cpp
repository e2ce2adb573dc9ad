// CPU kernels against straightforward float64 implementations (no ONNX Runtime). ctest runs it once
// per SIMD variant of the scan (DEFMAMBA_CPU_ISA=build|avx2|avx512; a variant the CPU lacks falls back
// to the next narrower one). The thorough, contract-level tests are tests/plugins/test_ort_ops.py.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "deform_gather/cpu_kernel.h"
#include "selective_scan/cpu_kernel.h"
#include "token_sort/cpu_kernel.h"

#include "expect.h"

using namespace defmamba;
namespace dm = defmamba::math;


template <typename T>
static std::vector<T> cast_vec(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = dm::from_f32<T>(v[i]);
  return out;
}

// ---- SelectiveScan ---------------------------------------------------------------------------------
// rev: bit g set = group g scans backwards in time (the float64 reference then runs t = L-1 .. 0).
template <typename T>
static void check_scan(int64_t Bt, int64_t Ch, int64_t G, int64_t N, int64_t L, bool softplus, std::mt19937& rng,
                       uint64_t rev = 0) {
  std::normal_distribution<float> nd;
  const size_t nu = Bt * Ch * L, nb = Bt * G * N * L;
  std::vector<float> u(nu), dl(nu), A(Ch * N), Bm(nb), Cm(nb), D(Ch), db(Ch);
  for (auto& v : u) v = nd(rng);
  for (auto& v : dl) v = softplus ? nd(rng) - 1.0f : std::fabs(nd(rng)) * 0.3f;
  for (auto& v : A) v = -std::exp(nd(rng));
  for (auto& v : Bm) v = nd(rng);
  for (auto& v : Cm) v = nd(rng);
  for (auto& v : D) v = nd(rng);
  for (auto& v : db) v = softplus ? 0.1f * nd(rng) : 0.05f * std::fabs(nd(rng));  // dt >= 0 keeps |y| moderate
  // round the T inputs first so that both sides see the same values
  auto ut = cast_vec<T>(u), dlt = cast_vec<T>(dl), Bt_ = cast_vec<T>(Bm), Ct = cast_vec<T>(Cm);
  std::vector<T> y(nu);
  selective_scan_cpu<T>({Bt, Ch, G, N, L, rev}, ut.data(), dlt.data(), A.data(), Bt_.data(), Ct.data(), D.data(),
                        db.data(), softplus, y.data());
  double max_err = 0.0, scale = 1e-30;
  const double out_tol = std::is_same<T, float>::value ? 0.0 : std::ldexp(1.0, -11);  // fp16 output rounding
  bool ok = true;
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t c = 0; c < Ch; ++c) {
      const int64_t g = c / (Ch / G);
      std::vector<double> h(N, 0.0);
      const bool backwards = g < 64 && ((rev >> g) & 1u) != 0;
      for (int64_t s = 0; s < L; ++s) {
        const int64_t t = backwards ? L - 1 - s : s;
        const int64_t i = (b * Ch + c) * L + t;
        double d = dm::to_f32(dlt[i]) + static_cast<double>(db[c]);
        if (softplus) d = d > 20.0 ? d : std::log1p(std::exp(d));
        const double uv = dm::to_f32(ut[i]);
        double acc = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t j = ((b * G + g) * N + n) * L + t;
          h[n] = std::exp(d * A[c * N + n]) * h[n] + d * dm::to_f32(Bt_[j]) * uv;
          acc += dm::to_f32(Ct[j]) * h[n];
        }
        acc += D[c] * uv;
        const double got = dm::to_f32(y[i]);
        const double err = std::fabs(got - acc) - out_tol * std::fabs(acc);
        max_err = std::max(max_err, err);
        scale = std::max(scale, std::fabs(acc));
        ok = ok && std::isfinite(got);
      }
    }
  const double tol = 2e-5 * std::max(scale, 1.0);
  EXPECT(ok && max_err <= tol,
         "scan<%s> Bt=%lld Ch=%lld G=%lld N=%lld L=%lld softplus=%d reverse=0x%llx: max err %.3g > %.3g",
         std::is_same<T, float>::value ? "f32" : "f16", (long long)Bt, (long long)Ch, (long long)G, (long long)N,
         (long long)L, (int)softplus, (unsigned long long)rev, max_err, tol);
}

// Random float32 scan inputs (softplus'd delta around softplus(-1), A = -exp(normal)) and a runner.
struct ScanCase {
  SelectiveScanShape shape;
  std::vector<float> u, dl, A, Bm, Cm, D, db;
  ScanCase(int64_t Ch, int64_t G, int64_t N, int64_t L, std::mt19937& rng) : shape{1, Ch, G, N, L} {
    std::normal_distribution<float> nd;
    const auto fill = [&](std::vector<float>& v, size_t n, float scale, float shift) {
      v.resize(n);
      for (auto& x : v) x = scale * nd(rng) + shift;
    };
    fill(u, Ch * L, 1.0f, 0.0f);
    fill(dl, Ch * L, 1.0f, -1.0f);
    fill(A, Ch * N, 1.0f, 0.0f);
    for (auto& v : A) v = -std::exp(v);
    fill(Bm, G * N * L, 1.0f, 0.0f);
    fill(Cm, G * N * L, 1.0f, 0.0f);
    fill(D, Ch, 1.0f, 0.0f);
    fill(db, Ch, 0.1f, 0.0f);
  }
  std::vector<float> run() const {
    std::vector<float> y(u.size());
    selective_scan_cpu<float>(shape, u.data(), dl.data(), A.data(), Bm.data(), Cm.data(), D.data(), db.data(), true,
                              y.data());
    return y;
  }
};

// A reversed group must give exactly (bit for bit) the flipped forward scan of its flipped inputs:
// the kernel visits the same chunks with the same operations, only the row order differs.
static void check_scan_reverse_is_flip(int64_t Ch, int64_t G, int64_t N, int64_t L, uint64_t rev, std::mt19937& rng) {
  ScanCase sc(Ch, G, N, L, rng);
  sc.shape.reverse_mask = rev;
  const std::vector<float> y_rev = sc.run();
  ScanCase fl = sc;  // the same inputs with the reversed groups' time axes flipped, scanned forwards
  fl.shape.reverse_mask = 0;
  const int64_t cg = Ch / G;
  for (int64_t g = 0; g < G; ++g) {
    if (((rev >> g) & 1u) == 0) continue;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      std::reverse(fl.u.begin() + c * L, fl.u.begin() + (c + 1) * L);
      std::reverse(fl.dl.begin() + c * L, fl.dl.begin() + (c + 1) * L);
    }
    for (int64_t n = 0; n < N; ++n) {
      std::reverse(fl.Bm.begin() + (g * N + n) * L, fl.Bm.begin() + (g * N + n + 1) * L);
      std::reverse(fl.Cm.begin() + (g * N + n) * L, fl.Cm.begin() + (g * N + n + 1) * L);
    }
  }
  std::vector<float> y_fwd = fl.run();
  bool same = true;
  for (int64_t c = 0; c < Ch; ++c) {
    const bool backwards = ((rev >> (c / cg)) & 1u) != 0;
    for (int64_t t = 0; t < L; ++t) {
      const float a = y_rev[c * L + t], b = y_fwd[c * L + (backwards ? L - 1 - t : t)];
      same = same && std::memcmp(&a, &b, sizeof(float)) == 0;
    }
  }
  EXPECT(same, "scan Ch=%lld G=%lld N=%lld L=%lld reverse=0x%llx: not bit-identical to flip(scan(flip(inputs)))",
         (long long)Ch, (long long)G, (long long)N, (long long)L, (unsigned long long)rev);
}

// Channels are computed in SIMD lanes (blocks of 4/8/16 channels of one group): a NaN in one channel
// must stay in that channel (from its time step on), and the other channels must not change at all.
static void check_scan_lane_isolation(std::mt19937& rng) {
  const int64_t Ch = 40, L = 150, bad_c = 21, bad_t = 70;
  ScanCase sc(Ch, 2, 16, L, rng);
  const std::vector<float> y0 = sc.run();
  sc.u[bad_c * L + bad_t] = std::nanf("");
  const std::vector<float> y1 = sc.run();
  bool ok = true;
  for (int64_t c = 0; c < Ch; ++c)
    for (int64_t t = 0; t < L; ++t) {
      const float a = y0[c * L + t], b = y1[c * L + t];
      if (c == bad_c && t >= bad_t)
        ok = ok && std::isnan(b);
      else
        ok = ok && std::memcmp(&a, &b, sizeof(float)) == 0;
    }
  EXPECT(ok, "scan: a NaN in channel %lld at t = %lld must affect exactly that channel from t on", (long long)bad_c,
         (long long)bad_t);
}

// The recurrence skips exp's clamps for a chunk when every |dt * A log2(e)| of its channel block is
// below 2^17 (the AVX-512 variant) and clamps otherwise. A = -inf in the last channel puts that
// channel's block on the clamped path: the block's other channels must not change by a single bit,
// and the extreme channel must match the float64 reference (exp(dt * -inf) = 0). (Unclamped,
// x = -inf gives r = NaN and vscalefps(NaN, -inf): NaN on Intel per the SDM; the AMD Zen 4 this was
// written on returns 0 there, so on that CPU this test also passes without the range check.)
static void check_scan_clamped_path(int64_t N, std::mt19937& rng) {
  const int64_t Ch = 32, L = 150, bad_c = 31;
  ScanCase sc(Ch, 1, N, L, rng);
  const std::vector<float> y0 = sc.run();
  sc.A[bad_c * N] = -std::numeric_limits<float>::infinity();
  const std::vector<float> y1 = sc.run();
  const std::vector<float>&u = sc.u, &dl = sc.dl, &A = sc.A, &Bm = sc.Bm, &Cm = sc.Cm, &D = sc.D, &db = sc.db;
  bool same = true;
  for (int64_t i = 0; i < (Ch - 1) * L; ++i) same = same && std::memcmp(&y0[i], &y1[i], sizeof(float)) == 0;
  EXPECT(same, "scan N=%lld: the clamped path changed channels whose values are in range", (long long)N);
  double max_err = 0.0;
  std::vector<double> h(N, 0.0);
  for (int64_t t = 0; t < L; ++t) {
    const double x = static_cast<double>(dl[bad_c * L + t]) + db[bad_c];
    const double dt = x > 20.0 ? x : std::log1p(std::exp(x));
    const double uu = u[bad_c * L + t];
    double y = D[bad_c] * uu;
    for (int64_t n = 0; n < N; ++n) {
      h[n] = std::exp(dt * A[bad_c * N + n]) * h[n] + dt * uu * Bm[n * L + t];
      y += Cm[n * L + t] * h[n];
    }
    const double err = std::fabs(y - y1[bad_c * L + t]) / (1.0 + std::fabs(y));
    max_err = err <= max_err ? max_err : err;  // a NaN output makes max_err NaN (and fails)
  }
  EXPECT(max_err <= 1e-5, "scan N=%lld: channel with A = -inf: max rel err %.3g", (long long)N, max_err);
}

// ---- TokenSort -------------------------------------------------------------------------------------
static void check_sort(int64_t Bt, int64_t L, bool ties, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> x(Bt * L);
  for (auto& v : x) v = ties ? 20.0f * static_cast<float>(static_cast<int>(rng() % 3) - 1) : 3.0f * nd(rng);
  std::vector<int64_t> perm(Bt * L), inv(Bt * L);
  token_sort_cpu<float>(Bt, L, x.data(), perm.data(), inv.data());
  for (int64_t b = 0; b < Bt; ++b) {
    std::vector<float> key(L);
    for (int64_t l = 0; l < L; ++l) key[l] = dm::token_sort_key(x[b * L + l], l, L);
    std::vector<int64_t> ref(L);
    std::iota(ref.begin(), ref.end(), 0);
    if (L > 1) std::stable_sort(ref.begin(), ref.end(), [&](int64_t a, int64_t c) { return key[a] < key[c]; });
    bool same = true, inverse = true;
    for (int64_t j = 0; j < L; ++j) {
      same = same && perm[b * L + j] == ref[j];
      inverse = inverse && inv[b * L + perm[b * L + j]] == j;
    }
    EXPECT(same && inverse, "token_sort Bt=%lld L=%lld ties=%d row %lld: perm %s, inverse %s", (long long)Bt,
           (long long)L, (int)ties, (long long)b, same ? "ok" : "WRONG", inverse ? "ok" : "WRONG");
  }
}

// ---- DeformGather ----------------------------------------------------------------------------------
// saturate: that fraction of the offsets is +-40, where tanh is exactly +-1 and the sample point lies
// exactly on the next (or this) row / column: taps outside the pixel's own 2 x 2 neighbourhood.
static void check_gather(int64_t Bt, int64_t Ch, int64_t H, int64_t W, int64_t Th, int64_t Tw, std::mt19937& rng,
                         float saturate = 0.0f) {
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  const int64_t K = 3;
  std::vector<float> x(Bt * Ch * H * W), off(Bt * K * H * W), tab(Ch * Th * Tw), feat(Bt * Ch * H * W);
  for (auto& v : x) v = nd(rng);
  for (auto& v : off) {
    v = 2.0f * nd(rng);
    if (ud(rng) < saturate) v = v < 0.0f ? -40.0f : 40.0f;
  }
  for (auto& v : tab) v = nd(rng);
  deform_gather_cpu<float>({Bt, Ch, H, W, K, Th, Tw}, x.data(), off.data(), tab.data(), feat.data());
  // direct evaluation: full resized table, then the shared per-element functions
  std::vector<float> resized(Ch * H * W);
  for (int64_t c = 0; c < Ch; ++c)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const auto ry = dm::resize_source_index(i, Th, H), rx = dm::resize_source_index(j, Tw, W);
        const float* t = tab.data() + c * Th * Tw;
        resized[(c * H + i) * W + j] =
            (1 - ry.lambda) * ((1 - rx.lambda) * t[ry.i0 * Tw + rx.i0] + rx.lambda * t[ry.i0 * Tw + rx.i1]) +
            ry.lambda * ((1 - rx.lambda) * t[ry.i1 * Tw + rx.i0] + rx.lambda * t[ry.i1 * Tw + rx.i1]);
      }
  double max_err = 0.0;
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const auto p = dm::deform_point(i, j, H, W, off[((b * K + 0) * H + i) * W + j], off[((b * K + 1) * H + i) * W + j]);
        for (int64_t c = 0; c < Ch; ++c) {
          const float ref = dm::bilinear_zero_pad(x.data() + (b * Ch + c) * H * W, H, W, p.py, p.px) +
                            dm::bilinear_zero_pad(resized.data() + c * H * W, H, W, p.ty, p.tx);
          max_err = std::max(max_err, std::fabs(static_cast<double>(ref) - feat[((b * Ch + c) * H + i) * W + j]));
        }
      }
  EXPECT(max_err <= 1e-5, "deform_gather Bt=%lld Ch=%lld H=%lld W=%lld: max err %.3g", (long long)Bt, (long long)Ch,
         (long long)H, (long long)W, max_err);
}

int main() {
  std::printf("selective scan variant: %s\n", selective_scan_cpu_isa());
  std::mt19937 rng(1234);
  for (bool sp : {true, false}) {
    check_scan<float>(2, 6, 3, 16, 77, sp, rng);
    check_scan<float>(1, 4, 1, 16, 1, sp, rng);
    check_scan<float>(1, 3, 3, 5, 40, sp, rng);
    check_scan<Half>(2, 6, 3, 16, 70, sp, rng);
    check_scan<Half>(1, 2, 2, 7, 9, sp, rng);
  }
  check_scan<float>(1, 8, 2, 16, 1000, true, rng);
  // Channel blocks in SIMD lanes: Ch / G not a multiple of the lane count (partial blocks), several
  // blocks per group, whole 64-step chunks (transposed straight from the tensors) and chunk tails,
  // N != 16 (states in memory) with partial blocks, float16 I/O with partial blocks.
  for (bool sp : {true, false}) {
    check_scan<float>(1, 3 * 37, 3, 16, 150, sp, rng);
    check_scan<float>(2, 48, 3, 16, 200, sp, rng);
    check_scan<float>(1, 20, 1, 16, 64, sp, rng);
    check_scan<float>(1, 17, 1, 16, 1, sp, rng);
    check_scan<float>(1, 40, 2, 7, 130, sp, rng);
    check_scan<float>(1, 34, 1, 32, 70, sp, rng);
    check_scan<Half>(2, 40, 2, 16, 130, sp, rng);
    check_scan<Half>(1, 18, 1, 3, 65, sp, rng);
  }
  // Groups scanning backwards: whole chunks and a tail, partial blocks, L = 1, N != 16, float16, and
  // a reversed block followed by a forward one in the same task (prefetch of the next block).
  for (bool sp : {true, false}) {
    check_scan<float>(2, 48, 3, 16, 200, sp, rng, 0b010);
    check_scan<float>(1, 3 * 37, 3, 16, 150, sp, rng, 0b101);
    check_scan<float>(1, 17, 1, 16, 1, sp, rng, 0b1);
    check_scan<float>(1, 40, 2, 7, 130, sp, rng, 0b11);
    check_scan<Half>(2, 40, 2, 16, 130, sp, rng, 0b10);
  }
  check_scan_reverse_is_flip(96, 3, 16, 3136, 0b010, rng);
  check_scan_reverse_is_flip(3 * 37, 3, 16, 150, 0b101, rng);
  check_scan_reverse_is_flip(40, 2, 7, 65, 0b11, rng);
  check_scan_lane_isolation(rng);
  check_scan_clamped_path(16, rng);
  check_scan_clamped_path(7, rng);
  for (bool ties : {false, true}) {
    check_sort(3, 17, ties, rng);
    check_sort(2, 1, ties, rng);
    check_sort(2, 2, ties, rng);
    check_sort(2, 1025, ties, rng);
    check_sort(1, 4097, ties, rng);
  }
  check_gather(2, 3, 5, 7, 7, 7, rng);
  check_gather(1, 2, 2, 2, 3, 5, rng);
  check_gather(1, 4, 14, 9, 7, 7, rng);
  check_gather(2, 5, 4, 4, 7, 7, rng);     // exactly one 16-pixel block
  check_gather(3, 37, 9, 11, 7, 7, rng);   // 6 full blocks + a 3-pixel tail, channel blocks across batches
  check_gather(1, 6, 3, 50, 20, 2, rng);   // wide rows, large table
  check_gather(2, 9, 13, 21, 7, 7, rng, 0.3f);  // saturated offsets: samples on the next row / column
  check_gather(1, 3, 2, 2, 7, 7, rng, 1.0f);
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all CPU kernel tests passed\n");
  return 0;
}
