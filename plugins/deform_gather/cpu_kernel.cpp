// DeformGather CPU kernel (see cpu_kernel.h and README.md).
//
// 1. Per (b, pixel), in parallel over rows: the two sample positions from the offsets, the four
//    taps (index, weight) into x, and the bias-table position (ty, tx). These do not depend on the
//    channel, so the transcendental work (tanh) is done once per pixel, not per channel.
// 2. The bias table is only ever sampled near the centre of the resized (H, W) table: with |tanh| <= 1
//    the position is ((H-1)/2 +- 1/2, (W-1)/2 +- 1/2). Instead of resizing the whole table, the rows
//    and columns actually touched (found from the min/max of ty, tx, so no assumption is baked in)
//    are resized: a window of at most a few pixels per channel.
// 3. Per (b, block of channels), in parallel: 4 taps into x plus 4 taps into the window per output
//    pixel. The per-pixel taps are stored as a structure of arrays; with AVX-512 (float32, picked at
//    run time unless the build targets it) 16 pixels go per vector, the taps of a pixel block stay in
//    registers across the block's channels, x is read with vector loads where a lane's taps are its
//    own 2 x 2 neighbourhood (nearly always) and gathered otherwise, and a channel's window (at most
//    3 x 3 in practice) sits in one register and is read with permutes. Same float32 operations in
//    the same order as the scalar path, no FMA: bitwise the scalar results (NaN payloads aside).
#include "cpu_kernel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__AVX512F__) || !defined(DEFMAMBA_NO_ISA_DISPATCH))
#include <immintrin.h>
#define DM_GATHER_AVX512 1
#endif

