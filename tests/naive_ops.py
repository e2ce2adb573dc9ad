"""Independent, obviously-correct float64 NumPy versions of the three ops (slow; for tests only).

Written from the contract in plugins/README.md without grid_sample, interpolate or vectorised
scans, so that the fast implementations are checked against something that shares no code.
"""
import math

import numpy as np


def softplus(v):
    return v if v > 20 else math.log1p(math.exp(v))


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, reverse=None):
    u, delta, A, B, C = (np.asarray(t, np.float64) for t in (u, delta, A, B, C))
    bt, ch, length = u.shape
    g, n = B.shape[1], A.shape[1]
    cg = ch // g
    y = np.zeros_like(u)
    for b in range(bt):
        for c in range(ch):
            h = np.zeros(n)
            k = c // cg
            backwards = reverse is not None and len(reverse) > 0 and reverse[k]
            for t in (range(length - 1, -1, -1) if backwards else range(length)):
                dt = delta[b, c, t] + (0.0 if delta_bias is None else float(delta_bias[c]))
                if delta_softplus:
                    dt = softplus(dt)
                h = np.exp(dt * A[c]) * h + dt * B[b, k, :, t] * u[b, c, t]
                y[b, c, t] = float(C[b, k, :, t] @ h) + (0.0 if D is None else float(D[c])) * u[b, c, t]
    return y


def _bilinear_zero(img, y, x):
    """Sample img (H, W) at pixel coords (y, x), bilinear, zero outside."""
    h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[yy, xx]
    return out


def _resize_bilinear(table, h, w):
    """PyTorch's bilinear resize with align_corners=False (source index clamped at 0 and in-1)."""
    th, tw = table.shape
    out = np.zeros((h, w))
    for i in range(h):
        sy = max((i + 0.5) * th / h - 0.5, 0.0)
        y0 = int(sy); y1 = min(y0 + 1, th - 1); ly = sy - y0
        for j in range(w):
            sx = max((j + 0.5) * tw / w - 0.5, 0.0)
            x0 = int(sx); x1 = min(x0 + 1, tw - 1); lx = sx - x0
            out[i, j] = ((1 - ly) * ((1 - lx) * table[y0, x0] + lx * table[y0, x1])
                         + ly * ((1 - lx) * table[y1, x0] + lx * table[y1, x1]))
    return out


def deform_gather(x, offset, table):
    x, offset, table = (np.asarray(t, np.float64) for t in (x, offset, table))
    bt, ch, h, w = x.shape
    out = np.zeros_like(x)
    resized = [_resize_bilinear(table[c], h, w) for c in range(ch)]
    for b in range(bt):
        for i in range(h):
            for j in range(w):
                ty, tx = math.tanh(offset[b, 0, i, j]), math.tanh(offset[b, 1, i, j])
                pos_y = (i + 0.5) / (h - 1) * 2 - 1 + ty / (h - 1)
                pos_x = (j + 0.5) / (w - 1) * 2 - 1 + tx / (w - 1)
                py, px = (pos_y + 1) / 2 * (h - 1), (pos_x + 1) / 2 * (w - 1)  # align_corners=True
                key_y = i * h / (h - 1) / (h - 1) * 2 - 1
                key_x = j * w / (w - 1) / (w - 1) * 2 - 1
                dy, dx = (key_y - pos_y) * 0.5, (key_x - pos_x) * 0.5
                qy, qx = (dy + 1) / 2 * (h - 1), (dx + 1) / 2 * (w - 1)
                for c in range(ch):
                    out[b, c, i, j] = _bilinear_zero(x[b, c], py, px) + _bilinear_zero(resized[c], qy, qx)
    return out


def sort_key_f32(token_offset):
    v = np.asarray(token_offset, np.float32)
    length = v.shape[-1]
    ref = ((np.arange(length, dtype=np.float32) + np.float32(0.5)) / np.float32(max(length - 1, 1))) * np.float32(2) - np.float32(1)
    return np.tanh(v).astype(np.float32) + ref


def token_sort(token_offset):
    key = sort_key_f32(token_offset)
    perm = np.argsort(key, axis=-1, kind="stable")
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.arange(perm.shape[-1])[None].repeat(perm.shape[0], 0), axis=-1)
    return perm, inv
