"""Where the compiled plugin libraries are, found in one place.

Search order for a library: an explicit path; the environment variable
(``DEFMAMBA_ORT_LIB`` / ``DEFMAMBA_TRT_LIB``); ``defmamba_deploy/lib/`` next to this package (where
the top-level CMake build copies them); ``build/`` of a source checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingDependencyError

PACKAGE_LIB_DIR = Path(__file__).resolve().parent / "lib"
_CHECKOUT_BUILD = Path(__file__).resolve().parents[1] / "build"

LIBRARIES = {
    "ort": ("libdefmamba_ort_ops.so", "DEFMAMBA_ORT_LIB", "ONNX Runtime custom ops"),
    "trt": ("libdefmamba_trt_plugins.so", "DEFMAMBA_TRT_LIB", "TensorRT plugins"),
}
BUILD_HINT = "build it with: bash scripts/build_plugins.sh (see README)"


def _candidates(kind: str) -> list[Path]:
    filename, env, _ = LIBRARIES[kind]
    out = []
    if os.environ.get(env):
        out.append(Path(os.environ[env]))
    out.append(PACKAGE_LIB_DIR / filename)
    if _CHECKOUT_BUILD.is_dir():
        out.extend(sorted(_CHECKOUT_BUILD.rglob(filename)))
    return out


def find_library(kind: str, path: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Path of the ``kind`` ('ort' or 'trt') plugin library, or an actionable error."""
    filename, env, what = LIBRARIES[kind]
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MissingDependencyError(f"{what} library {p} does not exist; {BUILD_HINT}")
        return p.resolve()
    for p in _candidates(kind):
        if p.is_file():
            return p.resolve()
    if required:
        raise MissingDependencyError(f"{what} library {filename} not found (searched ${env}, {PACKAGE_LIB_DIR}); {BUILD_HINT}")
    return None


def library_status() -> dict[str, str]:
    """{'ort': path or 'not built', 'trt': ...} for `defmamba-deploy info`."""
    return {kind: str(find_library(kind, required=False) or "not built") for kind in LIBRARIES}
