"""Parity: run the same inputs through PyTorch and the deployment backends and compare.

Inputs are seeded random-normal tensors plus real photos (``--images DIR`` or the sample photos
that scikit-image ships), preprocessed exactly like ``predict``. Each backend runs them at every
batch size asked for (e.g. 1 and 4 from one dynamic-batch file) and is compared with the PyTorch
reference:

- ``max_abs``: max |out - ref|;  ``max_rel``: max_abs / max |ref| (error relative to the output scale;
  an elementwise |d|/|ref| explodes at logits near 0 and says nothing);
- ``cosine``: the lowest per-sample cosine similarity;
- ``top1`` / ``top5``: fraction of samples whose top-1 class / top-5 set equals the reference's.

A row passes when polygraphy's elementwise comparator (``SimpleCompareFunc``: every element within
atol or within rtol of the reference) accepts the outputs and top-1 agrees on every sample; without
polygraphy, numpy's allclose rule |out - ref| <= atol + rtol * |ref| decides. The error statistics
and cosine/top-k agreement are computed here with NumPy (polygraphy has no cosine or top-k).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError

BACKENDS = ("torch", "ort", "ort-portable", "trt")
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3  # float32 through ~20 blocks, re-associated sums; see README


@dataclass
class ParityRow:
    backend: str
    batch: int
    samples: int
    max_abs: float
    max_rel: float
    cosine: float
    top1: float | None  # None for feature maps (backbone), where class agreement means nothing
    top5: float | None
    passed: bool
    note: str = ""
    output: str = "logits"


@dataclass
class ParityReport:
    model: str
    img_size: tuple[int, int]
    atol: float
    rtol: float
    inputs: list[str]
    rows: list[ParityRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _polygraphy_within_tolerance(out: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> bool | None:
    """Polygraphy's elementwise comparator (an element passes within atol or rtol), or None if absent."""
    try:
        from polygraphy.comparator import IterationResult
        from polygraphy.logger import G_LOGGER

        try:
            from polygraphy.comparator import SimpleCompareFunc as _Simple
        except ImportError:  # polygraphy < 0.50
            from polygraphy.comparator import CompareFunc

            _Simple = CompareFunc.simple
    except ImportError:
        return None
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    func = _Simple(atol=atol, rtol=rtol, check_error_stat="elemwise")
    result = func(IterationResult({"out": ref}, runner_name="reference"), IterationResult({"out": out}, runner_name="backend"))
    return bool(result["out"])


def compare(out: np.ndarray, ref: np.ndarray, atol: float, rtol: float, *, classes: bool = True) -> dict:
    """Error statistics of ``out`` against ``ref`` (first axis = samples). ``classes``: the outputs are
    logits, so top-1 / top-5 agreement is computed and top-1 must agree on every sample to pass."""
    if out.shape != ref.shape:
        raise UsageError(f"backend output shape {list(out.shape)} differs from the reference's {list(ref.shape)}: "
                         "the ONNX file or engine holds another model (classifier vs --backbone, or another size)")
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out64 - ref64)
    scale = max(np.abs(ref64).max(), 1e-12)
    a, b = out64.reshape(len(out64), -1), ref64.reshape(len(ref64), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    top1 = top5 = None
    if classes:
        top1 = float((a.argmax(1) == b.argmax(1)).mean())
        k = min(5, a.shape[1])
        top5 = float(np.mean([set(np.argsort(-x)[:k]) == set(np.argsort(-y)[:k]) for x, y in zip(a, b)]))
    ok = _polygraphy_within_tolerance(out, ref, atol, rtol)
    if ok is None:  # polygraphy not installed: numpy's allclose rule
        ok = bool(np.all(diff <= atol + rtol * np.abs(ref64)))
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale), "cosine": float(cos.min()),
            "top1": top1, "top5": top5, "passed": ok and (top1 is None or top1 == 1.0)}


