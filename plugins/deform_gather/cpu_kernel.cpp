// DeformGather CPU kernel (see cpu_kernel.h and README.md).
//
// 1. Per (b, pixel), in parallel over rows: the two sample positions from the offsets, the four
//    taps (index, weight) into x, and the bias-table position (ty, tx). These do not depend on the
//    channel, so the transcendental work (tanh) is done once per pixel, not per channel.
// 2. The bias table is only ever sampled near the centre of the resized (H, W) table: with |tanh| <= 1
//    the position is ((H-1)/2 +- 1/2, (W-1)/2 +- 1/2). Instead of resizing the whole table, the rows
//    and columns actually touched (found from the min/max of ty, tx, so no assumption is baked in)
//    are resized: a window of at most a few pixels per channel.
// 3. Per (b, c) plane, in parallel: 4 taps into x plus 4 taps into the window per output pixel.
#include "cpu_kernel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace defmamba {
namespace {

namespace dm = math;

struct PixelTaps {
  int32_t xi[4];  // flat indices into an (H, W) plane of x
  float xw[4];
  int32_t ti[4];  // flat indices into the resized-table window of one channel
  float tw[4];
};

constexpr double kPlaneGrain = 1 << 16;  // output elements per task (about)
constexpr int64_t kChannelBlock = 4;     // channels sharing one pass over the per-pixel taps

}  // namespace

template <typename T>
void deform_gather_cpu(const DeformGatherShape& s, const T* x, const T* offset, const T* rpe_table, T* feat,
                       const Parallel& par) {
  const int64_t Bt = s.batch, Ch = s.channels, H = s.height, W = s.width, K = s.offset_channels;
  const int64_t Th = s.table_h, Tw = s.table_w, HW = H * W;
  if (Bt <= 0 || Ch <= 0 || H < 2 || W < 2 || Th <= 0 || Tw <= 0) return;

  // ---- 1. per-pixel geometry ------------------------------------------------------------------
  std::vector<PixelTaps> taps(static_cast<size_t>(Bt * HW));
  std::vector<float> tyx(static_cast<size_t>(Bt * HW * 2));
  // per-row min/max of ty and tx (NaN positions are skipped; they sample zeros)
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> row_range(static_cast<size_t>(Bt * H * 4));
  par.for_each(static_cast<size_t>(Bt * H), [&](size_t r) {
    const int64_t b = static_cast<int64_t>(r) / H, i = static_cast<int64_t>(r) % H;
    const T* off_y = offset + (b * K + 0) * HW + i * W;
    const T* off_x = offset + (b * K + 1) * HW + i * W;
    float ty_lo = inf, ty_hi = -inf, tx_lo = inf, tx_hi = -inf;
    for (int64_t j = 0; j < W; ++j) {
      const dm::DeformPoint p = dm::deform_point(i, j, H, W, dm::to_f32(off_y[j]), dm::to_f32(off_x[j]));
      const dm::BilinearTaps xt = dm::bilinear_taps_zero_pad(H, W, p.py, p.px);
      PixelTaps& pt = taps[static_cast<size_t>(b * HW + i * W + j)];
      for (int k = 0; k < 4; ++k) {
        pt.xi[k] = static_cast<int32_t>(xt.idx[k]);
        pt.xw[k] = xt.w[k];
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
  std::vector<float> window(static_cast<size_t>(std::max<int64_t>(Ch * wh * ww, 1)), 0.0f);
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
      PixelTaps& pt = taps[static_cast<size_t>(p)];
      for (int k = 0; k < 4; ++k) {
        const int64_t row = tt.idx[k] / W, col = tt.idx[k] % W;
        const bool inside = tt.w[k] != 0.0f && row >= r0 && row <= r1 && col >= c0 && col <= c1;
        pt.ti[k] = inside ? static_cast<int32_t>((row - r0) * ww + (col - c0)) : 0;
        pt.tw[k] = inside ? tt.w[k] : 0.0f;
      }
    }
  });

  // ---- 3. gather, per (b, c) plane; up to kChannelBlock planes of one batch share a pass over the
  //         per-pixel taps ------------------------------------------------------------------------------
  const size_t planes = static_cast<size_t>(Bt * Ch);
  const size_t n_tasks = task_count(planes, static_cast<double>(HW), kPlaneGrain);
  par.for_each(n_tasks, [&](size_t task) {
    size_t p_begin, p_end;
    split_range(planes, n_tasks, task, &p_begin, &p_end);
    for (size_t pl = p_begin; pl < p_end;) {
      const int64_t b = static_cast<int64_t>(pl) / Ch, c = static_cast<int64_t>(pl) % Ch;
      // channels c .. c+nc-1 of batch b (stay within the task and the batch)
      const int64_t nc = std::min<int64_t>({kChannelBlock, Ch - c, static_cast<int64_t>(p_end - pl)});
      const PixelTaps* tp = taps.data() + b * HW;
      const T* xp[kChannelBlock];
      const float* win[kChannelBlock];
      T* out[kChannelBlock];
      for (int64_t k = 0; k < kChannelBlock; ++k) {
        const int64_t kk = k < nc ? k : nc - 1;  // pad the block by repeating the last channel
        xp[k] = x + (static_cast<int64_t>(pl) + kk) * HW;
        win[k] = window.data() + (c + kk) * wh * ww;
        out[k] = feat + (static_cast<int64_t>(pl) + kk) * HW;
      }
      for (int64_t p = 0; p < HW; ++p) {
        const PixelTaps& t = tp[p];
        for (int64_t k = 0; k < nc; ++k) {
          const T* xk = xp[k];
          const float* wk = win[k];
          const float sampled = t.xw[0] * dm::to_f32(xk[t.xi[0]]) + t.xw[1] * dm::to_f32(xk[t.xi[1]]) +
                                t.xw[2] * dm::to_f32(xk[t.xi[2]]) + t.xw[3] * dm::to_f32(xk[t.xi[3]]);
          const float bias =
              t.tw[0] * wk[t.ti[0]] + t.tw[1] * wk[t.ti[1]] + t.tw[2] * wk[t.ti[2]] + t.tw[3] * wk[t.ti[3]];
          out[k][p] = dm::from_f32<T>(sampled + bias);
        }
      }
      pl += static_cast<size_t>(nc);
    }
  });
}

template void deform_gather_cpu<float>(const DeformGatherShape&, const float*, const float*, const float*, float*,
                                       const Parallel&);
template void deform_gather_cpu<Half>(const DeformGatherShape&, const Half*, const Half*, const Half*, Half*,
                                      const Parallel&);

}  // namespace defmamba
