"""A stand-in for the parts of ``tensorrt`` the engine build touches, for tests on machines without it.

:func:`parse_like_tensorrt` builds a network from an ONNX model the way TensorRT's ONNX parser
names layers: the first layer of a node gets the node's name, further layers of the same node and
repeated helper names get ``_<n>`` from one counter shared by the whole network, helper layers the
parser adds on its own are ``ONNXTRT_*`` without metadata, initializers become constant layers
named after them when a node first reads them, Constant nodes make no layer, and node layers carry
``[ONNX Layer: <node>]`` metadata.
"""
from __future__ import annotations

import types

import onnx

from defmamba_deploy.onnx import register_schemas


class DataType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


float32, float16, int32, int64, bool_ = (DataType(n) for n in ("FLOAT", "HALF", "INT32", "INT64", "BOOL"))
_ONNX_TYPES = {onnx.TensorProto.FLOAT: float32, onnx.TensorProto.FLOAT16: float16, onnx.TensorProto.INT32: int32,
               onnx.TensorProto.INT64: int64, onnx.TensorProto.BOOL: bool_}

# layers per node beyond the first, and helper layers around it (as the parser expands these ops)
EXTRA_LAYERS = {"Gemm": 1, "LayerNormalization": 2, "MatMul": 1, "Resize": 1, "Gather": 1, "Expand": 1}
HELPERS_BEFORE = {"ReduceMean": "ONNXTRT_unsqueezeTensor", "Gemm": "ONNXTRT_reshapeTensor",
                  "Softmax": "ONNXTRT_flattenTensor"}
HELPERS_AFTER = {"ReduceMean": "ONNXTRT_squeezeTensor", "Gemm": "ONNXTRT_castHelper"}


class Tensor:
    def __init__(self, dtype: DataType) -> None:
        self.dtype = dtype


class Layer:
    def __init__(self, name: str, out_types: list[DataType], metadata: str = "", kind: str = "") -> None:
        self.name, self.metadata, self.type = name, metadata, kind
        self._outputs = [Tensor(t) for t in out_types]
        self.precision = float32
        self.precision_is_set = False
        self.output_types_set: dict[int, DataType] = {}

    def __setattr__(self, key, value):
        if key == "precision" and "precision" in self.__dict__:
            self.__dict__["precision_is_set"] = True
        super().__setattr__(key, value)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, j: int) -> Tensor:
        return self._outputs[j]

    def set_output_type(self, j: int, dtype: DataType) -> None:
        self.output_types_set[j] = dtype


class Network:
    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self._names: set[str] = set()
        self._counter = 0

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]

    def unique(self, base: str) -> str:
        name = base
        while name in self._names:
            name = f"{base}_{self._counter}"
            self._counter += 1
        self._names.add(name)
        return name

    def add(self, base: str, out_types: list[DataType], metadata: str = "", kind: str = "") -> Layer:
        layer = Layer(self.unique(base), out_types, metadata, kind)
        self.layers.append(layer)
        return layer


def _elem_types(model: onnx.ModelProto) -> dict[str, DataType]:
    register_schemas()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    out = {i.name: _ONNX_TYPES.get(i.data_type, float32) for i in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        out[v.name] = _ONNX_TYPES.get(v.type.tensor_type.elem_type, float32)
    return out


def parse_like_tensorrt(model: onnx.ModelProto, *, metadata: bool = True, network: Network | None = None) -> Network:
    net = network or Network()
    types_ = _elem_types(model)
    inits = {i.name for i in model.graph.initializer}
    made: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue  # becomes weights, no layer
        name = node.name or f"node_of_{node.output[0]}"
        meta = f"[ONNX Layer: {name}]" if metadata else ""
        outs = [types_.get(o, float32) for o in node.output if o]
        floaty = float32 if any(t in (float32, float16) for t in outs) else int64
        for i in node.input:
            if i in inits and i not in made:
                made.add(i)
                net.add(i, [types_[i]], kind="CONSTANT")
        if node.op_type in HELPERS_BEFORE:
            net.add(HELPERS_BEFORE[node.op_type], [floaty], kind="SHUFFLE")
        net.add(name, outs or [floaty], meta, node.op_type)
        for _ in range(EXTRA_LAYERS.get(node.op_type, 0)):
            net.add(name, [floaty], meta, node.op_type)
        if node.op_type in HELPERS_AFTER:
            net.add(HELPERS_AFTER[node.op_type], [floaty], kind="SHUFFLE")
    return net


def module(version: str = "10.13.0.35") -> types.SimpleNamespace:
    """The ``trt`` names the float32 pinning uses."""
    return types.SimpleNamespace(__version__=version, float32=float32, float16=float16, int32=int32, int64=int64)


# --- enough of the builder API for build_engine ---------------------------------------------------------

class _Input:
    name = "input"


class FakeNetwork(Network):
    def __init__(self, flags: int) -> None:
        super().__init__()
        self.flags = flags
        self.parsed: onnx.ModelProto | None = None

    def get_input(self, i: int) -> _Input:
        return _Input()


class _Parser:
    def __init__(self, network: FakeNetwork, logger) -> None:
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        self.network.parsed = onnx.load(path)
        parse_like_tensorrt(self.network.parsed, network=self.network)
        return True


class _Cache:
    def serialize(self) -> bytes:
        return b"timing-cache"


class _Config:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.int8_calibrator = None

    def set_memory_pool_limit(self, pool, size) -> None:
        self.workspace = size

    def create_timing_cache(self, data) -> _Cache:
        return _Cache()

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        return True

    def add_optimization_profile(self, profile) -> int:
        self.profile = profile
        return 0

    def set_calibration_profile(self, profile) -> bool:
        return True

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)


class _Profile:
    def set_shape(self, name, lo, opt, hi) -> None:
        self.shapes = (name, lo, opt, hi)


def full_module(version: str = "10.13.0.35", *, plan: bytes | None = b"PLAN") -> types.SimpleNamespace:
    """A ``trt`` whose Builder parses with :func:`parse_like_tensorrt` and 'builds' ``plan`` (None: fails).
    ``trt.built`` holds (network, config) of the last build."""
    trt = module(version)

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> FakeNetwork:
            return FakeNetwork(flags)

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network, config):
            trt.built = (network, config)
            return plan

    registry = types.SimpleNamespace(get_creator=lambda *a: object(), load_library=lambda p: object())
    trt.Builder, trt.OnnxParser = Builder, _Parser
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda self, severity=2: None})
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.get_plugin_registry = lambda: registry
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.built = None
    return trt
