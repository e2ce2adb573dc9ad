// scan_floor: how fast can the S6 recurrence itself run on this CPU?
//
// The SelectiveScan kernel (plugins/selective_scan/cpu_kernel.cpp) is compared with the memory floor
// (bytes moved / copy bandwidth). This program times the recurrence alone, with everything else
// stripped (no softplus prepass, no transposes: dt, dt*u, u are given in the kernel's lane layout, 16
// channels per AVX-512 vector, B and C as per-step scalars), at DefMamba-S stage 1 (Ch 288, L 3136,
// N 16, G 3) on two threads, in three variants:
//   kernel_exp  the kernel's exp: 16-entry 2^(j/16) table, degree-3 polynomial, vscalefps (<= 2 ulp)
//   coef_exp    the cheapest float32 exp found: three 32-entry tables (T, T*c1, T*c2), degree 2
//   no_exp      fixed decay factors, no exp at all: the state update and the output only
// and measures each exp's accuracy against exp2 in double. Output: one JSON object on stdout.
// Build with the plugin library's floating-point flags (benchmarks/scan_floor.py does):
//   g++ -O3 -std=c++17 -fno-math-errno -fno-trapping-math -ffp-contract=fast -pthread scan_floor.cpp
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "../../plugins/common/defmamba_math.h"

namespace dm = defmamba::math;

namespace {

constexpr int kW = 16;   // lanes = channels
constexpr int kNS = 16;  // d_state
constexpr float kMagic32 = 393216.0f;  // 1.5 * 2^18: x + magic rounds x to a multiple of 1/32

enum Variant { kKernelExp = 0, kCoefExp = 1, kNoExp = 2 };
const char* const kNames[] = {"kernel_exp", "coef_exp", "no_exp"};

struct Tables {
  float t16[16];
  float coef[3][32];  // 2^(j/32) * c_k, k = 0, 1, 2
};

// Least-squares fit of 2^r by c0 + c1 r + c2 r^2 on [-1/64, 1/64] (relative error, Chebyshev nodes):
// within a few per cent of the minimax polynomial, enough to show what degree 2 reaches.
void fit_coefficients(double c[3]) {
  double m[3][4] = {};
  const int nodes = 2000;
  for (int i = 0; i < nodes; ++i) {
    const double r = std::cos(M_PI * (i + 0.5) / nodes) / 64.0, f = std::exp2(r), w = 1.0 / (f * f);
    const double p[3] = {1.0, r, r * r};
    for (int a = 0; a < 3; ++a) {
      for (int b = 0; b < 3; ++b) m[a][b] += w * p[a] * p[b];
      m[a][3] += w * p[a] * f;
    }
  }
  for (int a = 0; a < 3; ++a)  // Gauss-Jordan, the system is well conditioned after scaling
    for (int b = 0; b < 3; ++b)
      if (b != a) {
        const double k = m[b][a] / m[a][a];
        for (int j = 0; j < 4; ++j) m[b][j] -= k * m[a][j];
      }
  for (int a = 0; a < 3; ++a) c[a] = m[a][3] / m[a][a];
}

Tables make_tables() {
  Tables t;
  std::memcpy(t.t16, dm::kExp2Table16, sizeof(t.t16));
  double c[3];
  fit_coefficients(c);
  for (int j = 0; j < 32; ++j)
    for (int k = 0; k < 3; ++k) t.coef[k][j] = static_cast<float>(std::exp2(j / 32.0) * c[k]);
  return t;
}

#define DM_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,fma")))
// (the masked forms with a full mask avoid GCC 12's -Wmaybe-uninitialized on _mm512_undefined_ps)
constexpr __mmask16 kAll = 0xffff;

DM_AVX512 inline __m512 exp_kernel(__m512 x, __m512 tab) {
  const __m512 magic = _mm512_set1_ps(dm::kExp2Magic);
  const __m512 t = _mm512_add_ps(x, magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  const __m512 r = _mm512_sub_ps(x, n);
  const __m512 T = _mm512_maskz_permutexvar_ps(kAll, _mm512_castps_si512(t), tab);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(dm::kExp2C3), r, _mm512_set1_ps(dm::kExp2C2));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(dm::kExp2C1));
  q = _mm512_mul_ps(q, r);
  return _mm512_maskz_scalef_ps(kAll, _mm512_fmadd_ps(T, q, T), n);
}

struct CoefRegs {
  __m512 lo[3], hi[3];
};

