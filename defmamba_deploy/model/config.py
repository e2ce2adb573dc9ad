"""DefMamba's variant hyper-parameters and input-size rule, without torch.

The runtime (sessions, Predictor, input checks) and the sidecar need these; keeping them apart
from the network lets a service import the runtime without importing PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["DefMambaConfig", "MIN_INPUT_SIZE", "check_input_size"]

#: Smallest input side: the stem and three downsamplings divide by 32, and a stage of side 1
#: makes the deformable grid divide by zero (H - 1), so every stage needs a side of at least 2.
MIN_INPUT_SIZE = 33


@dataclass(frozen=True)
class DefMambaConfig:
    """Architecture hyper-parameters of one variant."""

    name: str
    embed_dim: int
    depths: tuple[int, ...]
    drop_path_rate: float = 0.2  # training only, kept for the record
    d_state: int = 16
    mlp_ratio: float = 4.0
    offset_kernels: tuple[int, ...] = (9, 7, 5, 3)
    num_classes: int = 1000
    in_chans: int = 3
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: int = 224
    params: int = 0  # official parameter count of the classifier, checked by the tests
    extra: dict = field(default_factory=dict)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


def check_input_size(h: int, w: int) -> None:
    """Raise a one-line :class:`UsageError` for inputs the model cannot process."""
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise UsageError(
            f"input {h}x{w} is too small: DefMamba needs height and width >= {MIN_INPUT_SIZE} px "
            f"(the 4th stage would have a side of 1); resize the image or pass a larger --img-size"
        )
