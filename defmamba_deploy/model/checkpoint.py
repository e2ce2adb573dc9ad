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

Malformed files: whatever is wrong with a file (not a torch file, truncated, wrong structure,
non-tensor values, sparse/meta/quantized or non-float tensors, NaN/inf weights) is one
:class:`CheckpointError` with a one-line message naming the file and the problem. Only a pickle
whose GLOBAL the weights-only unpickler refuses is called code-bearing and pointed at
``--unsafe-pickle``; a file that fails for any other reason is called corrupt or another format.
NaN/inf weights are refused unless ``allow_nonfinite=True``: DefMamba has no buffer or parameter
that is legitimately non-finite, so one is damage (a bad copy, a diverged run), which would
otherwise surface only as NaN predictions. Floating weights of another dtype (float16, bfloat16,
float64) are cast to the model's dtype.

Strictness: every key must be present, known and of the right shape; otherwise a
:class:`CheckpointError` lists the missing, unexpected and mis-shaped keys and, when the shapes
identify another variant, names it.
"""
from __future__ import annotations

import os
import pickle
import re
import types
import warnings
from collections.abc import Mapping
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


class _RefusedGlobal(pickle.UnpicklingError):
    """The restricted unpickler met a GLOBAL outside its allow-list."""

    def __init__(self, name: str):
        super().__init__(f"GLOBAL {name} (weights_only)")
        self.name = name


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
                raise _RefusedGlobal(f"{module}.{name}")
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
    cast_from: list[str] = field(default_factory=list)  # file dtypes cast to the model's (e.g. 'float16')
    nonfinite: list[str] = field(default_factory=list)  # tensors with NaN/inf loaded under allow_nonfinite

    def summary(self) -> str:
        parts = [f"loaded {self.path} ({self.source}"]
        if self.renamed:
            parts.append(f", {self.renamed} keys renamed")
        if self.ignored:
            parts.append(f", {len(self.ignored)} keys ignored")
        if self.initialised:
            parts.append(f", {len(self.initialised)} keys left at init: {', '.join(sorted({k.split('.')[0] for k in self.initialised}))}")
        if self.cast_from:
            parts.append(f", cast from {'/'.join(self.cast_from)}")
        if self.nonfinite:
            parts.append(f", {len(self.nonfinite)} tensors hold NaN/inf")
        parts.append(")")
        return "".join(parts)


_UNSAFE_ADVICE = "if you trust the file, pass --unsafe-pickle (unsafe_pickle=True)"
_NONFINITE_ADVICE = "pass allow_nonfinite=True / --allow-nonfinite to load it anyway"
# torch's weights-only unpickler refusing a GLOBAL (a class or function the pickle would call);
# the last form is the restricted yacs fallback's _RefusedGlobal
_REFUSED_GLOBAL = re.compile(
    r"GLOBAL ([A-Za-z_][\w.]*) (?:was not an allowed global|whose module \S+ is blocked|\(weights_only\))")
# the first bytes of a legacy (non-zip) torch.save file: the pickled magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_TORCH_ADVICE_LINES = ("Weights only load failed", "In PyTorch 2.6", "Please file an issue", "Check the documentation",
                       "(1)", "(2)")


def _torch_load(path: Path, unsafe_pickle: bool) -> object:
    if unsafe_pickle:
        warnings.warn(f"--unsafe-pickle: {path} is unpickled with full Python object loading; only do this for files you trust", stacklevel=4)
    with warnings.catch_warnings():
        # torch's notes on a pickle protocol it did not write, a TorchScript archive or the typed
        # storage of a quantized tensor precede a failure that is reported anyway
        for note in ("Detected pickle protocol", ".*looks like a TorchScript archive", "TypedStorage is deprecated"):
            warnings.filterwarnings("ignore", message=note)
        if unsafe_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if _YACS_NAME not in str(e):
                raise
        # the authors' training file: same allow-list plus the inert yacs stand-in
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())


def _first_sentence(text: str, limit: int = 120) -> str:
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.strip())
    text = re.split(r"(?<=[^.\s])\.\s", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_message(msg: str) -> str:
    """The unpickler's or reader's own words inside torch's multi-paragraph advice."""
    for line in msg.splitlines():
        line = line.strip()
        line = line.split("WeightsUnpickler error:", 1)[-1].strip()
        if line and not line.startswith(_TORCH_ADVICE_LINES):
            return line
    return ""


