// DeformGather CUDA kernel (launcher declared in kernel.h; contract in README.md).
//
// Parallel structure: one thread per (b, pixel, block of kChannelBlock channels), pixels fastest
// within a block of 128 threads, so that the per-channel loads of x (the four taps of neighbouring
// pixels) and the stores of feat are coalesced. Per thread, once for its pixel: the two offsets, the
// sample point and the bias-table point (math::deform_point: the only transcendental work, tanh),
// the four taps into x (math::bilinear_taps_zero_pad) and, for each of the four taps into the resized
// bias table, its two source rows/columns and weights (math::resize_source_index). Then per channel:
// 4 weighted loads of x and 4 x 4 weighted loads of the (small, cache-resident) rpe_table, which
// evaluates the bias exactly like the CPU kernel (resized value first, then the tap sum) without
// materialising the resized table. No shared memory, no workspace, one launch.
#include "deform_gather/kernel.h"

#include "cuda_utils.cuh"

namespace defmamba {
namespace {

namespace dm = math;

constexpr int kPixelsPerBlock = 128;
constexpr int kChannelBlock = 8;  // channels per thread (amortises the per-pixel geometry)

struct GatherParams {
  const void* x;
  const void* offset;
  const void* table;
  void* feat;
  int64_t channels, height, width, offset_channels, table_h, table_w;
  int64_t pixel_tiles, channel_blocks;
};

template <typename T>
__global__ void __launch_bounds__(kPixelsPerBlock) deform_gather_kernel(const GatherParams p) {
  const int64_t H = p.height, W = p.width, HW = H * W, Ch = p.channels, Th = p.table_h, Tw = p.table_w;
  int64_t blk = blockIdx.x;
  const int64_t tile = blk % p.pixel_tiles;
  blk /= p.pixel_tiles;
  const int64_t cb = blk % p.channel_blocks;
  const int64_t b = blk / p.channel_blocks;
  const int64_t pix = tile * kPixelsPerBlock + threadIdx.x;
  if (pix >= HW) return;
  const int64_t i = pix / W, j = pix % W;

  const T* off = static_cast<const T*>(p.offset) + b * p.offset_channels * HW;
  const dm::DeformPoint pt = dm::deform_point(i, j, H, W, cuda::load_f32(off[pix]), cuda::load_f32(off[HW + pix]));
  const dm::BilinearTaps xt = dm::bilinear_taps_zero_pad(H, W, pt.py, pt.px);
  const dm::BilinearTaps tt = dm::bilinear_taps_zero_pad(H, W, pt.ty, pt.tx);
  // per table tap k: the resized value is ly0*(lx0*v[r0,c0] + lx1*v[r0,c1]) + ly1*(lx0*v[r1,c0] + lx1*v[r1,c1])
  int32_t ti[4][4];
  float ly1[4], lx1[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t r = tt.idx[k] / W, q = tt.idx[k] % W;
    const dm::ResizeTap ry = dm::resize_source_index(r, Th, H);
    const dm::ResizeTap rx = dm::resize_source_index(q, Tw, W);
    ti[k][0] = static_cast<int32_t>(ry.i0 * Tw + rx.i0);
    ti[k][1] = static_cast<int32_t>(ry.i0 * Tw + rx.i1);
    ti[k][2] = static_cast<int32_t>(ry.i1 * Tw + rx.i0);
    ti[k][3] = static_cast<int32_t>(ry.i1 * Tw + rx.i1);
    ly1[k] = ry.lambda;
    lx1[k] = rx.lambda;
  }

  const int64_t c_begin = cb * kChannelBlock;
  const int64_t c_end = c_begin + kChannelBlock < Ch ? c_begin + kChannelBlock : Ch;
  const T* xb = static_cast<const T*>(p.x) + b * Ch * HW;
  T* fb = static_cast<T*>(p.feat) + b * Ch * HW;
  const T* tab_base = static_cast<const T*>(p.table);
  for (int64_t c = c_begin; c < c_end; ++c) {
    const T* xp = xb + c * HW;
    const T* tab = tab_base + c * Th * Tw;
    const float sampled = xt.w[0] * cuda::load_f32(xp[xt.idx[0]]) + xt.w[1] * cuda::load_f32(xp[xt.idx[1]]) +
                          xt.w[2] * cuda::load_f32(xp[xt.idx[2]]) + xt.w[3] * cuda::load_f32(xp[xt.idx[3]]);
    float win[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float v00 = cuda::load_f32(tab[ti[k][0]]), v01 = cuda::load_f32(tab[ti[k][1]]);
      const float v10 = cuda::load_f32(tab[ti[k][2]]), v11 = cuda::load_f32(tab[ti[k][3]]);
      const float y1 = ly1[k], y0 = 1.0f - y1, x1 = lx1[k], x0 = 1.0f - x1;
      win[k] = y0 * (x0 * v00 + x1 * v01) + y1 * (x0 * v10 + x1 * v11);
    }
    const float bias = tt.w[0] * win[0] + tt.w[1] * win[1] + tt.w[2] * win[2] + tt.w[3] * win[3];
    fb[c * HW + pix] = cuda::store_as<T>(sampled + bias);
  }
}

}  // namespace

template <typename T>
cudaError_t launchDeformGather(const T* x, const T* offset, const T* rpe_table, T* feat, int64_t batch,
                               int64_t channels, int64_t height, int64_t width, int64_t offset_channels,
                               int64_t table_h, int64_t table_w, cudaStream_t stream) {
  if (batch < 0 || channels < 0) return cudaErrorInvalidValue;
  if (height < 2 || width < 2 || offset_channels < 2 || table_h < 1 || table_w < 1) return cudaErrorInvalidValue;
  if (height * width > 2147483647 || table_h * table_w > 2147483647) return cudaErrorInvalidValue;
  if (batch == 0 || channels == 0) return cudaSuccess;
  if (x == nullptr || offset == nullptr || rpe_table == nullptr || feat == nullptr) return cudaErrorInvalidValue;
  GatherParams p;
  p.x = x;
  p.offset = offset;
  p.table = rpe_table;
  p.feat = feat;
  p.channels = channels;
  p.height = height;
  p.width = width;
  p.offset_channels = offset_channels;
  p.table_h = table_h;
  p.table_w = table_w;
  p.pixel_tiles = cuda::ceil_div(height * width, kPixelsPerBlock);
  p.channel_blocks = cuda::ceil_div(channels, kChannelBlock);
  const int64_t blocks = p.pixel_tiles * p.channel_blocks * batch;
  if (blocks > cuda::kMaxGridX || blocks / batch / p.channel_blocks != p.pixel_tiles) return cudaErrorInvalidConfiguration;
  deform_gather_kernel<T><<<static_cast<unsigned>(blocks), kPixelsPerBlock, 0, stream>>>(p);
  return cuda::launch_status();
}

template cudaError_t launchDeformGather<float>(const float*, const float*, const float*, float*, int64_t, int64_t,
                                               int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t launchDeformGather<__half>(const __half*, const __half*, const __half*, __half*, int64_t, int64_t,
                                                int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);

}  // namespace defmamba
