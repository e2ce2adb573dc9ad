"""INT8 calibration in ONNX Runtime with the ``defmamba`` custom ops, and the INT8 entry point.

:func:`quantize_int8` is what an engine build calls: plan the Q/DQ rewrite
(:func:`defmamba_deploy.onnx.qdq.plan_int8`), take the activation ranges from the range cache
when it matches the model and the method, else calibrate, then insert the Q/DQ pairs
(:func:`defmamba_deploy.onnx.qdq.insert_qdq`, ONNX Runtime's ``quantize_static``).

Calibration uses ONNX Runtime's own calibrators (``MinMaxCalibrater`` for ``"max"``: running max
of |x|; ``PercentileCalibrater`` for ``"percentile"``: the percentile of |x| over the histogram of
all batches) fed by :class:`BatchReader`. Their ``create_inference_session`` builds a plain
session, which cannot load a model with ``defmamba`` ops; the subclasses here build it with
:func:`~defmamba_deploy.runtime.onnxrt.create_session`, which registers the custom-op library.
The calibrators run separately from ``quantize_static`` (which would build the plain session
itself) and hand it the ranges, so the cached and the freshly calibrated paths quantise from the
same numbers and give byte-identical models.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx

from ..errors import MissingDependencyError, UsageError
from ..files import atomic_write_bytes, check_writable
from ..onnx.precision import DEFAULT_POLICY, Fp32Policy
from ..onnx.qdq import (QUANT_OPS, Int8Plan, Int8Report, check_method, graph_hashes, insert_qdq, plan_int8,
                        read_cache, write_cache)
from .onnxrt import create_session


def _quantization():
    try:
        import onnxruntime.quantization as q
    except ImportError:
        raise MissingDependencyError("calibration needs onnxruntime: pip install 'defmamba-deploy[cpu]' (or [gpu])") from None
    return q


def check_batch(i: int, x, name: str, dims: list) -> np.ndarray:
    """Batch ``i`` as a contiguous float32 array of the model input's shape, or a one-line error."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception:  # noqa: BLE001
            raise UsageError(f"calibration batch {i} is a {type(x).__name__}, not an array") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise UsageError(f"calibration batch {i} has dtype {x.dtype}; give float32 images (preprocessed like the model input)")
    want = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if x.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, x.shape)):
        shown = "[" + ", ".join("?" if w is None else str(w) for w in want) + "]"
        raise UsageError(f"calibration batch {i} has shape {list(x.shape)}; model input '{name}' expects {shown} "
                         f"(? = any size)")
    return np.ascontiguousarray(x, dtype=np.float32)


def _reader_base():
    return _quantization().CalibrationDataReader


class BatchReader(_reader_base()):
    """ONNX Runtime's ``CalibrationDataReader`` over our preprocessed batches (checked one by one)."""

    def __init__(self, batches: Iterable, input_name: str, input_dims: list) -> None:
        self._it: Iterator = iter(batches)
        self.input_name, self.input_dims, self.count = input_name, input_dims, 0
        self._next = next(self._it, None)  # one batch of lookahead: an empty source is an error before ORT runs
        if self._next is None:
            raise UsageError("calibration_batches is empty: give at least one batch of preprocessed images "
                             "(e.g. 8 to 64 images from the target data), or a cache file made for this model")

    def get_next(self) -> dict | None:
        if self._next is None:
            return None
        x = check_batch(self.count, self._next, self.input_name, self.input_dims)
        self.count += 1
        self._next = next(self._it, None)
        return {self.input_name: x}


class _CustomOpSession:
    """Mixin: the calibrator's session, built with the custom-op library (see the module docstring)."""

    library: str | os.PathLike | None = None

    def create_inference_session(self):
        self.infer_session = create_session(self.augmented_model_path, providers=self.execution_providers,
                                            library=self.library)


def _calibrator(method: str, model_path: str, augmented: str, percentile: float | None, library):
    q = _quantization()
    base = q.MinMaxCalibrater if method == "max" else q.calibrate.PercentileCalibrater
    cls = type(f"DefMamba{base.__name__}", (_CustomOpSession, base), {"library": library})
    kwargs = dict(op_types_to_calibrate=list(QUANT_OPS), augmented_model_path=augmented, symmetric=True)
    if method == "percentile":
        kwargs.update(percentile=percentile, num_bins=2048)
    return cls(Path(model_path), **kwargs)


