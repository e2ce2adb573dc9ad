"""The three DefMamba custom ops as plain PyTorch functions.

These functions are the *semantic reference*: the ONNX ops of the ``defmamba`` domain, the ONNX
Runtime kernels and the TensorRT plugins in ``plugins/`` are all tested against them. The contracts
(shapes, dtypes, tie rules) are stated in each module docstring and in ``plugins/README.md``.

The model calls the ops through this module's dispatchers, so a higher layer (the ONNX exporter)
can swap in other implementations for a while with :func:`use_implementations`, without the
model knowing about ONNX.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from . import deform_gather as _dg
from . import selective_scan as _ss
from . import token_sort as _ts
from .token_sort import apply_permutation

REFERENCE: dict[str, Callable] = {
    "selective_scan": _ss.selective_scan,
    "deform_gather": _dg.deform_gather,
    "token_sort": _ts.token_sort,
}
_active: dict[str, Callable] = dict(REFERENCE)


@contextlib.contextmanager
def use_implementations(**impls: Callable) -> Iterator[None]:
    """Temporarily route ops to other implementations, e.g. ``use_implementations(token_sort=fn)``."""
    unknown = set(impls) - set(REFERENCE)
    if unknown:
        raise KeyError(f"unknown op(s) {sorted(unknown)}; known: {sorted(REFERENCE)}")
    saved = dict(_active)
    _active.update(impls)
    try:
        yield
    finally:
        _active.clear()
        _active.update(saved)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus: bool = True, reverse=None):
    if reverse is not None and len(reverse) > 0:  # (implementations without the argument serve the rest)
        return _active["selective_scan"](u, delta, A, B, C, D, delta_bias, delta_softplus, reverse)
    return _active["selective_scan"](u, delta, A, B, C, D, delta_bias, delta_softplus)


def deform_gather(x, offset, rpe_table):
    return _active["deform_gather"](x, offset, rpe_table)


def token_sort(token_offset):
    return _active["token_sort"](token_offset)


selective_scan.__doc__ = _ss.selective_scan.__doc__ + "\n\n" + (_ss.__doc__ or "")
deform_gather.__doc__ = _dg.deform_gather.__doc__ + "\n\n" + (_dg.__doc__ or "")
token_sort.__doc__ = _ts.token_sort.__doc__ + "\n\n" + (_ts.__doc__ or "")

__all__ = ["selective_scan", "deform_gather", "token_sort", "apply_permutation", "use_implementations", "REFERENCE"]