namespace defmamba {
namespace {

namespace dm = math;

// Per-pixel geometry of one batch, structure of arrays (so that the gather loop reads 16 pixels with
// one vector load per field): idx[k * HW + p] / w[k * HW + p] for k = 0..3 the taps into x (flat
// index into an (H, W) plane), k = 4..7 the taps into the resized-table window of one channel.
constexpr int64_t kFields = 8;

constexpr double kPlaneGrain = 1 << 14;  // output elements per task (about)
constexpr int64_t kChannelBlock = 4;     // channels sharing one pass over the per-pixel taps (scalar path)

// Scalar gather of channels [c_begin, c_end) of one batch (any T, any CPU).
template <typename T>
void gather_scalar(const T* x_b, T* out_b, const int32_t* gi, const float* gw, const float* window, int64_t wsize,
                   int64_t HW, int64_t c_begin, int64_t c_end) {
  for (int64_t c = c_begin; c < c_end;) {
    const int64_t nc = std::min<int64_t>(kChannelBlock, c_end - c);
    for (int64_t p = 0; p < HW; ++p) {
      const int32_t xi0 = gi[0 * HW + p], xi1 = gi[1 * HW + p], xi2 = gi[2 * HW + p], xi3 = gi[3 * HW + p];
      const int32_t ti0 = gi[4 * HW + p], ti1 = gi[5 * HW + p], ti2 = gi[6 * HW + p], ti3 = gi[7 * HW + p];
      const float xw0 = gw[0 * HW + p], xw1 = gw[1 * HW + p], xw2 = gw[2 * HW + p], xw3 = gw[3 * HW + p];
      const float tw0 = gw[4 * HW + p], tw1 = gw[5 * HW + p], tw2 = gw[6 * HW + p], tw3 = gw[7 * HW + p];
      for (int64_t k = 0; k < nc; ++k) {
        const T* xk = x_b + (c + k) * HW;
        const float* wk = window + (c + k) * wsize;
        const float sampled = xw0 * dm::to_f32(xk[xi0]) + xw1 * dm::to_f32(xk[xi1]) + xw2 * dm::to_f32(xk[xi2]) +
                              xw3 * dm::to_f32(xk[xi3]);
        const float bias = tw0 * wk[ti0] + tw1 * wk[ti1] + tw2 * wk[ti2] + tw3 * wk[ti3];
        out_b[(c + k) * HW + p] = dm::from_f32<T>(sampled + bias);
      }
    }
    c += nc;
  }
}

#if defined(DM_GATHER_AVX512)
// AVX-512 gather of channels [c_begin, c_end) of one batch, float32: 16 pixels per vector, the
// geometry of a pixel block held in registers across the channels. The taps into x are gathers; the
// bias window of a channel (wsize <= 16 floats) sits in one register and its taps are permutes
// (kWindowInReg), otherwise gathers too. The arithmetic is the scalar path's, element for element:
// ((w0*v0 + w1*v1) + w2*v2) + w3*v3 for both sums, then sampled + bias, each operation rounded on its
// own. The explicitly rounded intrinsics (round to nearest, as the default MXCSR mode) keep the
// compiler from contracting them into FMAs (-ffp-contract=fast), so the results are bitwise those of
// the scalar path as built for baseline x86-64 (no FMA).
#define DM_RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
template <bool kWindowInReg>
__attribute__((target("avx512f"))) void gather_avx512(const float* x_b, float* out_b, const int32_t* gi,
                                                      const float* gw, const float* window, int64_t wsize,
                                                      int64_t W, int64_t HW, int64_t c_begin, int64_t c_end) {
  const __mmask16 wmask = static_cast<__mmask16>(wsize >= 16 ? 0xffffu : (1u << wsize) - 1u);
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 all = 0xffff;  // the maskz_ forms avoid GCC 12's -Wmaybe-uninitialized in the plain ones
  const int64_t pf_ahead = W + 64;
  for (int64_t p = 0; p < HW; p += 16) {
    const int64_t n = HW - p < 16 ? HW - p : 16;
    const __mmask16 m = static_cast<__mmask16>(n == 16 ? 0xffffu : (1u << n) - 1u);
    const __m512i xi0 = _mm512_maskz_loadu_epi32(m, gi + 0 * HW + p), xi1 = _mm512_maskz_loadu_epi32(m, gi + 1 * HW + p);
    const __m512i xi2 = _mm512_maskz_loadu_epi32(m, gi + 2 * HW + p), xi3 = _mm512_maskz_loadu_epi32(m, gi + 3 * HW + p);
    const __m512i ti0 = _mm512_maskz_loadu_epi32(m, gi + 4 * HW + p), ti1 = _mm512_maskz_loadu_epi32(m, gi + 5 * HW + p);
    const __m512i ti2 = _mm512_maskz_loadu_epi32(m, gi + 6 * HW + p), ti3 = _mm512_maskz_loadu_epi32(m, gi + 7 * HW + p);
    const __m512 xw0 = _mm512_maskz_loadu_ps(m, gw + 0 * HW + p), xw1 = _mm512_maskz_loadu_ps(m, gw + 1 * HW + p);
    const __m512 xw2 = _mm512_maskz_loadu_ps(m, gw + 2 * HW + p), xw3 = _mm512_maskz_loadu_ps(m, gw + 3 * HW + p);
    const __m512 tw0 = _mm512_maskz_loadu_ps(m, gw + 4 * HW + p), tw1 = _mm512_maskz_loadu_ps(m, gw + 5 * HW + p);
    const __m512 tw2 = _mm512_maskz_loadu_ps(m, gw + 6 * HW + p), tw3 = _mm512_maskz_loadu_ps(m, gw + 7 * HW + p);
    // Tap k of a lane is usually the pixel's own 2 x 2 neighbourhood, flat index p + {0, 1, W, W+1}[k]
    // (every interior pixel: |0.5 tanh| <= 0.5 keeps the sample point in [i, i+1] x [j, j+1]); those
    // lanes read x with a plain (masked) vector load. A zero-padded tap (last row / column) has index 0:
    // those lanes take x[0] broadcast. Only the rest (a sample exactly on the next row / column) is
    // gathered. Every lane reads the address the gather of all lanes would read: the same values.
    const __m512i e0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(p)),
                                        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const int32_t tap_off[4] = {0, 1, static_cast<int32_t>(W), static_cast<int32_t>(W) + 1};
    const __m512i xi[4] = {xi0, xi1, xi2, xi3};
    __mmask16 reg[4], pad[4], oth[4];
    bool any_pad = false, any_oth = false;
    for (int k = 0; k < 4; ++k) {
      reg[k] = static_cast<__mmask16>(m & _mm512_cmpeq_epi32_mask(xi[k], _mm512_add_epi32(e0, _mm512_set1_epi32(tap_off[k]))));
      pad[k] = static_cast<__mmask16>(m & ~reg[k] & _mm512_cmpeq_epi32_mask(xi[k], _mm512_setzero_si512()));
      oth[k] = static_cast<__mmask16>(m & ~reg[k] & ~pad[k]);
      any_pad = any_pad || pad[k] != 0;
      any_oth = any_oth || oth[k] != 0;
    }
    for (int64_t c = c_begin; c < c_end; ++c) {
      const float* xc = x_b + c * HW;
      const float* wc = window + c * wsize;
      // the taps of this block lie in rows i-1 .. i+2 around the block: fetch the lower row ahead
      _mm_prefetch(reinterpret_cast<const char*>(xc + p + pf_ahead), _MM_HINT_T0);
      __m512 v[4];
      for (int k = 0; k < 4; ++k) v[k] = _mm512_maskz_loadu_ps(reg[k], xc + p + tap_off[k]);
      if (any_pad) {
        const __m512 x0 = _mm512_set1_ps(xc[0]);
        for (int k = 0; k < 4; ++k) v[k] = _mm512_mask_mov_ps(v[k], pad[k], x0);
      }
      if (any_oth) {
        for (int k = 0; k < 4; ++k)
          if (oth[k] != 0) v[k] = _mm512_mask_i32gather_ps(v[k], oth[k], xi[k], xc, 4);
      }
      const __m512 v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
      __m512 u0, u1, u2, u3;
      if (kWindowInReg) {
        const __m512 win = _mm512_maskz_loadu_ps(wmask, wc);
        u0 = _mm512_maskz_permutexvar_ps(all, ti0, win);
        u1 = _mm512_maskz_permutexvar_ps(all, ti1, win);
        u2 = _mm512_maskz_permutexvar_ps(all, ti2, win);
        u3 = _mm512_maskz_permutexvar_ps(all, ti3, win);
      } else {
        u0 = _mm512_mask_i32gather_ps(zero, m, ti0, wc, 4);
        u1 = _mm512_mask_i32gather_ps(zero, m, ti1, wc, 4);
        u2 = _mm512_mask_i32gather_ps(zero, m, ti2, wc, 4);
        u3 = _mm512_mask_i32gather_ps(zero, m, ti3, wc, 4);
      }
      __m512 s = _mm512_maskz_mul_round_ps(all, xw0, v0, DM_RN);
      s = _mm512_maskz_add_round_ps(all, s, _mm512_maskz_mul_round_ps(all, xw1, v1, DM_RN), DM_RN);
      s = _mm512_maskz_add_round_ps(all, s, _mm512_maskz_mul_round_ps(all, xw2, v2, DM_RN), DM_RN);
      s = _mm512_maskz_add_round_ps(all, s, _mm512_maskz_mul_round_ps(all, xw3, v3, DM_RN), DM_RN);
      __m512 t = _mm512_maskz_mul_round_ps(all, tw0, u0, DM_RN);
      t = _mm512_maskz_add_round_ps(all, t, _mm512_maskz_mul_round_ps(all, tw1, u1, DM_RN), DM_RN);
      t = _mm512_maskz_add_round_ps(all, t, _mm512_maskz_mul_round_ps(all, tw2, u2, DM_RN), DM_RN);
      t = _mm512_maskz_add_round_ps(all, t, _mm512_maskz_mul_round_ps(all, tw3, u3, DM_RN), DM_RN);
      _mm512_mask_storeu_ps(out_b + c * HW + p, m, _mm512_maskz_add_round_ps(all, s, t, DM_RN));
    }
  }
}
#undef DM_RN

bool have_avx512() {
#if defined(__AVX512F__)
  return true;
#else
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
#endif
}
#endif

template <typename T>
void gather_channels(const T* x_b, T* out_b, const int32_t* gi, const float* gw, const float* window, int64_t wsize,
                     int64_t W, int64_t HW, int64_t c_begin, int64_t c_end) {
#if defined(DM_GATHER_AVX512)
  if constexpr (std::is_same<T, float>::value) {
    if (have_avx512()) {
      if (wsize <= 16)
        gather_avx512<true>(x_b, out_b, gi, gw, window, wsize, W, HW, c_begin, c_end);
      else
        gather_avx512<false>(x_b, out_b, gi, gw, window, wsize, W, HW, c_begin, c_end);
      return;
    }
  }
#endif
  gather_scalar(x_b, out_b, gi, gw, window, wsize, HW, c_begin, c_end);
}

}  // namespace
template <typename T>
void deform_gather_cpu(const DeformGatherShape& s, const T* x, const T* offset, const T* rpe_table, T* feat,
                       const Parallel& par, const Scratch& scratch) {
  const int64_t Bt = s.batch, Ch = s.channels, H = s.height, W = s.width, K = s.offset_channels;
  const int64_t Th = s.table_h, Tw = s.table_w, HW = H * W;
  if (Bt <= 0 || Ch <= 0 || H < 2 || W < 2 || Th <= 0 || Tw <= 0) return;

  // ---- 1. per-pixel geometry ------------------------------------------------------------------
  ScratchArray<int32_t> geo_i(scratch, static_cast<size_t>(Bt * kFields * HW));
  ScratchArray<float> geo_w(scratch, static_cast<size_t>(Bt * kFields * HW));
  ScratchArray<float> tyx(scratch, static_cast<size_t>(Bt * HW * 2));
  // per-row min/max of ty and tx (NaN positions are skipped; they sample zeros)
  const float inf = std::numeric_limits<float>::infinity();
  ScratchArray<float> row_range(scratch, static_cast<size_t>(Bt * H * 4));
  par.for_each(static_cast<size_t>(Bt * H), [&](size_t r) {
    const int64_t b = static_cast<int64_t>(r) / H, i = static_cast<int64_t>(r) % H;
    const T* off_y = offset + (b * K + 0) * HW + i * W;
    const T* off_x = offset + (b * K + 1) * HW + i * W;
    float ty_lo = inf, ty_hi = -inf, tx_lo = inf, tx_hi = -inf;
    for (int64_t j = 0; j < W; ++j) {
      const dm::DeformPoint p = dm::deform_point(i, j, H, W, dm::to_f32(off_y[j]), dm::to_f32(off_x[j]));
      const dm::BilinearTaps xt = dm::bilinear_taps_zero_pad(H, W, p.py, p.px);
      int32_t* gi = geo_i.data() + b * kFields * HW + i * W + j;
      float* gw = geo_w.data() + b * kFields * HW + i * W + j;
      for (int k = 0; k < 4; ++k) {
        gi[k * HW] = static_cast<int32_t>(xt.idx[k]);
        gw[k * HW] = xt.w[k];
      }
      float* q = &tyx[static_cast<size_t>((b * HW + i * W + j) * 2)];
      q[0] = p.ty;
      q[1] = p.tx;
      if (p.ty == p.ty && p.tx == p.tx) {
        ty_lo = std::min(ty_lo, p.ty);
        ty_hi = std::max(ty_hi, p.ty);
        tx_lo = std::min(tx_lo, p.tx);
        tx_hi = std::max(tx_hi, p.tx);
      }
    }
    float* rr = &row_range[r * 4];
    rr[0] = ty_lo;
    rr[1] = ty_hi;
    rr[2] = tx_lo;
    rr[3] = tx_hi;
  });
  float ty_lo = inf, ty_hi = -inf, tx_lo = inf, tx_hi = -inf;
  for (size_t r = 0; r < static_cast<size_t>(Bt * H); ++r) {
    ty_lo = std::min(ty_lo, row_range[r * 4 + 0]);
    ty_hi = std::max(ty_hi, row_range[r * 4 + 1]);
    tx_lo = std::min(tx_lo, row_range[r * 4 + 2]);
    tx_hi = std::max(tx_hi, row_range[r * 4 + 3]);
  }

  // ---- 2. window of the resized table that the taps touch -----------------------------------
  // rows floor(ty_lo) .. floor(ty_hi) + 1, clipped to the table (zero padding outside)
  auto clip = [](float v, int64_t hi) -> int64_t {
    v = std::floor(v);
    return v < 0.0f ? 0 : (v > static_cast<float>(hi) ? hi : static_cast<int64_t>(v));
  };
  const bool any = ty_lo <= ty_hi;
  const int64_t r0 = any ? clip(ty_lo, H - 1) : 0, r1 = any ? clip(ty_hi + 1.0f, H - 1) : -1;
  const int64_t c0 = any ? clip(tx_lo, W - 1) : 0, c1 = any ? clip(tx_hi + 1.0f, W - 1) : -1;
  const int64_t wh = r1 - r0 + 1 > 0 ? r1 - r0 + 1 : 0, ww = c1 - c0 + 1 > 0 ? c1 - c0 + 1 : 0;
  ScratchArray<float> window(scratch, static_cast<size_t>(std::max<int64_t>(Ch * wh * ww, 1)), /*zero=*/true);
  for (int64_t c = 0; c < Ch; ++c) {
    const T* tab = rpe_table + c * Th * Tw;
    for (int64_t r = 0; r < wh; ++r) {
      const dm::ResizeTap ry = dm::resize_source_index(r0 + r, Th, H);
      for (int64_t q = 0; q < ww; ++q) {
        const dm::ResizeTap rx = dm::resize_source_index(c0 + q, Tw, W);
        const float v00 = dm::to_f32(tab[ry.i0 * Tw + rx.i0]), v01 = dm::to_f32(tab[ry.i0 * Tw + rx.i1]);
        const float v10 = dm::to_f32(tab[ry.i1 * Tw + rx.i0]), v11 = dm::to_f32(tab[ry.i1 * Tw + rx.i1]);
        const float ly1 = ry.lambda, ly0 = 1.0f - ly1, lx1 = rx.lambda, lx0 = 1.0f - lx1;
        window[static_cast<size_t>((c * wh + r) * ww + q)] = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11);
      }
    }
  }
  // table taps in window coordinates (every tap with a non-zero weight lies inside the window)
  par.for_each(static_cast<size_t>(Bt * H), [&](size_t r) {
    const int64_t first = static_cast<int64_t>(r) * W;
    for (int64_t p = first; p < first + W; ++p) {
      const float* q = &tyx[static_cast<size_t>(p * 2)];
      const dm::BilinearTaps tt = dm::bilinear_taps_zero_pad(H, W, q[0], q[1]);
      const int64_t b = p / HW, pix = p % HW;
      int32_t* gi = geo_i.data() + (b * kFields + 4) * HW + pix;
      float* gw = geo_w.data() + (b * kFields + 4) * HW + pix;
      for (int k = 0; k < 4; ++k) {
        const int64_t row = tt.idx[k] / W, col = tt.idx[k] % W;
        const bool inside = tt.w[k] != 0.0f && row >= r0 && row <= r1 && col >= c0 && col <= c1;
        gi[k * HW] = inside ? static_cast<int32_t>((row - r0) * ww + (col - c0)) : 0;
        gw[k * HW] = inside ? tt.w[k] : 0.0f;
      }
    }
  });

  // ---- 3. gather, per (b, block of channels): all pixels of the block's planes, the per-pixel taps
  //         shared by the channels of the block ---------------------------------------------------
  const int64_t wsize = wh * ww;
  const size_t planes = static_cast<size_t>(Bt * Ch);
  const size_t n_tasks = task_count(planes, static_cast<double>(HW), kPlaneGrain);
  par.for_each(n_tasks, [&](size_t task) {
    size_t p_begin, p_end;
    split_range(planes, n_tasks, task, &p_begin, &p_end);
    for (size_t pl = p_begin; pl < p_end;) {
      const int64_t b = static_cast<int64_t>(pl) / Ch, c = static_cast<int64_t>(pl) % Ch;
      const int64_t c_end = std::min<int64_t>(Ch, c + static_cast<int64_t>(p_end - pl));  // within the batch
      gather_channels<T>(x + b * Ch * HW, feat + b * Ch * HW, geo_i.data() + b * kFields * HW,
                         geo_w.data() + b * kFields * HW, window.data(), wsize, W, HW, c, c_end);
      pl += static_cast<size_t>(c_end - c);
    }
  });
}

template void deform_gather_cpu<float>(const DeformGatherShape&, const float*, const float*, const float*, float*,
                                       const Parallel&, const Scratch&);
template void deform_gather_cpu<Half>(const DeformGatherShape&, const Half*, const Half*, const Half*, Half*,
                                      const Parallel&, const Scratch&);

}  // namespace defmamba
