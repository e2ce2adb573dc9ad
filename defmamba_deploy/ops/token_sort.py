"""Token sort: the order in which the deformable branch scans its tokens.

Contract (``defmamba::TokenSort``)::

    token_offset : (Bt, L)     the raw token offset (channel 2 of the offset map, flattened)
    returns perm, inv_perm : (Bt, L) int64

    key[b, l] = tanh(token_offset[b, l]) + (l + 0.5) / (L - 1) * 2 - 1
    perm      = the stable ascending order of key (equal keys keep their index order)
    inv_perm[b, perm[b, j]] = j

The key is computed in float32 whatever the input dtype (float64 when the input is float64): in
float16 the reference positions alone collapse to ~2,100 distinct values at L = 3136 and the order
changes. The authors use top-k with k = L (smallest first), whose tie order is unspecified; the
stable rule makes every implementation of this op agree exactly.
"""
from __future__ import annotations

import torch


def sort_key(token_offset: torch.Tensor) -> torch.Tensor:
    """The float32 (or float64) sort key of each token, (Bt, L)."""
    cd = torch.float64 if token_offset.dtype == torch.float64 else torch.float32
    length = token_offset.shape[-1]
    denom = max(length - 1, 1)  # L = 1: the key is irrelevant, avoid 0/0
    ref = torch.linspace(0.5, length - 0.5, length, dtype=cd, device=token_offset.device).div(float(denom)).mul(2.0).sub(1.0)
    return token_offset.to(cd).tanh() + ref


def token_sort(token_offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable ascending permutation of the tokens by their key, and its inverse (see module doc)."""
    if token_offset.dim() != 2:
        raise ValueError(f"token_sort: token_offset must be (Bt, L), got {tuple(token_offset.shape)}")
    perm = torch.sort(sort_key(token_offset), dim=-1, stable=True).indices
    inv_perm = torch.empty_like(perm)
    inv_perm.scatter_(-1, perm, torch.arange(perm.shape[-1], device=perm.device).expand_as(perm))
    return perm, inv_perm


def apply_permutation(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, c, j] = x[b, c, index[b, j]] for x (Bt, Ch, L) and index (Bt, L).

    With ``perm`` this puts tokens in sorted order; with ``inv_perm`` it puts sorted results back
    at their spatial positions (out[..., perm[j]] = y[..., j]).
    """
    return torch.gather(x, -1, index[:, None, :].expand(-1, x.shape[1], -1))
