"""ONNX schemas of the ``defmamba`` domain (version 1), registered from Python.

Registering them lets ``onnx.checker.check_model(full_check=True)`` and ``onnx.shape_inference``
handle models that use the custom ops. The same names, inputs and attributes are used by the ORT
ops and TensorRT plugins in ``plugins/`` (see ``plugins/README.md``); ``OP_SPECS`` is the Python
side of that contract and is cross-checked by the tests.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, defs

DOMAIN = "defmamba"
VERSION = 1
FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]

# op type -> (inputs, outputs, attributes {name: (type, default)})
OP_SPECS: dict[str, dict] = {
    "SelectiveScan": {
        "inputs": ["u", "delta", "A", "B", "C", "D", "delta_bias"],
        "outputs": ["y"],
        "attributes": {"delta_softplus": ("int", 1), "reverse": ("ints", [])},
    },
    "DeformGather": {"inputs": ["x", "offset", "rpe_table"], "outputs": ["feat"], "attributes": {}},
    "TokenSort": {"inputs": ["token_offset"], "outputs": ["perm", "inv_perm"], "attributes": {}},
}

_DOCS = {
    "SelectiveScan": "Mamba S6 selective scan; recurrence in float32 whatever T. See plugins/selective_scan/README.md.",
    "DeformGather": "Bilinear features at tanh-bounded offset points plus interpolated position bias. See plugins/deform_gather/README.md.",
    "TokenSort": "Stable ascending token order by a float32 key (tanh(offset) + reference position). See plugins/token_sort/README.md.",
}


def _copy_input_type(ctx, src: int, dst: int, elem_type: int | None = None) -> None:
    t = ctx.get_input_type(src)
    if t is None or not t.HasField("tensor_type"):
        return
    out = onnx.TypeProto()
    out.CopyFrom(t)
    if elem_type is not None:
        out.tensor_type.elem_type = elem_type
    ctx.set_output_type(dst, out)


def _infer_scan(ctx) -> None:
    _copy_input_type(ctx, 0, 0)


def _infer_gather(ctx) -> None:
    _copy_input_type(ctx, 0, 0)


def _infer_sort(ctx) -> None:
    _copy_input_type(ctx, 0, 0, TensorProto.INT64)
    _copy_input_type(ctx, 0, 1, TensorProto.INT64)


def _schema(op: str) -> defs.OpSchema:
    S = defs.OpSchema
    P = S.FormalParameter
    if op == "SelectiveScan":
        inputs = [P("u", "T"), P("delta", "T"), P("A", "F"), P("B", "T"), P("C", "T"), P("D", "F"), P("delta_bias", "F")]
        outputs = [P("y", "T")]
        constraints = [("T", FLOAT_TYPES, "activations"), ("F", ["tensor(float)"], "parameters, always float32")]
        attributes = [S.Attribute("delta_softplus", defs.OpSchema.AttrType.INT, "apply softplus to delta + delta_bias (1) or not (0)"),
                      S.Attribute("reverse", defs.OpSchema.AttrType.INTS,
                                  "optional, one 0/1 flag per group: 1 = the group scans backwards in time (t = L-1 .. 0)",
                                  required=False)]
        infer = _infer_scan
    elif op == "DeformGather":
        inputs = [P("x", "T"), P("offset", "T"), P("rpe_table", "T")]
        outputs = [P("feat", "T")]
        constraints = [("T", FLOAT_TYPES, "float tensors")]
        attributes, infer = [], _infer_gather
    else:
        inputs = [P("token_offset", "T")]
        outputs = [P("perm", "I"), P("inv_perm", "I")]
        constraints = [("T", FLOAT_TYPES + ["tensor(double)"], "offsets"), ("I", ["tensor(int64)"], "indices")]
        attributes, infer = [], _infer_sort
    schema = S(op, DOMAIN, VERSION, _DOCS[op], inputs=inputs, outputs=outputs, type_constraints=constraints, attributes=attributes)
    schema.set_type_and_shape_inference_function(infer)
    return schema


_registered = False


def register_schemas() -> None:
    """Register the three schemas with onnx (idempotent)."""
    global _registered
    if _registered:
        return
    for op in OP_SPECS:
        try:
            defs.get_schema(op, VERSION, DOMAIN)
        except defs.SchemaError:
            defs.register_schema(_schema(op))
    _registered = True
