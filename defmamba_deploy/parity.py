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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from . import checks
from .errors import UsageError

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


def _run_batched(runner, x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Every output of ``runner`` over x in chunks of ``batch``, each output concatenated."""
    parts = [runner.infer(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _compare_all(report: "ParityReport", backend: str, batch: int, outs: list[np.ndarray], refs: list[np.ndarray],
                 names: list[str], atol: float, rtol: float, classes: bool) -> None:
    if len(outs) != len(refs):
        raise UsageError(f"{backend} returned {len(outs)} outputs, the reference {len(refs)}: the file holds another "
                         "model (classifier vs --backbone)")
    for out, ref, name in zip(outs, refs, names):
        report.rows.append(ParityRow(backend, batch, len(out), **compare(out, ref, atol, rtol, classes=classes), output=name))


def _backbone_of_files(files: Sequence, backbone: bool | None, say) -> bool:
    """Whether to compare the backbone: as asked, or as the given files' sidecars say; they must agree."""
    from .onnx import read_sidecar

    given = {}
    for f in files:
        side = read_sidecar(f)
        given[f] = bool(side is not None and side.backbone)
    if backbone is None:
        backbone = any(given.values())
        if backbone:
            say("the given ONNX file is the backbone export: comparing its four feature maps")
    for f, is_backbone in given.items():
        if is_backbone != backbone:
            raise UsageError(f"{f} is the {'backbone' if is_backbone else 'classifier'} export but this parity run "
                             f"compares the {'backbone' if backbone else 'classifier'}: "
                             f"{'drop' if backbone else 'pass'} --backbone, or give the matching file")
    return backbone


def run_parity(
    model: str = "s",
    weights: str | os.PathLike | None = None,
    *,
    ema: bool = False,
    unsafe_pickle: bool = False,
    allow_nonfinite: bool = False,
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

    Backends come from the registry (:mod:`defmamba_deploy.runtime.registry`). A backend that takes an
    ONNX file gets ``onnx`` (custom-op) or ``portable_onnx``; one that takes an engine gets ``engine``.
    Without a file, the ONNX backends check the ``defmamba_<m>.onnx`` / ``defmamba_<m>_portable.onnx``
    that ``defmamba-deploy export`` wrote in the current folder when it matches this run (variant, form,
    weights, input shape: ``OnnxSidecar.problem``) and ``use_exported`` is true; otherwise they export
    the model to a temporary folder first.

    ``backbone``: compare the dense-prediction backbone's four feature maps instead of the logits (no
    top-1 / top-5 there); None = what the given ``onnx`` / ``portable_onnx`` sidecars say (else False).
    """
    from .model import check_input_size, resolve_name
    from .runtime.registry import BackendRequest, check_backend_names, get_backend

    name = resolve_name(model)
    chosen = check_backend_names(backends)
    batches = checks.int_list(batches, "--batch")
    checks.count(samples, "--samples", low=0)
    checks.optional_count(threads, "--threads")
    # NaN would pass every comparison (every test against it is false) and a negative tolerance none
    atol = checks.number(atol, "--atol", low=0)
    rtol = checks.number(rtol, "--rtol", low=0)
    check_input_size(*img_size)
    say = progress or (lambda msg: None)
    backbone = _backbone_of_files([f for f in (onnx, portable_onnx) if f is not None], backbone, say)
    files = {"onnx": onnx, "portable": portable_onnx, "engine": engine}

    def file_for(b) -> str | os.PathLike | None:
        if b.file_kind == "onnx":
            return files["portable" if b.portable else "onnx"]
        return files.get(b.file_kind) if b.file_kind else None

    with tempfile.TemporaryDirectory(prefix="defmamba_parity_") as tmp:
        base = BackendRequest(name, weights, ema=ema, unsafe_pickle=unsafe_pickle, allow_nonfinite=allow_nonfinite,
                              img_size=tuple(img_size),
                              batches=tuple(batches), threads=threads, library=library, workdir=Path(tmp),
                              backbone=backbone, use_exported=use_exported, progress=say)
        requests = {b.name: replace(base, file=file_for(b)) for b in chosen}
        for b in chosen:  # fail fast, before the slow reference run
            b.precheck(requests[b.name])
        x, names = make_inputs(img_size, samples, images)
        report = ParityReport(name, tuple(img_size), atol, rtol, names)
        say(f"PyTorch reference: DefMamba-{name} {'backbone' if backbone else 'classifier'} on {len(x)} inputs "
            f"at {img_size[0]}x{img_size[1]}")
        if weights is None:
            say("no --weights: comparing the seeded random initialisation; fine for parity, meaningless for accuracy")
        reference = get_backend("torch").create(replace(base, threads=None)).activate()
        out_names = reference.output_names
        ref = _run_batched(reference, x, max(batches))
        for b in chosen:
            if b.name == "torch":
                runner = reference
            else:
                runner = b.create(replace(requests[b.name], load_report=reference.load_report))
                say(f"running {b.name}: {getattr(runner, 'path', runner.name)}")
            with runner:
                for n in batches:
                    _compare_all(report, b.name, n, _run_batched(runner, x, n), ref, out_names, atol, rtol, not backbone)
    return report