def _sniff(path: Path) -> str | None:
    """What the first bytes say a file is, when that explains a failed load better than torch's error;
    'zip' for a zip archive, whose failure torch's error describes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "a safetensors file; this loader reads torch.save files"
    if head.startswith(b"\x80"):
        return None if head.startswith(_LEGACY_MAGIC) else "a plain pickle, not a torch.save file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut by the 512-byte window still reads as text
        text = head[: err.start].decode("utf-8") if err.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a text file"
    return "neither a zip archive nor a pickle"


def _load_error(path: Path, e: Exception, unsafe_pickle: bool) -> CheckpointError:
    """One line for any exception torch.load (or its unpickler) raised on ``path``."""
    msg = str(e)
    m = _REFUSED_GLOBAL.search(msg)
    refused = e.name if isinstance(e, _RefusedGlobal) else m.group(1) if m else None
    if refused and not unsafe_pickle:
        return CheckpointError(f"refusing to load {path}: its pickle contains {refused}, which could run code; {_UNSAFE_ADVICE}")
    if isinstance(e, OSError) and e.errno is not None:
        return CheckpointError(f"checkpoint {path} cannot be read ({e.strerror})")
    if unsafe_pickle and isinstance(e, (ImportError, AttributeError)):
        return CheckpointError(f"checkpoint {path} cannot be unpickled even with --unsafe-pickle: it refers to code "
                               f"that is not available here ({_first_sentence(msg)})")
    if "must be imported to load" in msg:
        return CheckpointError(f"checkpoint {path} holds distributed (DTensor) or nested tensors, which this loader "
                               "does not read: save the plain state_dict of the unwrapped model")
    kind = _sniff(path)
    reason = None if kind == "zip" else kind
    if reason is None and "TorchScript" in msg:
        reason = "a TorchScript archive; save the model's state_dict() instead"
    elif reason is None and "central directory" in msg:
        reason = "a truncated or damaged zip archive (no central directory)"
    elif reason is None:
        if isinstance(e, EOFError):
            reason = "unexpected end of file"
        else:
            reason = _first_sentence(_torch_message(msg))
            if not isinstance(e, (RuntimeError, pickle.UnpicklingError)):
                reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        if kind == "zip" and "zip" not in reason.lower():
            reason = f"a zip archive without torch.save's layout: {reason}"
    return CheckpointError(f"{path} is not a PyTorch checkpoint (corrupt or another format: {reason or type(e).__name__})")


def _describe(value: object) -> str:
    """'None', 'an int', 'a Tensor', 'a numpy.ndarray', 'a pickled DefMamba module'."""
    if value is None:
        return "None"
    cls = type(value)
    if isinstance(value, torch.nn.Module):
        return f"a pickled {cls.__name__} module"
    name = cls.__name__ if cls.__module__ in ("builtins", "collections") or isinstance(value, torch.Tensor) \
        else f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def _short_keys(keys, n: int = 8) -> str:
    shown = [repr(k) if not isinstance(k, str) else k for k in list(keys)[:n]]
    return ", ".join(shown) + (", ..." if len(keys) > n else "")


def _select(obj: object, path: Path, ema: bool) -> tuple[Mapping, str]:
    """The state_dict inside the loaded object and the entry it came from."""
    if not isinstance(obj, Mapping):
        hint = "; save the model's state_dict() instead" if isinstance(obj, torch.nn.Module) else ""
        raise CheckpointError(f"checkpoint {path} holds {_describe(obj)}, not a state_dict or a dict of them{hint}")
    if ema:
        if "model_ema" not in obj:
            raise CheckpointError(f"--ema was given but {path} has no 'model_ema' entry (it has: {_short_keys(obj)})")
        sd, source = obj["model_ema"], "model_ema"
    else:
        present = [k for k in _CONTAINER_KEYS if k in obj]
        source = next((k for k in present if isinstance(obj[k], Mapping)), present[0] if present else "root")
        sd = obj if source == "root" else obj[source]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"checkpoint {path}: its '{source}' entry holds {_describe(sd)}, not a state_dict")
    where = "the file" if source == "root" else f"its '{source}' entry"
    if not sd:
        raise CheckpointError(f"checkpoint {path}: {where} is an empty dict, not a state_dict (no tensors)")
    if source == "root" and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        hint = "; pass --ema (ema=True) to use its 'model_ema' entry" if "model_ema" in sd else ""
        raise CheckpointError(f"checkpoint {path} holds no state_dict: no 'model' or 'state_dict' entry and no tensors "
                              f"(it has: {_short_keys(sd)}){hint}")
    return sd, source


def _tensor_problem(v: torch.Tensor) -> str | None:
    if v.layout != torch.strided:
        return f"is a sparse tensor ({v.layout}); weights must be dense"
    if v.is_meta:
        return "is a meta tensor (a shape without data)"
    if v.is_quantized:
        return f"is a quantized tensor ({v.dtype}); this loader reads floating-point weights"
    return None


def _nonfinite_count(v: torch.Tensor) -> int:
    """How many NaN/inf values ``v`` holds. One reduction without a temporary (aminmax propagates NaN
    and returns +-inf), a few times cheaper than ``isfinite(v).all()``; counted only when present."""
    if not (v.is_floating_point() or v.is_complex()) or v.numel() == 0:
        return 0
    if v.is_complex():
        v = torch.view_as_real(v)
    if v.element_size() == 1:
        v = v.float()  # no aminmax or isfinite kernels for the float8 types
    lo, hi = torch.aminmax(v)
    if bool(torch.isfinite(lo) & torch.isfinite(hi)):
        return 0
    return int(v.numel() - torch.isfinite(v).sum())


def _nonfinite_error(path, bad: list[tuple[str, int]], what: str = "NaN/inf values") -> CheckpointError:
    (key, count), more = bad[0], len(bad) - 1
    others = f" (and {more} more tensor{'s' if more > 1 else ''})" if more else ""
    return CheckpointError(f"checkpoint {path}: tensor '{key}' holds {count} {what}{others}; the checkpoint is damaged "
                           f"({_NONFINITE_ADVICE})")


def _read(path, ema: bool, unsafe_pickle: bool, allow_nonfinite: bool) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    if Path(path).is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file (give the .pth file inside it)")
    path = require_file(path, "checkpoint", "check the --weights path", " (0 bytes): re-download or re-copy it",
                        CheckpointError)
    try:
        obj = _torch_load(path, unsafe_pickle)
    except Exception as e:  # torch.load, unpickling in particular, can raise almost any type on a bad file
        raise _load_error(path, e, unsafe_pickle) from None
    sd, source = _select(obj, path, ema)
    where = "the file" if source == "root" else f"its '{source}' entry"
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"checkpoint {path}: {where} has {len(odd)} non-string key{'s' if len(odd) > 1 else ''} "
                              f"({_short_keys(odd, 3)}); a state_dict maps parameter names to tensors")
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        more = f" (and {len(not_tensors) - 1} more entries that are not tensors)" if len(not_tensors) > 1 else ""
        raise CheckpointError(f"checkpoint {path}: '{not_tensors[0]}' holds {_describe(sd[not_tensors[0]])}, "
                              f"not a tensor{more}")
    for k, v in sd.items():
        problem = _tensor_problem(v)
        if problem:
            raise CheckpointError(f"checkpoint {path}: tensor '{k}' {problem}")
    bad = [(k, n) for k, n in ((k, _nonfinite_count(v)) for k, v in sd.items()) if n]
    if bad and not allow_nonfinite:
        raise _nonfinite_error(path, bad)
    return dict(sd), source, [k for k, _ in bad]


def read_state_dict(path: str | os.PathLike, *, ema: bool = False, unsafe_pickle: bool = False,
                    allow_nonfinite: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file and return ``(state_dict, source)`` without touching a model.

    Keys are strings and values dense tensors with data (not sparse, meta or quantized), in the
    file's own dtype; NaN/inf values raise :class:`CheckpointError` unless ``allow_nonfinite``.
    """
    sd, source, _ = _read(path, ema, unsafe_pickle, allow_nonfinite)
    return sd, source


