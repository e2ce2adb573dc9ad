"""Safe, strict checkpoint loading for DefMamba.

Accepted layouts: a bare state_dict; ``{'model': sd}`` and ``{'model_ema': sd}`` (the authors'
training files, pick with ``ema``); ``{'state_dict': sd}``; keys with a DDP ``module.`` prefix
(or a detector's ``backbone.`` prefix); the legacy VMamba-style names listed in docs/model.md, Checkpoints.

Safety: files are read with ``torch.load(weights_only=True)``, which only rebuilds tensors and
plain containers. The authors' training files also hold a pickled ``yacs`` ``CfgNode`` (their
training config), which that unpickler refuses; for exactly that case the file is re-read by an
unpickler restricted to the same allow-list plus an inert stand-in for that one class (a ``dict``
subclass that runs no code of yacs), so those files load without yacs and without executing
anything. Any other object in the pickle is refused with a message; ``unsafe_pickle=True`` (CLI:
``--unsafe-pickle``) lifts the check for files you trust.

Strictness: every key must be present, known and of the right shape; otherwise a
:class:`CheckpointError` lists the missing, unexpected and mis-shaped keys and, when the shapes
identify another variant, names it.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import types
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import require_file, sha256_file

__all__ = ["load_checkpoint", "read_state_dict", "LoadReport", "guess_variant"]

_CONTAINER_KEYS = ("model", "state_dict")
_STRIP_PREFIXES = ("module.", "backbone.", "model.")
# legacy VMamba-style names -> current names (regex on the full key)
_LEGACY = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"(\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"\.self_attention\."), ".op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


class _YacsCfgNode(dict):
    """Inert stand-in for ``yacs.config.CfgNode``: keeps the config's items and attributes as data."""


_YACS_NAME = "yacs.config.CfgNode"


