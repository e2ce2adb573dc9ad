"""One float32 policy on both TensorRT paths: which network layers run in float32.

:func:`defmamba_deploy.onnx.precision.float32_nodes` decides, on the ONNX graph, which nodes stay
float32 (LayerNorms, the offset network, the SelectiveScan parameters, the TokenSort input, the
classifier head, ...). TensorRT 11 (and TensorRT 10 with a strongly typed network) gets that
decision written into the ONNX by ``convert_fp16``. TensorRT 10's weakly typed network gets the
same node set as layer constraints: the parsed file is ``name_nodes`` of the export (every node
named, so that layer names, metadata and ``float32_nodes`` agree), every layer the ONNX parser
created for a kept node gets ``layer.precision = float32`` and float32 outputs, and the build sets
``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``.

How a layer is traced back to its ONNX node. TensorRT's ONNX parser names the first layer it
creates for a node after the node (``/blocks.0/norm/LayerNormalization``); every further layer for
the same node (a node it expands into several layers: a Gemm into a MatMul and a bias add, a
MatMul with reshapes around it) gets the node name plus ``_<n>``, ``n`` a counter shared by the
whole network, so the suffixes are not consecutive per node. The parser also writes the node name
into each such layer's metadata (``[ONNX Layer: <node> | ...]``), which is exact even where a
suffixed name collides with another node's name (PyTorch names nodes ``MatMul``, ``MatMul_1``, ...
itself). Helper layers it adds without a node (``ONNXTRT_*`` reshapes and casts, and the constant
layers of initializers, named after the initializer) carry neither. So:

1. metadata, when it names a node of the graph;
2. else the layer name: the node of that name, else the name with one ``_<n>`` suffix removed, and
   so on;
3. else (a helper or constant layer) the layer lies between layers of known nodes in the network's
   layer order, which is creation order; it was created while importing one of the nodes around it,
   so it is pinned when the nearest traced layers on both sides belong to kept nodes.

Only layers with a float output are pinned (a Shape, an integer Cast or TokenSort's int64 outputs
have no float32 precision to obey); their float outputs are set to float32.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Iterable

_METADATA = re.compile(r"^\[ONNX Layer: (.*?)(?: \| .*)?\]$", re.S)
_SUFFIX = re.compile(r"^(.*)_(\d+)$", re.S)
R_BETWEEN = "helper layer between float32 layers"


def node_of_name(name: str, node_names: set[str] | frozenset[str]) -> str | None:
    """The ONNX node a layer name derives from: itself, or itself without ``_<n>`` suffixes."""
    while True:
        if name in node_names:
            return name
        m = _SUFFIX.match(name)
        if m is None:
            return None
        name = m.group(1)


def node_of_layer(layer, node_names: set[str] | frozenset[str]) -> str | None:
    """The ONNX node TensorRT's parser created ``layer`` for, or None for a helper/constant layer."""
    meta = getattr(layer, "metadata", "") or ""
    m = _METADATA.match(str(meta).strip())
    if m and m.group(1) in node_names:
        return m.group(1)
    return node_of_name(str(layer.name), node_names)


def trace_layers(layers: list, node_names: Iterable[str]) -> list[str | None]:
    names = frozenset(node_names)
    return [node_of_layer(layer, names) for layer in layers]


@dataclass
class PinReport:
    """What :func:`pin_float32_layers` did."""

    pinned: list[tuple[str, str, str]] = field(default_factory=list)  # (layer, ONNX node or '', reason)
    nodes: set[str] = field(default_factory=set)  # kept ONNX nodes that have at least one layer
    not_float: list[str] = field(default_factory=list)  # layers of kept nodes without a float output
    without_layer: set[str] = field(default_factory=set)  # kept nodes the parser made no layer for

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _, _ in self.pinned]

    def summary(self) -> str:
        return (f"{len(self.pinned)} layers pinned to float32 for {len(self.nodes)} ONNX nodes"
                + (f" ({len(self.without_layer)} kept nodes became no layer: constants folded)" if self.without_layer else ""))


def _float_types(trt) -> tuple:
    return tuple(t for t in (getattr(trt, "float32", None), getattr(trt, "float16", None)) if t is not None)


def _pin(trt, layer) -> bool:
    floats = _float_types(trt)
    outs = [j for j in range(layer.num_outputs) if layer.get_output(j) is not None and layer.get_output(j).dtype in floats]
    if not outs:
        return False
    layer.precision = trt.float32
    for j in outs:
        layer.set_output_type(j, trt.float32)
    return True


def pin_float32_layers(trt, network, keep: dict[str, str], node_names: Iterable[str]) -> PinReport:
    """Constrain to float32 every layer of ``network`` that TensorRT's parser created for a node in
    ``keep`` ({ONNX node name: reason}, from ``float32_nodes``); ``node_names``: every node of the parsed graph."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    owners = trace_layers(layers, node_names)
    report = PinReport()
    known = [i for i, o in enumerate(owners) if o is not None]
    for i, (layer, owner) in enumerate(zip(layers, owners)):
        if owner is not None:
            if owner not in keep:
                continue
            report.nodes.add(owner)
            if _pin(trt, layer):
                report.pinned.append((str(layer.name), owner, keep[owner]))
            else:
                report.not_float.append(str(layer.name))
            continue
        pos = bisect.bisect_left(known, i)  # known layers around i: known[pos - 1] < i < known[pos]
        before = owners[known[pos - 1]] if pos > 0 else None
        after = owners[known[pos]] if pos < len(known) else None
        if before in keep and after in keep and _pin(trt, layer):
            report.pinned.append((str(layer.name), "", R_BETWEEN))
    report.without_layer = set(keep) - report.nodes
    return report
