"""The runner contract every backend implements, after Polygraphy's ``BaseRunner``.

A :class:`Runner` wraps one loaded model (a PyTorch module, an ONNX Runtime session, a TensorRT
engine): ``activate`` loads it, ``infer`` runs one NCHW float32 batch and returns every output as
numpy arrays in the model's output order, ``deactivate`` frees it. Runners are context managers::

    with runner:
        outputs = runner.infer(x)

``infer`` checks its input first (rank, dtype, channels, minimum size, and the model's own fixed
dims) so that every backend rejects bad input with the same one-line messages; a caller that has
checked a batch once (a benchmark's timed loop) passes ``check=False``. The wall time of the last
``infer`` is ``last_inference_time()``.

Parity, bench and the CLI never name a backend class: they ask :mod:`.registry` for the backend
by name and call its ``create``.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..errors import UsageError
from ..model import MIN_INPUT_SIZE


def check_image_batch(x, fixed_shape: Sequence | None = None, *, fix: str = "") -> np.ndarray:
    """``x`` as a contiguous (B, 3, H, W) float32 array, or a one-line UsageError.

    ``fixed_shape``: the model's input shape; int entries must match (symbolic ones are free).
    ``fix``: what to do when a fixed dim does not match (re-export, rebuild the engine).
    """
    if not isinstance(x, np.ndarray):
        raise UsageError(f"input must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise UsageError(f"input must have rank 4 (batch, 3, height, width), got shape {x.shape}")
    if x.dtype != np.float32:
        raise UsageError(f"input must be float32, got {x.dtype} (use x.astype(np.float32))")
    if x.shape[1] != 3:
        raise UsageError(f"input must have 3 channels (RGB, NCHW layout), got shape {x.shape}")
    if x.shape[0] == 0:
        raise UsageError(f"input has batch size 0 (shape {x.shape}): give at least one image")
    h, w = x.shape[2], x.shape[3]
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise UsageError(f"input {h}x{w} is too small: DefMamba needs height and width >= {MIN_INPUT_SIZE} px")
    for axis, (want, got) in enumerate(zip(fixed_shape or (), x.shape)):
        if isinstance(want, int) and want != got:
            raise UsageError(f"this model was exported with a fixed input shape {list(fixed_shape)}; got {list(x.shape)} "
                             f"(axis {axis}); {fix or 're-export with --dynamic batch or --dynamic shape'}")
    return np.ascontiguousarray(x)


class Runner:
    """One loaded model of one backend. Subclasses implement ``activate_impl`` and ``infer_impl``.

    Class attributes: ``backend`` (the registry name, e.g. ``"ort"``). Instance attributes set by
    ``activate_impl``: ``input_name``, ``input_shape`` (ints and symbolic names, as the model states
    them) and ``output_names``.
    """

    backend = "runner"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.backend
        self.is_active = False
        self.input_name = "input"
        self.input_shape: list = ["batch", 3, "height", "width"]
        self.output_names: list[str] = []
        self._last_time: float | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    # --- inference -------------------------------------------------------------------------------
    def check_input(self, x) -> np.ndarray:
        return check_image_batch(x, self.input_shape)

    def infer(self, x, *, check: bool = True) -> list[np.ndarray]:
        """Every output for one (B, 3, H, W) float32 batch, in ``output_names`` order."""
        if not self.is_active:
            self.activate()
        if check:
            x = self.check_input(x)
        t0 = time.perf_counter()
        out = self.infer_impl(x)
        self._last_time = time.perf_counter() - t0
        return out

    def infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, x) -> np.ndarray:
        """The first output (the logits of a classifier)."""
        return self.infer(x)[0]

    def last_inference_time(self) -> float | None:
        """Seconds the last ``infer`` took (inside the backend, after the input check)."""
        return self._last_time

    def get_input_metadata(self) -> dict[str, tuple[str, list]]:
        """{input name: (dtype, shape)}, shapes with symbolic names for dynamic dims."""
        return {self.input_name: ("float32", list(self.input_shape))}

    # --- for benchmarks ----------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU); called before a benchmark reads the clock."""

    def device_memory_mib(self) -> float | None:
        """Peak device memory in MiB where the backend exposes it, else None."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {'active' if self.is_active else 'inactive'}>"
