"""The TensorRT 10 INT8 entropy calibrator, fed by our preprocessing.

TensorRT 10 calibrates INT8 implicitly (``BuilderFlag.INT8`` + a calibrator); TensorRT 11 removed
that, and :mod:`.build` expresses INT8 as Q/DQ in the ONNX instead. The calibration cache is read
when present and written atomically, so a rebuild reuses it and an interrupted build leaves none.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import UsageError
from ...files import atomic_write_bytes
from .env import DeviceBuffer, cuda_check, cudart, require_tensorrt


def make_entropy_calibrator(trt, batches: Sequence[np.ndarray], input_name: str,
                            cache_path: str | os.PathLike | None):
    """An ``IInt8EntropyCalibrator2`` over ``batches`` (each (N, 3, H, W) float32); reuses ``cache_path``."""
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
    cache = Path(cache_path) if cache_path else None
    if not batches and not (cache and cache.is_file()):
        raise UsageError("--int8 needs calibration images (--calib-images DIR) or an existing calibration cache")
    if len({b.shape for b in batches}) > 1:
        raise UsageError(f"calibration batches differ in shape ({sorted({b.shape for b in batches})}): "
                         f"give images of one size and a --calib-samples that is a multiple of --calib-batch")
    runtime = cudart()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches, self.index, self.cache_path = batches, 0, cache
            self.input_name = input_name
            self.device = DeviceBuffer(runtime, batches[0].nbytes) if batches else None

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0]) if self.batches else 1

        def get_batch(self, names, p_str=None):
            if self.index >= len(self.batches):
                return None  # tells TensorRT the data is exhausted
            batch = self.batches[self.index]
            self.index += 1
            cuda_check(runtime.cudaMemcpy(self.device.ptr, batch.ctypes.data, batch.nbytes,
                                          runtime.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.device.ptr)]

        def read_calibration_cache(self):
            if self.cache_path and self.cache_path.is_file():
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, data) -> None:
            if self.cache_path:
                atomic_write_bytes(self.cache_path, bytes(data))

    return _Calibrator()


def EntropyCalibrator(batches, input_name: str, cache_path=None):  # noqa: N802 - reads like a class
    return make_entropy_calibrator(require_tensorrt(), batches, input_name, cache_path)
