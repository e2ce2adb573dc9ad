"""Triton Inference Server model repositories for exported DefMamba ONNX files.

Torch-free: only the ONNX graph, protobuf and tritonclient's schema are needed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
from pathlib import Path

from ..checks import count, number
from ..errors import MissingDependencyError, UsageError
from ..files import atomic_directory, atomic_write_text

LIB_NAME = "libdefmamba_ort_ops.so"
CONTAINER = "nvcr.io/nvidia/tritonserver:24.08-py3"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_REGEN = "fix the field or regenerate with defmamba-deploy triton-repo"
_INSTALL = "install them with: pip install 'tritonclient[http]' protobuf"


def _onnx_io(onnx_path):
    # Imported lazily from the check module so that the export code (and torch) never loads.
    from ..onnx.check import custom_ops_used, load_onnx
    # check=False: the checker does not know the custom domain's schemas unless registered.
    model = load_onnx(onnx_path, check=False)
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [v for v in g.input if v.name not in inits]
    if not inputs or not g.output:
        raise UsageError(f"{onnx_path}: the ONNX graph has no input or no output; export it again")
    ins = [(v.name, dims(v)) for v in inputs[:1]]
    outs = [(v.name, dims(v)) for v in g.output]
    return ins, outs, custom_ops_used(model)


def _split_batch(ins, outs, max_batch):
    """(max_batch_size, ins, outs) with the batch dim dropped when it is dynamic."""
    first = ins[0][1]
    if first and first[0] == -1:
        return max_batch, [(n, d[1:]) for n, d in ins], [(n, d[1:]) for n, d in outs]
    # A fixed batch dim means static batch: Triton wants max_batch_size 0 and full dims.
    return 0, ins, outs


def _tensors(kind, items):
    body = ",\n".join(
        f'  {{\n    name: "{n}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, d))} ]\n  }}'
        for n, d in items)
    return f"{kind} [\n{body}\n]\n"


def make_onnx_config(onnx_path, name, max_batch=8, instances=1, max_delay_ms=5, library_path=None) -> str:
    """config.pbtxt text for Triton's onnxruntime backend.

    ``library_path`` is written verbatim as op_library_filename. Triton hands it to ORT's
    RegisterCustomOpsLibrary inside the server, so it must be the path inside the container
    (e.g. /models/NAME/libdefmamba_ort_ops.so). It is left out when the model uses no custom ops.
    """
    ins, outs, custom = _onnx_io(onnx_path)
    mbs, ins, outs = _split_batch(ins, outs, max_batch)
    text = f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {mbs}\n'
    text += _tensors("input", ins) + _tensors("output", outs)
    if mbs > 0:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(round(max_delay_ms * 1000))}\n}}\n"
    text += f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
    if custom and library_path:
        text += f'model_operations {{\n  op_library_filename: "{library_path}"\n}}\n'
    return text


def _schema():
    try:
        from google.protobuf import text_format
    except ImportError as e:
        raise MissingDependencyError(f"protobuf is not installed; {_INSTALL}") from e
    try:
        pb2 = importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):
        # tritonclient.grpc's __init__ needs grpc (it raises RuntimeError without it); the generated
        # schema itself does not, so load that file on its own.
        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError(f"tritonclient is not installed; {_INSTALL}") from None
        f = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
        if not f.is_file():
            raise MissingDependencyError(f"tritonclient has no model_config_pb2.py; {_INSTALL}") from None
        s = importlib.util.spec_from_file_location("_defmamba_triton_model_config_pb2", f)
        pb2 = importlib.util.module_from_spec(s)
        try:
            s.loader.exec_module(pb2)
        except ImportError as e:
            raise MissingDependencyError(f"cannot load Triton's model config schema ({e}); {_INSTALL}") from e
    return text_format, pb2


def check_config(text, onnx_path=None, where="config.pbtxt"):
    """Parse ``text`` with Triton's schema; with ``onnx_path`` check it against the graph."""
    text_format, pb2 = _schema()
    cfg = pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise UsageError(f"{where}: {' '.join(str(e).split())}; {_REGEN}") from None
    model_dir = Path(where).parent
    if onnx_path is not None:
        ins, outs, _ = _onnx_io(onnx_path)
        fixed = not ins[0][1] or ins[0][1][0] != -1
        if not fixed:
            ins, outs = [(n, d[1:]) for n, d in ins], [(n, d[1:]) for n, d in outs]
        if cfg.max_batch_size > 0 and fixed:
            raise UsageError(f"{where}: max_batch_size is {cfg.max_batch_size} but the ONNX batch dim is "
                             f"fixed; set max_batch_size: 0; {_REGEN}")
        for kind, got, want in (("input", cfg.input, ins), ("output", cfg.output, outs)):
            if len(got) != len(want):
                raise UsageError(f"{where}: {kind} has {len(got)} entries, the ONNX graph {len(want)}; {_REGEN}")
            for i, (t, (n, d)) in enumerate(zip(got, want)):
                if t.name != n:
                    raise UsageError(f"{where}: {kind}[{i}].name is {t.name!r}, the ONNX graph has {n!r}; {_REGEN}")
                dt = pb2.DataType.Name(t.data_type)
                if dt != "TYPE_FP32":
                    raise UsageError(f"{where}: {kind}[{i}].data_type is {dt}, the ONNX graph has TYPE_FP32; {_REGEN}")
                if list(t.dims) != list(d):
                    raise UsageError(f"{where}: {kind}[{i}].dims is {list(t.dims)}, the ONNX graph has "
                                     f"{list(d)}; {_REGEN}")
    for lib in cfg.model_operations.op_library_filename:
        p = Path(lib) if os.path.isabs(lib) else model_dir / lib
        if not p.is_file():
            raise UsageError(f"{where}: op_library_filename {lib} does not exist; build the custom-op library "
                             f"or {_REGEN}")
    return cfg