def make_inputs(img_size: tuple[int, int], samples: int, images: str | os.PathLike | None, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    from .data import list_images, preprocess, sample_images

    rng = np.random.default_rng(seed)
    arrays, names = [], []
    for i in range(samples):
        arrays.append(rng.standard_normal((3, *img_size)).astype(np.float32))
        names.append(f"random-normal#{i}")
    files = list_images(images) if images is not None else sample_images()
    for f in files:
        arrays.append(preprocess(f, img_size))
        names.append(Path(f).name)
    if not arrays:
        raise UsageError("no inputs: pass --samples N > 0 or --images DIR")
    return np.stack(arrays), names


def _check_same_weights(path, exported: dict | None, weights, load_report) -> None:
    """The ONNX file must hold the weights the PyTorch reference uses, or the comparison means nothing."""
    if not isinstance(exported, dict):
        return
    if weights is None and "sha256" in exported:
        raise UsageError(f"{path} was exported from {exported.get('path')}: pass the same file with --weights")
    if weights is not None and "random_init_seed" in exported:
        raise UsageError(f"{path} was exported with random weights, not --weights {weights}: re-export with --weights")
    if weights is not None and load_report is not None and exported.get("sha256") not in (None, load_report.sha256):
        raise UsageError(f"{path} was exported from other weights ({exported.get('path')}) than --weights {weights}: pass the same file")


def exported_file_problem(path, side: dict | None, name: str, portable: bool, weights, load_report,
                          img_size: tuple[int, int], batches: Sequence[int], backbone: bool = False) -> str | None:
    """Why ``path`` (a file ``defmamba-deploy export`` wrote) cannot stand in for this parity run, or None.

    It must be the same variant, classifier (not backbone), form (custom-op or portable) and weights, and
    its input shape must admit ``img_size`` and every batch size.
    """
    from .onnx.export import RANDOM_INIT_SEED

    if not side:
        return "it has no .onnx.json sidecar"
    if side.get("variant") != name:
        return f"it holds DefMamba-{side.get('variant')}, not DefMamba-{name}"
    if bool(side.get("backbone")) != backbone:
        return "it is the backbone export" if side.get("backbone") else "it is the classifier export"
    if bool(side.get("portable")) != portable:
        return "it is the portable export" if side.get("portable") else "it is the custom-op export"
    try:
        _check_same_weights(path, side.get("weights"), weights, load_report)
    except UsageError as e:
        return str(e).replace(f"{path} was", "it was", 1)
    exported = side.get("weights") or {}
    if weights is None and exported.get("random_init_seed", RANDOM_INIT_SEED) != RANDOM_INIT_SEED:
        return f"it holds the random initialisation of seed {exported['random_init_seed']}, not {RANDOM_INIT_SEED}"
    if load_report is not None and exported.get("source") not in (None, load_report.source):
        return f"it was exported from the checkpoint's '{exported['source']}' entry, not '{load_report.source}'"
    inputs = side.get("inputs") or [{}]
    shape = inputs[0].get("shape") or []
    if len(shape) != 4:
        return "its sidecar has no input shape"
    wanted = {0: list(batches), 2: [img_size[0]], 3: [img_size[1]]}
    for axis, values in wanted.items():
        if isinstance(shape[axis], int) and any(v != shape[axis] for v in values):
            what = "batch" if axis == 0 else "input size"
            return f"its {what} is fixed to {shape[axis]} (exported with --dynamic {side.get('dynamic')})"
    return None


def _run_batched(fn, x: np.ndarray, batch: int) -> list[np.ndarray]:
    """fn(chunk) -> list of outputs, over x in chunks of ``batch``; each output concatenated."""
    parts = [fn(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _compare_all(report: "ParityReport", backend: str, batch: int, outs: list[np.ndarray], refs: list[np.ndarray],
                 names: list[str], atol: float, rtol: float, classes: bool) -> None:
    if len(outs) != len(refs):
        raise UsageError(f"{backend} returned {len(outs)} outputs, the reference {len(refs)}: the file holds another "
                         "model (classifier vs --backbone)")
    for out, ref, name in zip(outs, refs, names):
        report.rows.append(ParityRow(backend, batch, len(out), **compare(out, ref, atol, rtol, classes=classes), output=name))


def run_parity(
    model: str = "s",
    weights: str | os.PathLike | None = None,
    *,
    ema: bool = False,
    unsafe_pickle: bool = False,
    onnx: str | os.PathLike | None = None,
    portable_onnx: str | os.PathLike | None = None,
    backends: Sequence[str] = ("torch", "ort", "ort-portable"),
    engine: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    samples: int = 2,
    img_size: tuple[int, int] = (224, 224),
    batches: Sequence[int] = (1, 4),
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    threads: int | None = None,
    library: str | os.PathLike | None = None,
    use_exported: bool = True,
    backbone: bool | None = None,
    progress=None,
) -> ParityReport:
    """Compare each backend with PyTorch on the same inputs (see module docstring).

    Without ``onnx`` / ``portable_onnx``, the file that ``defmamba-deploy export`` writes by default in the
    current folder (``defmamba_<m>.onnx``, ``defmamba_<m>_portable.onnx``) is checked when it matches this
    run (variant, form, weights, input shape; see ``exported_file_problem``) and ``use_exported`` is true;
    otherwise the model is exported to a temporary folder first.

    ``backbone``: compare the dense-prediction backbone's four feature maps instead of the logits (no
    top-1 / top-5 there); None = what the given ``onnx`` / ``portable_onnx`` sidecars say (else False).
    """
    import torch

    from .model import check_input_size, create_model, resolve_name
    from .onnx import export_onnx, read_sidecar
    from .onnx.export import RANDOM_INIT_SEED, default_output
    from .runtime.onnxrt import OrtRunner

    name = resolve_name(model)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"batch sizes must be >= 1, got {list(batches)}")
    if samples < 0:
        raise UsageError(f"--samples must be >= 0, got {samples}")
    check_input_size(*img_size)
    if "trt" in backends:  # fail fast, before the slow reference run
        from .runtime.trt_build import require_tensorrt

        require_tensorrt()
        if engine is None:
            raise UsageError("--backends trt needs --engine F (build one with defmamba-deploy build-engine)")
    say = progress or (lambda msg: None)
    given = {f: bool((read_sidecar(f) or {}).get("backbone")) for f in (onnx, portable_onnx) if f is not None}
    if backbone is None:
        backbone = any(given.values())
        if backbone:
            say("the given ONNX file is the backbone export: comparing its four feature maps")
    for f, is_backbone in given.items():
        if is_backbone != backbone:
            raise UsageError(f"{f} is the {'backbone' if is_backbone else 'classifier'} export but this parity run "
                             f"compares the {'backbone' if backbone else 'classifier'}: "
                             f"{'drop' if backbone else 'pass'} --backbone, or give the matching file")
    x, names = make_inputs(img_size, samples, images)
    report = ParityReport(name, tuple(img_size), atol, rtol, names)
    what = "backbone" if backbone else "classifier"
    say(f"PyTorch reference: DefMamba-{name} {what} on {len(x)} inputs at {img_size[0]}x{img_size[1]}")
    with tempfile.TemporaryDirectory(prefix="defmamba_parity_") as tmp:
        net = create_model(name, weights, ema=ema, unsafe_pickle=unsafe_pickle, seed=RANDOM_INIT_SEED, backbone=backbone)
        if weights is None:
            say(f"no --weights: comparing the seeded random initialisation (seed {RANDOM_INIT_SEED}); fine for parity, meaningless for accuracy")

        def torch_fwd(a: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                out = net(torch.from_numpy(a))
            return [t.numpy() for t in out] if backbone else [out.numpy()]

        out_names = [f"feat{i}" for i in range(4)] if backbone else ["logits"]
        ref = _run_batched(torch_fwd, x, max(batches))
        files = {"ort": onnx, "ort-portable": portable_onnx}
        for backend in backends:
            if backend == "torch":
                for b in batches:
                    _compare_all(report, backend, b, _run_batched(torch_fwd, x, b), ref, out_names, atol, rtol, not backbone)
                continue
            if backend == "trt":
                from .runtime.trt import TrtRunner
                from .runtime.trt_build import require_tensorrt

                require_tensorrt()
                if engine is None:
                    raise UsageError("--backends trt needs --engine F (build one with defmamba-deploy build-engine)")
                say(f"running trt: {engine}")
                trt_runner = TrtRunner(engine)
                for b in batches:
                    _compare_all(report, backend, b, _run_batched(trt_runner.run, x, b), ref, out_names, atol, rtol,
                                 not backbone)
                continue
            path = files[backend]
            if path is None and use_exported:
                local = default_output(name, portable=backend == "ort-portable", backbone=backbone)
                if local.is_file():
                    problem = exported_file_problem(local, read_sidecar(local), name, backend == "ort-portable", weights,
                                                    net.load_report, img_size, batches, backbone)
                    if problem is None:
                        say(f"using {local} (written by defmamba-deploy export; --reexport checks a fresh export instead)")
                        path = local
                    else:
                        say(f"not using {local}: {problem}")
            if path is None:
                say(f"exporting {'portable' if backend == 'ort-portable' else 'custom-op'} ONNX for {backend}")
                path = export_onnx(name, weights, ema=ema, unsafe_pickle=unsafe_pickle, img_size=img_size, batch=1,
                                   dynamic="batch", portable=backend == "ort-portable", backbone=backbone,
                                   output=Path(tmp) / f"{backend}.onnx").path
            else:
                side = read_sidecar(path)
                if side and side.get("variant") != name:
                    raise UsageError(f"{path} was exported from DefMamba-{side.get('variant')}, not DefMamba-{name}: "
                                     f"pass --model {side.get('variant', '?')[0]} or the right --onnx file")
                if side:
                    _check_same_weights(path, side.get("weights"), weights, net.load_report)
            say(f"running {backend}: {path}")
            runner = OrtRunner(path, threads=threads, library=library if backend == "ort" else None)
            for b in batches:
                _compare_all(report, backend, b, _run_batched(runner.run, x, b), ref, out_names, atol, rtol, not backbone)
    return report
