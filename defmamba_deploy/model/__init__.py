"""The DefMamba reference model: variants, checkpoint loading and the ``create_model`` factory.

The variant registry and the input-size rule (:mod:`.config`, :mod:`.registry`) load without
torch; the network and checkpoint names (``DefMamba``, ``load_checkpoint`` ...) are imported on
first use, so that the ONNX Runtime side of the package can use this package without PyTorch.
"""
from __future__ import annotations

import os

from ..lazy import lazy_attributes
from .config import MIN_INPUT_SIZE, DefMambaConfig, check_input_size
from .registry import get_config, list_models, resolve_name, short_name

__all__ = [
    "create_model", "load_checkpoint", "read_state_dict", "guess_variant", "LoadReport", "list_models",
    "get_config", "resolve_name", "short_name", "DefMamba", "DefMambaBackbone", "DefMambaConfig",
    "MIN_INPUT_SIZE", "check_input_size",
]

# imported by __getattr__ on first use: both modules import torch
_CHECKPOINT_NAMES = ("load_checkpoint", "read_state_dict", "guess_variant", "LoadReport")
_NETWORK_NAMES = ("DefMamba", "DefMambaBackbone")


def _checkpoint():
    from . import checkpoint

    return checkpoint


def _network():
    from . import defmamba

    return defmamba


__getattr__, __dir__ = lazy_attributes(__name__, globals(), {**dict.fromkeys(_CHECKPOINT_NAMES, _checkpoint),
                                                             **dict.fromkeys(_NETWORK_NAMES, _network)}, __all__)


def create_model(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    ema: bool = False,
    backbone: bool = False,
    unsafe_pickle: bool = False,
    allow_nonfinite: bool = False,
    num_classes: int | None = None,
    seed: int | None = None,
):
    """Build DefMamba ``name`` ('t'|'s'|'b' or 'tiny'|'small'|'base') in eval mode.

    ``weights``: a checkpoint file loaded strictly (see :func:`load_checkpoint`); ``ema`` picks the
    EMA weights of a training file; ``allow_nonfinite`` loads weights that hold NaN/inf, which are
    refused by default as a damaged file. ``backbone=True`` gives the dense-prediction backbone that
    returns four feature maps. The load report is kept as ``model.load_report`` (None without weights).
    ``seed`` makes a random initialisation reproducible (the global RNG is left untouched), so that
    separately built copies, e.g. an exported file and a parity reference, hold the same weights.
    """
    from .checkpoint import load_checkpoint
    from .defmamba import DefMamba, DefMambaBackbone

    cfg = get_config(name)
    if num_classes is not None:
        from dataclasses import replace

        cfg = replace(cfg, num_classes=num_classes)
    cls = DefMambaBackbone if backbone else DefMamba
    if seed is not None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(cfg)
    else:
        model = cls(cfg)
    model.load_report = None
    if weights is not None:
        model.load_report = load_checkpoint(model, weights, ema=ema, unsafe_pickle=unsafe_pickle,
                                            allow_nonfinite=allow_nonfinite)
    return model.eval()
