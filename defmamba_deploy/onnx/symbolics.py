"""The three ops as autograd Functions with ONNX symbolics (TorchScript exporter).

Why the TorchScript exporter (``torch.onnx.export(dynamo=False)``): a ``symbolic`` staticmethod
maps each op to one ``defmamba::*`` node directly, the Python reference runs as the traced forward,
and dynamic batch/height/width come out of ``dynamic_axes`` with no shape baked in, because the
model only does shape arithmetic through traced sizes. The dynamo exporter would need each op as
a ``torch.library`` custom op with a fake kernel plus an onnxscript translation, and was slower to
export; nothing it offers is needed for this graph.
"""
from __future__ import annotations

import torch

from ..ops import REFERENCE
from .schemas import DOMAIN


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus: bool, reverse: tuple = ()):  # noqa: N803
        return REFERENCE["selective_scan"](u, delta, A, B, C, D, delta_bias, delta_softplus, reverse)

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, delta_bias, delta_softplus, reverse=()):  # noqa: N803
        attrs = {"delta_softplus_i": int(delta_softplus)}
        if any(reverse):  # the attribute only where a group runs backwards: other graphs stay as they were
            attrs["reverse_i"] = [int(v) for v in reverse]
        y = g.op(f"{DOMAIN}::SelectiveScan", u, delta, A, B, C, D, delta_bias, **attrs)
        y.setType(u.type())
        return y


class DeformGatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offset, rpe_table):
        return REFERENCE["deform_gather"](x, offset, rpe_table)

    @staticmethod
    def symbolic(g, x, offset, rpe_table):
        out = g.op(f"{DOMAIN}::DeformGather", x, offset, rpe_table)
        out.setType(x.type())
        return out


class TokenSortFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token_offset):
        return REFERENCE["token_sort"](token_offset)

    @staticmethod
    def symbolic(g, token_offset):
        perm, inv = g.op(f"{DOMAIN}::TokenSort", token_offset, outputs=2)
        for t in (perm, inv):
            t.setType(token_offset.type().with_dtype(torch.int64))
        return perm, inv


def export_implementations() -> dict:
    """Implementations to pass to ``ops.use_implementations`` while exporting."""
    return {
        "selective_scan": lambda u, d, A, B, C, D, db, sp=True, rev=None: SelectiveScanFn.apply(
            u, d, A, B, C, D, db, bool(sp), tuple(int(v) for v in rev or ())),
        "deform_gather": DeformGatherFn.apply,
        "token_sort": TokenSortFn.apply,
    }
