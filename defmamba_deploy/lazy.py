"""Names a package loads on first use (PEP 562), so that importing it does not import PyTorch.

A package lists, for each lazy name, a loader: a small function of its own that imports the module
holding the name (``from . import model``), so the import stays a visible statement for the
layering test. Any other public attribute falls back to importing the submodule of that name, as
``pkg.submodule`` worked before the package became lazy.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable, Iterable


def lazy_attributes(package: str, namespace: dict, loaders: dict[str, Callable[[], ModuleType]],
                    public: Iterable[str]):
    """``(__getattr__, __dir__)`` for the package ``package`` whose globals are ``namespace``."""
    public = tuple(public)

    def __getattr__(name: str):
        if name in loaders:
            value = getattr(loaders[name](), name)
            namespace[name] = value  # later lookups skip __getattr__
            return value
        if not name.startswith("_"):
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
