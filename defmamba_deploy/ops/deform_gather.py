"""Deformable gather: features of x sampled at learned points, plus a bias from a position table.

Contract (``defmamba::DeformGather``)::

    x         : (Bt, Ch, H, W)   the activation, H >= 2 and W >= 2
    offset    : (Bt, K, H, W)    K >= 2; channel 0 = dy, channel 1 = dx (raw, before tanh); others ignored
    rpe_table : (Ch, Th, Tw)     the relative-position bias table (7 x 7 in DefMamba)
    returns feat : (Bt, Ch, H, W), x's dtype (computed in float32, or float64 for float64 input)

Points, in normalised coordinates (-1 .. 1, align_corners=True)::

    ry[i] = (i + 0.5) / (H - 1) * 2 - 1        (half a pixel past the pixel centre, as the authors do)
    pos_y = ry[i] + tanh(offset[b, 0, i, j]) / (H - 1)      likewise pos_x with j, W and channel 1
    sampled = bilinear(x[b, c], pos), zero padding, align_corners=True

Bias: the table is resized to (H, W) (bilinear, align_corners=False), then sampled (bilinear,
align_corners=True, zero padding) at ``disp = (key - pos) * 0.5`` where
``key_y[i] = linspace(0, H, H)[i] / (H - 1) * 2 - 1`` (likewise key_x). ``feat = sampled + bias``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_points(h: int, w: int, dtype: torch.dtype, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised reference rows (H,) and columns (W,): (i + 0.5) / (S - 1) * 2 - 1."""
    ry = torch.linspace(0.5, h - 0.5, h, dtype=dtype, device=device).div(h - 1.0).mul(2.0).sub(1.0)
    rx = torch.linspace(0.5, w - 0.5, w, dtype=dtype, device=device).div(w - 1.0).mul(2.0).sub(1.0)
    return ry, rx


def key_points(h: int, w: int, dtype: torch.dtype, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised key rows (H,) and columns (W,): linspace(0, S, S) / (S - 1) * 2 - 1."""
    ky = torch.linspace(0, h, h, dtype=dtype, device=device).div(h - 1.0).mul(2.0).sub(1.0)
    kx = torch.linspace(0, w, w, dtype=dtype, device=device).div(w - 1.0).mul(2.0).sub(1.0)
    return ky, kx


def deform_gather(x: torch.Tensor, offset: torch.Tensor, rpe_table: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at the offset points and add the interpolated position bias (see module doc)."""
    if x.dim() != 4:
        raise ValueError(f"deform_gather: x must be (Bt, Ch, H, W), got {tuple(x.shape)}")
    bt, ch, h, w = x.shape
    if offset.dim() != 4 or offset.shape[0] != bt or offset.shape[1] < 2 or offset.shape[2:] != x.shape[2:]:
        raise ValueError(f"deform_gather: offset must be (Bt={bt}, K>=2, H={h}, W={w}), got {tuple(offset.shape)}")
    if rpe_table.dim() != 3 or rpe_table.shape[0] != ch:
        raise ValueError(f"deform_gather: rpe_table must be (Ch={ch}, Th, Tw), got {tuple(rpe_table.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"deform_gather: H and W must be >= 2 (the point grid divides by H-1 and W-1), got {h}x{w}")
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # compute in float32 (or float64)
    x, rpe_table = x.to(dtype), rpe_table.to(dtype)
    ry, rx = reference_points(h, w, dtype, x.device)
    pos_y = ry[:, None] + offset[:, 0].to(dtype).tanh() / (h - 1.0)  # (Bt, H, W)
    pos_x = rx[None, :] + offset[:, 1].to(dtype).tanh() / (w - 1.0)
    grid = torch.stack((pos_x, pos_y), dim=-1)  # grid_sample wants (x, y)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    table = F.interpolate(rpe_table.to(dtype)[None], size=(h, w), mode="bilinear", align_corners=False)
    ky, kx = key_points(h, w, dtype, x.device)
    disp = torch.stack(((kx[None, :] - pos_x) * 0.5, (ky[:, None] - pos_y) * 0.5), dim=-1)
    bias = F.grid_sample(table.expand(bt, -1, -1, -1), disp, mode="bilinear", padding_mode="zeros", align_corners=True)
    return (sampled + bias).to(out_dtype)
