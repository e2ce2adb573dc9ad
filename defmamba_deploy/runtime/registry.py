"""The one list of backends. Parity, bench and the CLI's backend lists and help come from here.

A backend is a :class:`Backend` (name, one-line help, the precisions it offers, the kind of file a
user may give it) whose ``create(request)`` returns an inactive :class:`~.base.Runner`. Built-in
backends register themselves in their own modules (``torch_runner``, ``onnxrt``,
``tensorrt.runner``); a new one is one file that calls :func:`register_backend`, plus its module
name in ``BUILTIN_MODULES`` (or an import by whoever uses it, as the tests do).

``create`` raises :class:`Unavailable` (a MissingDependencyError) when the backend cannot run on
this machine: bench records it as skipped with the reason, parity reports it as an error.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import checks
from ..errors import MissingDependencyError, UsageError
from .base import Runner

PRECISIONS = ("fp32", "fp16", "int8")
BUILTIN_MODULES = ("defmamba_deploy.runtime.torch_runner", "defmamba_deploy.runtime.onnxrt",
                   "defmamba_deploy.runtime.tensorrt.runner")


class Unavailable(MissingDependencyError):
    """This backend (or this precision of it) cannot run here; the message is the reason."""


@dataclass
class BackendRequest:
    """What a caller wants a runner for. ``file``: an ONNX file or engine the user gave (``None``:
    the backend exports or builds what it needs into ``workdir``)."""

    model: str
    weights: str | os.PathLike | None = None
    ema: bool = False
    unsafe_pickle: bool = False
    allow_nonfinite: bool = False  # load a checkpoint with NaN/inf weights anyway
    img_size: tuple[int, int] = (224, 224)
    precision: str = "fp32"
    batches: Sequence[int] = (1,)
    threads: int | None = None
    library: str | os.PathLike | None = None
    file: str | os.PathLike | None = None
    workdir: Path = field(default_factory=Path.cwd)
    backbone: bool = False
    use_exported: bool = False  # may use the file `defmamba-deploy export` wrote in the current folder
    load_report: object = None  # the reference model's checkpoint report (parity: same weights or refuse)
    check_weights: bool = True  # a given file must hold these weights (parity yes; a speed benchmark no)
    progress: Callable[[str], None] = lambda msg: None


@dataclass
class Backend:
    name: str
    help: str
    create: Callable[[BackendRequest], Runner]
    precisions: tuple[str, ...] = ("fp32",)
    file_kind: str | None = None  # "onnx" or "engine": what --onnx / --engine give this backend
    portable: bool = False  # runs the standard-ops export
    check: Callable[[BackendRequest], None] | None = None  # fail-fast validation before slow work

    def precheck(self, request: BackendRequest) -> None:
        if request.precision not in self.precisions:
            raise Unavailable(f"{request.precision} is not offered by the {self.name} backend "
                              f"(it runs {', '.join(self.precisions)})")
        if self.check is not None:
            self.check(request)


_REGISTRY: dict[str, Backend] = {}
_loaded = False


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"backend {backend.name!r} is registered already")
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


_ORDER = ("torch", "ort", "ort-portable", "trt")  # how lists and help show the built-ins; others follow


def backends() -> dict[str, Backend]:
    _load_builtins()
    names = sorted(_REGISTRY, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))
    return {n: _REGISTRY[n] for n in names}


def backend_names() -> tuple[str, ...]:
    return tuple(backends())


def get_backend(name: str) -> Backend:
    known = backends()
    if name not in known:
        raise UsageError(f"unknown backend {name!r}: choose from {', '.join(known)}")
    return known[name]


def check_backend_names(names: str | Sequence[str]) -> list[Backend]:
    """The registered backends ``names`` (a comma-separated string or a sequence) asks for, in order."""
    names = checks.names(names, "--backends")
    known = backends()
    unknown = [b for b in names if b not in known]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}: choose from {', '.join(known)}")
    return [known[b] for b in names]


def backends_help() -> str:
    return "; ".join(f"{b.name}: {b.help}" for b in backends().values())