def _normalise_keys(sd: dict[str, torch.Tensor], path) -> tuple[dict[str, torch.Tensor], int]:
    out, origin, renamed = {}, {}, 0
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
        if new in out:
            raise CheckpointError(f"checkpoint {path}: keys '{origin[new]}' and '{key}' both name '{new}' "
                                  "(after prefix stripping and legacy renames); which one is meant is unclear")
        renamed += new != key
        out[new], origin[new] = value, key
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


def _check_dtypes(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path) -> list[str]:
    """Refuse a tensor of the wrong kind (integer, bool, complex for a float weight); return the cast dtypes."""
    wrong = [k for k in own if k in sd and (sd[k].is_floating_point() != own[k].is_floating_point()
                                            or (not own[k].is_floating_point() and sd[k].dtype != own[k].dtype))]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        k = wrong[0]
        need = "real floating point" if own[k].is_floating_point() else str(own[k].dtype)
        raise CheckpointError(f"checkpoint {path}: tensor '{k}' has dtype {sd[k].dtype}{more}; the model's weight "
                              f"is {own[k].dtype} and a file's must be {need}")
    return sorted({str(sd[k].dtype).removeprefix("torch.") for k in own if k in sd and sd[k].dtype != own[k].dtype})


def load_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    ema: bool = False,
    strict: bool = True,
    unsafe_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> LoadReport:
    """Load a checkpoint file into ``model`` (a :class:`DefMamba` or :class:`DefMambaBackbone`).

    ``ema`` picks ``model_ema`` from a training file. With ``strict`` (default) any missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` naming them (and the variant the
    file is for, when its shapes say). A backbone accepts a classification checkpoint: the
    ``classifier.*`` keys are ignored and the ``outnorm*`` LayerNorms, which it lacks, stay at
    their identity initialisation (reported in ``LoadReport.initialised``).

    Any malformed file raises :class:`CheckpointError` (see the module docstring); weights of another
    floating dtype are cast to the model's, and NaN/inf values (also those a cast to the model's dtype
    would create) are refused unless ``allow_nonfinite``.
    """
    raw, source, nonfinite = _read(path, ema, unsafe_pickle, allow_nonfinite)
    sd, renamed = _normalise_keys(raw, path)
    report = LoadReport(path=str(path), source=source, renamed=renamed, sha256=sha256_file(path), unsafe=unsafe_pickle,
                        nonfinite=nonfinite)
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
    sd = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    report.cast_from = _check_dtypes(sd, own, path)
    cast = {k: v.to(own[k].dtype) for k, v in sd.items()}
    if not allow_nonfinite:
        # a narrowing cast (float64 -> float32) turns values beyond the target's range into inf
        narrowed = [k for k in cast if sd[k].is_floating_point() and own[k].is_floating_point()
                    and torch.finfo(sd[k].dtype).max > torch.finfo(own[k].dtype).max]
        bad = [(k, n) for k, n in ((k, _nonfinite_count(cast[k])) for k in narrowed) if n]
        if bad:
            raise _nonfinite_error(path, bad, f"values beyond the range of {own[bad[0][0]].dtype} (inf once cast)")
    model.load_state_dict(cast, strict=False)
    return report