def _check_args(name, max_batch, instances, max_delay_ms):
    count(max_batch, "max_batch")
    count(instances, "instances")
    number(max_delay_ms, "max_delay_ms", low=0)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(f"model name must match [A-Za-z0-9_.-]+, got {name!r}")


def _readme(name, custom):
    text = (f"# Triton model repository\n\nServe it with:\n\n```\n"
            f"docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD:/models {CONTAINER} \\\n"
            f"  tritonserver --model-repository=/models\n```\n\n"
            f"Model `{name}` is then at http://localhost:8000/v2/models/{name}.\n")
    if custom:
        text += (f"\n`{name}/{LIB_NAME}` holds the DefMamba custom ONNX Runtime ops. It must be built against "
                 "an ONNX Runtime whose version is <= the container's ONNX Runtime. The config refers to it by "
                 f"its path inside the container (/models/{name}/{LIB_NAME}); mount the repository at /models.\n")
    return text


def write_triton_repo(onnx_path, repo, *, name=None, max_batch=8, instances=1, max_delay_ms=5,
                      force=False) -> Path:
    """Write REPO/NAME/{config.pbtxt,1/model.onnx[,libdefmamba_ort_ops.so]} and REPO/README.md."""
    onnx_path, repo = Path(onnx_path), Path(repo)
    name = onnx_path.stem if name is None else name
    _check_args(name, max_batch, instances, max_delay_ms)
    _, _, custom = _onnx_io(onnx_path)
    lib = None
    if custom:
        from ..libs import find_library
        lib = find_library("ort", None)
    final = repo / name
    if final.exists() and not force:
        raise UsageError(f"{final} already exists; pass force to replace it or choose another name")
    # built beside the final folder and renamed at the end: a failure leaves nothing half-written
    with atomic_directory(final, replace=force) as tmp:
        (tmp / "1").mkdir()
        shutil.copyfile(onnx_path, tmp / "1" / "model.onnx")
        lib_path = None
        if lib is not None:
            shutil.copyfile(lib, tmp / LIB_NAME)
            lib_path = f"/models/{name}/{LIB_NAME}"
        text = make_onnx_config(onnx_path, name, max_batch, instances, max_delay_ms, lib_path)
        (tmp / "config.pbtxt").write_text(text)
        # the container path does not exist here: check the library against the local copy
        local = text.replace(f'"{lib_path}"', f'"{tmp / LIB_NAME}"') if lib_path else text
        check_config(local, onnx_path, where=str(tmp / "config.pbtxt"))
    atomic_write_text(repo / "README.md", _readme(name, bool(custom)))
    return final