DM_AVX512 inline __m512 exp_coef(__m512 x, const CoefRegs& c) {
  const __m512 magic = _mm512_set1_ps(kMagic32);
  const __m512 t = _mm512_add_ps(x, magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  const __m512 r = _mm512_sub_ps(x, n);
  const __m512i j = _mm512_castps_si512(t);  // low 5 bits: the table index
  const __m512 c0 = _mm512_permutex2var_ps(c.lo[0], j, c.hi[0]);
  const __m512 c1 = _mm512_permutex2var_ps(c.lo[1], j, c.hi[1]);
  const __m512 c2 = _mm512_permutex2var_ps(c.lo[2], j, c.hi[2]);
  return _mm512_maskz_scalef_ps(kAll, _mm512_fmadd_ps(_mm512_fmadd_ps(c2, r, c1), r, c0), n);
}

DM_AVX512 CoefRegs coef_regs(const Tables& tb) {
  CoefRegs c;
  for (int k = 0; k < 3; ++k) {
    c.lo[k] = _mm512_loadu_ps(tb.coef[k]);
    c.hi[k] = _mm512_loadu_ps(tb.coef[k] + 16);
  }
  return c;
}

// One block of 16 channels over all steps. a: (N, W) A*log2(e) (or decay factors for no_exp).
template <int V>
DM_AVX512 __attribute__((noinline)) void scan_block(const float* dt, const float* du, const float* u, const float* b,
                                                    const float* c, const float* a, const float* dsk, float* y, int len,
                                                    const Tables& tb) {
  const __m512 tab = _mm512_loadu_ps(tb.t16);
  const CoefRegs cr = coef_regs(tb);
  __m512 h[kNS];
  for (int n = 0; n < kNS; ++n) h[n] = _mm512_setzero_ps();
  const __m512 dv = _mm512_loadu_ps(dsk);
  for (int t = 0; t < len; ++t) {
    const __m512 d = _mm512_loadu_ps(dt + t * kW), du_t = _mm512_loadu_ps(du + t * kW);
    const float* bt = b + t * kNS;
    const float* ct = c + t * kNS;
    __m512 acc[4];
#pragma GCC unroll 16
    for (int n = 0; n < kNS; ++n) {
      const __m512 an = _mm512_loadu_ps(a + n * kW);
      __m512 e;
      if constexpr (V != kNoExp) {
        __m512 x = _mm512_mul_ps(d, an);
        asm("" : "+v"(x));  // as in the kernel: dt * a stays a multiply (not contracted into x + magic)
        e = V == kKernelExp ? exp_kernel(x, tab) : exp_coef(x, cr);
      } else {
        e = an;
      }
      h[n] = _mm512_fmadd_ps(e, h[n], _mm512_mul_ps(du_t, _mm512_set1_ps(bt[n])));
      acc[n % 4] = n < 4 ? _mm512_mul_ps(_mm512_set1_ps(ct[n]), h[n])
                         : _mm512_fmadd_ps(_mm512_set1_ps(ct[n]), h[n], acc[n % 4]);
    }
    const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_storeu_ps(y + t * kW, _mm512_fmadd_ps(dv, _mm512_loadu_ps(u + t * kW), s));
  }
}

struct Problem {
  int blocks, len, groups;
  std::vector<float> dt, du, u, y, b, c, a, decay, dsk;
};

Problem make_problem(int ch, int len, int groups, unsigned seed) {
  Problem p{ch / kW, len, groups, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> dtd(0.001f, 0.5f), ad(1.0f, 16.0f), dec(0.5f, 0.999f);
  const size_t act = static_cast<size_t>(ch) * len;
  p.dt.resize(act), p.du.resize(act), p.u.resize(act), p.y.resize(act);
  for (size_t i = 0; i < act; ++i) {
    p.dt[i] = dtd(rng);
    p.u[i] = nd(rng);
    p.du[i] = p.dt[i] * p.u[i];
  }
  p.b.resize(static_cast<size_t>(groups) * len * kNS), p.c.resize(p.b.size());
  for (size_t i = 0; i < p.b.size(); ++i) p.b[i] = nd(rng), p.c[i] = nd(rng);
  p.a.resize(static_cast<size_t>(p.blocks) * kNS * kW), p.decay.resize(p.a.size());
  for (size_t i = 0; i < p.a.size(); ++i) p.a[i] = -ad(rng) * 1.44269504f, p.decay[i] = dec(rng);
  p.dsk.resize(static_cast<size_t>(p.blocks) * kW, 1.0f);
  return p;
}

template <int V>
void run_blocks(Problem& p, const Tables& tb, int first, int last) {
  const size_t per_block = static_cast<size_t>(p.len) * kW;
  const int blocks_per_group = p.blocks / p.groups;
  for (int k = first; k < last; ++k) {
    const int g = k / blocks_per_group;
    const float* a = (V == kNoExp ? p.decay.data() : p.a.data()) + static_cast<size_t>(k) * kNS * kW;
    scan_block<V>(p.dt.data() + k * per_block, p.du.data() + k * per_block, p.u.data() + k * per_block,
                  p.b.data() + static_cast<size_t>(g) * p.len * kNS, p.c.data() + static_cast<size_t>(g) * p.len * kNS,
                  a, p.dsk.data() + k * kW, p.y.data() + k * per_block, p.len, tb);
  }
}

template <int V>
double time_once(Problem& p, const Tables& tb, int threads) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    const int first = p.blocks * i / threads, last = p.blocks * (i + 1) / threads;
    pool.emplace_back([&p, &tb, first, last] { run_blocks<V>(p, tb, first, last); });
  }
  for (auto& th : pool) th.join();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Max error in float ulps of one exp variant against exp2 in double, over x in [lo, 0]. same_as_kernel:
// for kernel_exp, whether every value equals the kernel's scalar reference dm::exp2_table_f32 bit for bit
// (so that the timed loop is the kernel's exp, not a look-alike).
template <int V>
DM_AVX512 double max_ulp(const Tables& tb, float lo, bool* same_as_kernel) {
  const __m512 tab = _mm512_loadu_ps(tb.t16);
  const CoefRegs cr = coef_regs(tb);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> xd(lo, 0.0f);
  double worst = 0.0;
  float xs[kW], es[kW];
  for (int i = 0; i < (1 << 16); ++i) {
    for (int l = 0; l < kW; ++l) xs[l] = xd(rng);
    const __m512 x = _mm512_loadu_ps(xs);
    _mm512_storeu_ps(es, V == kKernelExp ? exp_kernel(x, tab) : exp_coef(x, cr));
    for (int l = 0; l < kW; ++l) {
      const double ref = std::exp2(static_cast<double>(xs[l]));
      const float rf = static_cast<float>(ref);
      const double ulp = std::nextafter(rf, INFINITY) - rf;
      worst = std::max(worst, std::fabs(es[l] - ref) / ulp);
      if (V == kKernelExp && dm::f32_to_bits(es[l]) != dm::f32_to_bits(dm::exp2_table_f32(xs[l]))) *same_as_kernel = false;
    }
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 15;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512dq")) {
    std::printf("{\"skipped\": \"this CPU has no AVX-512 (F and DQ); the measured kernel path is AVX-512\"}\n");
    return 0;
  }
  const int ch = 288, len = 3136, groups = 3;  // DefMamba-S stage 1 at 224^2
  Problem p = make_problem(ch, len, groups, 0);
  const Tables tb = make_tables();
  std::vector<double> t[3];
  for (int r = 0; r < 2; ++r) time_once<kKernelExp>(p, tb, threads), time_once<kCoefExp>(p, tb, threads), time_once<kNoExp>(p, tb, threads);
  for (int r = 0; r < reps; ++r) {  // interleaved: each repetition times every variant once
    t[0].push_back(time_once<kKernelExp>(p, tb, threads));
    t[1].push_back(time_once<kCoefExp>(p, tb, threads));
    t[2].push_back(time_once<kNoExp>(p, tb, threads));
  }
  const double updates = static_cast<double>(ch) * len * kNS;
  std::printf("{\"ch\": %d, \"L\": %d, \"N\": %d, \"G\": %d, \"threads\": %d, \"repetitions\": %d, \"variants\": {", ch, len, kNS,
              groups, threads, reps);
  for (int v = 0; v < 3; ++v) {
    std::sort(t[v].begin(), t[v].end());
    const double med = t[v][t[v].size() / 2];
    std::printf("%s\"%s\": {\"median_ms\": %.4f, \"min_ms\": %.4f, \"ns_per_update_per_core\": %.4f", v ? ", " : "", kNames[v], med,
                t[v].front(), med * 1e6 * threads / updates);
    bool same = true;
    if (v == kKernelExp) {
      const double ulp = max_ulp<kKernelExp>(tb, -40.0f, &same);
      std::printf(", \"max_ulp\": %.2f, \"same_as_kernel\": %s", ulp, same ? "true" : "false");
    }
    if (v == kCoefExp) std::printf(", \"max_ulp\": %.2f", max_ulp<kCoefExp>(tb, -40.0f, &same));
    std::printf("}");
  }
  std::printf("}}\n");
  return 0;
}