def calibrate_ranges(plan: Int8Plan, batches: Iterable, *, method: str = "max", percentile: float | None = None,
                     library: str | os.PathLike | None = None) -> tuple[dict[str, float], int]:
    """Run the float model on ``batches`` and return ``({activation: amax}, batches run)``."""
    reader = BatchReader(batches, plan.input_name, plan.input_dims)
    with tempfile.TemporaryDirectory(prefix="defmamba_calib_") as tmp:
        model_path, augmented = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "augmented.onnx")
        atomic_write_bytes(model_path, plan.model.SerializeToString())
        cal = _calibrator(method, model_path, augmented, percentile, library)
        cal.augment_graph()
        cal.create_inference_session()
        cal.collect_data(reader)
        ranges = cal.compute_data()
    amax = {}
    for t in plan.activations:
        if t not in ranges.data:
            raise RuntimeError(f"ONNX Runtime's calibrator did not report a range for {t}")
        lo, hi = ranges.data[t].range_value
        amax[t] = float(max(abs(float(np.asarray(lo).max())), abs(float(np.asarray(hi).max()))))
    return amax, reader.count


def quantize_int8(
    model: onnx.ModelProto,
    batches: Iterable[np.ndarray] | None,
    *,
    cache_path: str | os.PathLike | None = None,
    policy: Fp32Policy = DEFAULT_POLICY,
    per_channel: bool = True,
    calibration: str = "max",
    percentile: float = 99.99,
    library: str | os.PathLike | None = None,
) -> tuple[onnx.ModelProto, Int8Report]:
    """An explicitly quantised (Q/DQ, symmetric INT8) copy of the float32 ``model``.

    ``batches``: preprocessed float32 input batches (shape of the model input); consumed only when
    calibration runs. ``calibration``: ``"max"`` or ``"percentile"`` (``percentile`` of |x|).
    ``cache_path``: JSON file of tensor -> amax; used when it matches the model (graph structure
    and weights hashes, calibration method), else (re)written atomically. ``policy``: the regions
    left unquantised (the float32 policy). ``library``: the ORT custom-op library (found by default).
    """
    pct = check_method(calibration, percentile)
    plan = plan_int8(model, policy, per_channel=per_channel)
    report = Int8Report(calibration=calibration, percentile=pct)
    hashes = graph_hashes(plan.model)
    amax, why = None, "missing"
    if cache_path is not None:
        cache_path = check_writable(cache_path, "calibration cache")  # before calibrating, not after
        report.cache_path = str(cache_path)
        amax, why = read_cache(cache_path, hashes, calibration, pct, plan.activations)
        if amax is not None:
            report.cache_status = "hit"
        elif why != "missing":
            warnings.warn(f"calibration cache {cache_path} not used ({why}); recalibrating and rewriting it", stacklevel=2)
    if amax is None:
        if batches is None:
            raise UsageError("calibration_batches is None: give batches of preprocessed images")
        amax, report.calibration_batches = calibrate_ranges(plan, batches, method=calibration, percentile=pct,
                                                            library=library)
        if cache_path is not None:
            write_cache(cache_path, hashes, calibration, pct, amax, report.calibration_batches)
            report.cache_status = "written" if why == "missing" else "rewritten"
    return insert_qdq(plan, amax, report)


def quantize_int8_qdq(model, calibration_batches, *, per_channel=True, calibration="max", percentile=99.99,
                      library=None, cache=None, keep_float: Fp32Policy = DEFAULT_POLICY):
    """:func:`quantize_int8` under the keyword names of ``onnx.precision.quantize_int8_qdq``."""
    return quantize_int8(model, calibration_batches, cache_path=cache, policy=keep_float, per_channel=per_channel,
                         calibration=calibration, percentile=percentile, library=library)


__all__ = ["quantize_int8", "quantize_int8_qdq", "calibrate_ranges", "BatchReader", "check_batch"]