def _restricted_pickle_module() -> types.ModuleType:
    """A pickle module whose Unpickler resolves only torch's weights-only allow-list plus the yacs stand-in.

    torch's own weights-only unpickler refuses dict subclasses (``SETITEMS``), so the authors'
    config cannot be allow-listed there; this is the documented "restricting globals" pattern of
    Python's pickle module with exactly the same allow-list, so no other callable can be reached.
    """
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    allowed[_YACS_NAME] = _YacsCfgNode

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            obj = allowed.get(f"{module}.{name}")
            if obj is None:
                raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name} (weights_only)")
            return obj

    mod = types.ModuleType("defmamba_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.__name__ = "defmamba_restricted_pickle"
    return mod


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    path: str
    source: str  # which entry of the file was used: 'model', 'model_ema', 'state_dict' or 'root'
    renamed: int = 0  # keys changed by prefix stripping or legacy renames
    ignored: list[str] = field(default_factory=list)  # keys deliberately not loaded (e.g. classifier in a backbone)
    initialised: list[str] = field(default_factory=list)  # model keys absent from the file, left at init
    sha256: str = ""
    unsafe: bool = False

    def summary(self) -> str:
        parts = [f"loaded {self.path} ({self.source}"]
        if self.renamed:
            parts.append(f", {self.renamed} keys renamed")
        if self.ignored:
            parts.append(f", {len(self.ignored)} keys ignored")
        if self.initialised:
            parts.append(f", {len(self.initialised)} keys left at init: {', '.join(sorted({k.split('.')[0] for k in self.initialised}))}")
        parts.append(")")
        return "".join(parts)


def _torch_load(path: Path, unsafe_pickle: bool) -> object:
    if unsafe_pickle:
        warnings.warn(f"--unsafe-pickle: {path} is unpickled with full Python object loading; only do this for files you trust", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _YACS_NAME not in str(e):
            raise
    # the authors' training file: same allow-list plus the inert yacs stand-in
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())


def read_state_dict(path: str | os.PathLike, *, ema: bool = False, unsafe_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file and return ``(state_dict, source)`` without touching a model."""
    path = require_file(path, "checkpoint", "check the --weights path", " (0 bytes): re-download or re-copy it",
                        CheckpointError)
    try:
        obj = _torch_load(path, unsafe_pickle)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"(?:Unsupported global|GLOBAL) *:? *(?:GLOBAL )?([\w.]+)", msg)
        if "weights_only" in msg or m:
            what = m.group(1) if m else "a non-tensor object"
            raise CheckpointError(
                f"refusing to load {path}: its pickle contains {what}, which could run code; "
                f"if you trust the file, pass --unsafe-pickle (unsafe_pickle=True)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({msg.splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError, AttributeError, TypeError, io.UnsupportedOperation) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file ({first}): re-download it") from None

    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or a dict of them")
    if ema:
        if "model_ema" not in obj:
            raise CheckpointError(f"--ema was given but {path} has no 'model_ema' entry (it has: {', '.join(map(str, list(obj)[:8]))})")
        sd, source = obj["model_ema"], "model_ema"
    else:
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                sd, source = obj[key], key
                break
        else:
            sd, source = obj, "root"
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} ({source}) contains no tensors: is it a DefMamba checkpoint?")
    return tensors, source


def _normalise_keys(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    out, renamed = {}, 0
    for key, value in sd.items():
        new = key
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if new.startswith(prefix):
                    new, changed = new[len(prefix):], True
        for pattern, repl in _LEGACY:
            new = pattern.sub(repl, new)
        renamed += new != key
        out[new] = value
    return out, renamed


def guess_variant(sd: dict[str, torch.Tensor]) -> str | None:
    """Which variant (tiny/small/base) a state_dict's shapes describe, or None."""
    stem = sd.get("patch_embed.5.weight")
    if stem is None:
        return None
    depth3 = len({k.split(".")[3] for k in sd if k.startswith("layers.2.blocks.")})
    c1 = stem.shape[0]
    if c1 == 48 and depth3 == 5:
        return "tiny"
    if c1 == 96 and depth3 == 6:
        return "small"
    if c1 == 96 and depth3 == 16:
        return "base"
    return None


def _examples(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def load_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    ema: bool = False,
    strict: bool = True,
    unsafe_pickle: bool = False,
) -> LoadReport:
    """Load a checkpoint file into ``model`` (a :class:`DefMamba` or :class:`DefMambaBackbone`).

    ``ema`` picks ``model_ema`` from a training file. With ``strict`` (default) any missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` naming them (and the variant the
    file is for, when its shapes say). A backbone accepts a classification checkpoint: the
    ``classifier.*`` keys are ignored and the ``outnorm*`` LayerNorms, which it lacks, stay at
    their identity initialisation (reported in ``LoadReport.initialised``).
    """
    raw, source = read_state_dict(path, ema=ema, unsafe_pickle=unsafe_pickle)
    sd, renamed = _normalise_keys(raw)
    report = LoadReport(path=str(path), source=source, renamed=renamed, sha256=sha256_file(path), unsafe=unsafe_pickle)
    own = model.state_dict()
    is_backbone = any(k.startswith("outnorm") for k in own)
    if is_backbone:
        report.ignored = sorted(k for k in sd if k.startswith("classifier."))
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}

    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if is_backbone and missing and all(k.startswith("outnorm") for k in missing):
        report.initialised, missing = missing, []
    if strict and (missing or unexpected or misshaped):
        variant = getattr(getattr(model, "cfg", None), "name", "this model")
        guess = guess_variant(sd)
        parts = [f"checkpoint {path} does not fit DefMamba-{variant}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)});")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)});")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped keys (file vs model: {_examples(misshaped, 2)});")
        if guess and guess != variant:
            parts.append(f"its shapes are those of DefMamba-{guess}: use --model {guess[0]}")
        elif not guess:
            parts.append("it matches no DefMamba variant (truncated or another architecture?)")
        err = CheckpointError(" ".join(parts).rstrip(";"))
        err.missing, err.unexpected, err.misshaped = missing, unexpected, misshaped  # type: ignore[attr-defined]
        raise err
    own_dtype = {k: v.dtype for k, v in own.items()}
    sd = {k: v.to(own_dtype[k]) for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(sd, strict=False)
    return report
