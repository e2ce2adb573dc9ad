"""The PyTorch backend: the eager reference model behind the runner contract.

It is the reference parity compares against and the baseline bench measures. fp16 runs on a CUDA
device only (half precision on the CPU is emulated and no deployment target); int8 is a TensorRT
precision, not offered here.
"""
from __future__ import annotations

import numpy as np

from .base import Runner
from .registry import Backend, BackendRequest, Unavailable, register_backend


class TorchRunner(Runner):
    """``TorchRunner(module)``: an eval-mode DefMamba (classifier: one output; backbone: four)."""

    backend = "torch"

    def __init__(self, module, *, device: str = "cpu", half: bool = False, threads: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.module, self.device, self.half, self.threads = module, device, half, threads
        self.load_report = getattr(module, "load_report", None)
        from ..model.defmamba import DefMambaBackbone

        backbone = isinstance(module, DefMambaBackbone)
        self.output_names = [f"feat{i}" for i in range(4)] if backbone else ["logits"]

    def activate_impl(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.module = self.module.to(self.device)
        if self.half:
            self.module = self.module.half()

    def infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        import torch

        t = torch.from_numpy(x).to(self.device)
        if self.half:
            t = t.half()
        with torch.inference_mode():
            out = self.module(t)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return [o.float().cpu().numpy() for o in outs]

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def device_memory_mib(self) -> float | None:
        if self.device == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return None


def _create(request: BackendRequest) -> TorchRunner:
    import torch

    from ..model import create_model
    from ..onnx.sidecar import RANDOM_INIT_SEED

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if request.precision == "fp16" and device == "cpu":
        raise Unavailable("fp16 eager needs a CUDA device (CPU half is emulated and not a deployment target)")
    net = create_model(request.model, request.weights, ema=request.ema, unsafe_pickle=request.unsafe_pickle,
                       allow_nonfinite=request.allow_nonfinite,
                       seed=RANDOM_INIT_SEED, backbone=request.backbone)
    return TorchRunner(net, device=device, half=request.precision == "fp16", threads=request.threads)


def _check(request: BackendRequest) -> None:
    if request.precision == "int8":
        raise Unavailable("int8 is a TensorRT precision (PyTorch eager has no int8 path for this model)")


register_backend(Backend("torch", "PyTorch eager (the reference)", _create, precisions=("fp32", "fp16", "int8"),
                         check=_check))
