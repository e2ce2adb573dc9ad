"""Selective scan (the Mamba S6 recurrence), vectorised and exact.

Contract (``defmamba::SelectiveScan``)::

    u, delta : (Bt, Ch, L)           any float dtype T
    A        : (Ch, N)
    B, C     : (Bt, G, N, L)         Ch % G == 0; channel c uses group g = c // (Ch // G)
    D        : (Ch,) or None         skip connection (None = 0)
    delta_bias : (Ch,) or None       added to delta before the softplus (None = 0)
    returns y : (Bt, Ch, L), dtype T

    dt_t   = delta[b,c,t] + delta_bias[c];  dt_t = softplus(dt_t) if delta_softplus
    h_t[n] = exp(dt_t * A[c,n]) * h_{t-1}[n] + dt_t * B[b,g,n,t] * u[b,c,t]      (h_{-1} = 0)
    y[b,c,t] = sum_n C[b,g,n,t] * h_t[n] + D[c] * u[b,c,t]

    reverse  : None/empty, or one 0/1 flag per group (attribute ``reverse``): a flagged group scans
               backwards, t = L-1 .. 0 (h_L = 0, h_t from h_{t+1}); its channels are exactly
               flip(scan(flip(u, delta, B, C))) along L. DefMamba's second branch (the reversed
               raster order) uses it instead of flipping its input and output.

softplus(v) = v if v > 20 else log1p(exp(v)) (PyTorch's threshold rule). The recurrence is computed
in float32 (state and exp) whatever the I/O dtype, or in float64 when any input is float64.

Implementation: an exact chunked scan. The sequence is cut into nc chunks of T ~ sqrt(L) steps
(chunk-major layout, so each step touches one contiguous slice). Pass 1 runs all chunks at once
from a zero state and multiplies their decays; a carry pass over the nc chunk ends gives each
chunk's true start state; pass 2 re-runs the chunks from those states and contracts with C. That
is the sequential recurrence re-associated at chunk boundaries (same values up to rounding, no
approximation, no overflow), in ~3*sqrt(L) vectorised steps instead of L tiny ones. Measured on
2 CPU cores: 76 ms for DefMamba-S's stage-1 shape (Bt 1, Ch 288, L 3136) vs 320 ms for a
one-pass version with a cumprod, and the per-token loop of the authors' reference is slower still.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# Upper bound on the elements of one (L, Bt, G, Cg, N) working tensor; larger problems are split
# over batch and channels so that batch 32 at 512^2 does not need tens of GB.
_MAX_WORK_ELEMENTS = 1 << 24


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check(u, delta, A, B, C, D, delta_bias) -> tuple[int, int, int, int, int]:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (Bt, Ch, L), got {tuple(u.shape)} and {tuple(delta.shape)}")
    bt, ch, length = u.shape
    if A.dim() != 2 or A.shape[0] != ch:
        raise ValueError(f"selective_scan: A must be (Ch={ch}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    if B.dim() != 4 or B.shape[0] != bt or B.shape[2] != n or B.shape[3] != length:
        raise ValueError(f"selective_scan: B must be (Bt={bt}, G, N={n}, L={length}), got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"selective_scan: C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    g = B.shape[1]
    if g == 0 or ch % g:
        raise ValueError(f"selective_scan: the group count G={g} must divide Ch={ch}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (ch,):
            raise ValueError(f"selective_scan: {name} must be (Ch={ch},), got {tuple(t.shape)}")
    return bt, ch, length, n, g


def reversed_groups(reverse: Sequence[int] | None, groups: int) -> list[int]:
    """The indices of the groups that scan backwards; validates ``reverse`` (None/empty or G 0/1 flags)."""
    if reverse is None or len(reverse) == 0:
        return []
    flags = [int(v) for v in reverse]
    if len(flags) != groups:
        raise ValueError(f"selective_scan: reverse must have one 0/1 flag per group (G={groups}), got {len(flags)}: {flags}")
    if any(v not in (0, 1) for v in flags):
        raise ValueError(f"selective_scan: reverse flags must be 0 or 1, got {flags}")
    return [i for i, v in enumerate(flags) if v]


def flip_groups(x: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """x (Bt, G, ..., L) with the time axis of the listed groups reversed (a copy)."""
    out = x.clone()
    idx = torch.tensor(groups, device=x.device)
    out[:, idx] = x[:, idx].flip(-1)
    return out


def scan_with_flipped_groups(scan, groups: list[int], u, delta, A, B, C, D, delta_bias, delta_softplus):
    """A forward-only ``scan`` run for a ``reverse`` with the listed groups flagged: exactly
    flip(scan(flip(inputs))) along L for those groups (pure data movement around ``scan``)."""
    bt, ch, length = u.shape
    g = B.shape[1]
    u, delta = (flip_groups(t.reshape(bt, g, ch // g, length), groups).reshape(bt, ch, length) for t in (u, delta))
    y = scan(u, delta, A, flip_groups(B, groups), flip_groups(C, groups), D, delta_bias, delta_softplus)
    return flip_groups(y.reshape(bt, g, ch // g, length), groups).reshape(bt, ch, length)


def _chunk_geometry(length: int) -> tuple[int, int]:
    """(T, nc): chunk length ~ sqrt(L) and chunk count, T * nc >= L."""
    steps = math.isqrt(max(length - 1, 0)) + 1
    return steps, -(-length // steps)


def _to_chunk_major(x: torch.Tensor, steps: int, chunks: int, pad_value: float) -> torch.Tensor:
    """(..., L) -> (T, nc, ...) contiguous, with l = c * T + t; the tail is padded with pad_value."""
    length = x.shape[-1]
    pad = steps * chunks - length
    if pad:
        x = F.pad(x, (0, pad), value=pad_value)
    x = x.reshape(x.shape[:-1] + (chunks, steps))
    return x.permute((x.dim() - 1, x.dim() - 2) + tuple(range(x.dim() - 2))).contiguous()


def _scan_chunked(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """y[t, k] = sum_n c[t, k, n] * h[t, k, n] with h[t] = a[t] * h[t-1] + b[t] along the flat time t = k*T + s.

    ``a, b``: (T, nc, P, M, N) (decays and inputs, chunk-major); ``c``: (T, nc, P, N), shared by the
    M channels of a group. Returns (T, nc, P, M).
    Pass 1 scans every chunk from a zero state and multiplies its decays; the carry pass runs over
    the nc chunk ends; pass 2 re-runs each chunk from its true start state and contracts with C.
    Every state is the sequential recurrence's own value up to re-association of the carry.
    """
    steps = a.shape[0]
    state = torch.zeros_like(b[0])
    decay = torch.ones_like(a[0])
    for t in range(steps):
        state = torch.addcmul(b[t], a[t], state)
        decay = decay * a[t]
    carry = torch.zeros_like(state[0])
    starts = torch.empty_like(state)
    for k in range(state.shape[0]):
        starts[k] = carry
        carry = torch.addcmul(state[k], decay[k], carry)
    y = a.new_empty(a.shape[:-1])
    state = starts
    for t in range(steps):
        state = torch.addcmul(b[t], a[t], state)
        y[t] = torch.matmul(state, c[t].unsqueeze(-1)).squeeze(-1)
    return y


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    reverse: Sequence[int] | None = None,
) -> torch.Tensor:
    """Selective scan y = S6(u, delta, A, B, C, D); see the module docstring for the contract."""
    bt, ch, length, n, g = _check(u, delta, A, B, C, D, delta_bias)
    flipped = reversed_groups(reverse, g)
    if flipped:
        return scan_with_flipped_groups(selective_scan, flipped, u, delta, A, B, C, D, delta_bias, delta_softplus)
    out_dtype = u.dtype
    cd = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    cg = ch // g
    u_c = u.to(cd)
    dt = delta.to(cd)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cd)[:, None]
    if delta_softplus:
        dt = F.softplus(dt, beta=1.0, threshold=20.0)
    A_c = A.to(cd).reshape(g, cg, n)
    # chunk-major working layout (T, nc, Bt, G, Cg[, N]): every step of the loops reads one
    # contiguous slice; only the (.., N)-sized decays and inputs are materialised, per work block.
    steps, chunks = _chunk_geometry(length)
    dt_k = _to_chunk_major(dt.reshape(bt, g, cg, length), steps, chunks, 0.0)  # pad: decay 1, input 0
    du_k = _to_chunk_major((dt * u_c).reshape(bt, g, cg, length), steps, chunks, 0.0)
    B_k = _to_chunk_major(B.to(cd), steps, chunks, 0.0)  # (T, nc, Bt, G, N)
    C_k = _to_chunk_major(C.to(cd), steps, chunks, 0.0)
    y_k = torch.empty((steps, chunks, bt, g, cg), dtype=cd, device=u.device)

    per_item = ch * length * n  # working elements of one batch item
    if per_item <= _MAX_WORK_ELEMENTS:
        step_b, step_c = max(1, _MAX_WORK_ELEMENTS // per_item), cg
    else:
        step_b, step_c = 1, max(1, _MAX_WORK_ELEMENTS // (g * length * n))
    for b0 in range(0, bt, step_b):
        bs = slice(b0, b0 + step_b)
        for c0 in range(0, cg, step_c):
            cs = slice(c0, c0 + step_c)
            nb = len(range(bt)[bs])
            decay = torch.exp(dt_k[:, :, bs, :, cs, None] * A_c[:, cs])  # (T, nc, b, G, c, N)
            inp = du_k[:, :, bs, :, cs, None] * B_k[:, :, bs, :, None, :]
            shape = (steps, chunks, nb * g) + decay.shape[-2:]
            y = _scan_chunked(decay.reshape(shape), inp.reshape(shape), C_k[:, :, bs].reshape(steps, chunks, nb * g, n))
            y_k[:, :, bs, :, cs] = y.reshape(steps, chunks, nb, g, -1)
    y = y_k.permute(2, 3, 4, 1, 0).reshape(bt, ch, chunks * steps)[..., :length]
    if D is not None:
        y = y + D.to(cd)[:, None] * u_c
    return y.to(out_dtype).contiguous()
