"""Where the compiled plugin libraries are, found in one place.

Search order for a library: an explicit path; the environment variable
(``DEFMAMBA_ORT_LIB`` / ``DEFMAMBA_TRT_LIB``); ``defmamba_deploy/lib/`` next to this package (where
the top-level CMake build copies them); ``build/`` of a source checkout.

An explicit path or a set variable is what the user asked for: when it names no usable library
(missing, a folder, empty, not a shared library) that is an error, never a silent fall-through to
another copy. A variable set to the empty string counts as unset (``DEFMAMBA_ORT_LIB= cmd`` is the
usual way to switch one off for a command). A library found by the search must be a shared
library too: a half-copied or foreign file in ``lib/`` is named rather than handed to the loader.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import MissingDependencyError
from .files import not_a_file

PACKAGE_LIB_DIR = Path(__file__).resolve().parent / "lib"
_CHECKOUT_BUILD = Path(__file__).resolve().parents[1] / "build"

LIBRARIES = {
    "ort": ("libdefmamba_ort_ops.so", "DEFMAMBA_ORT_LIB", "ONNX Runtime custom ops"),
    "trt": ("libdefmamba_trt_plugins.so", "DEFMAMBA_TRT_LIB", "TensorRT plugins"),
}
BUILD_HINT = "build it with: bash scripts/build_plugins.sh (see README)"

# the first bytes of a loadable library, by platform (ELF everywhere but macOS and Windows)
_MAGIC = {
    "darwin": (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"),
    "win32": (b"MZ",),
}
_ELF = (b"\x7fELF",)


def library_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a loadable shared library ("does not exist", "is a folder, not a file",
    "is empty", "is not a shared library (...)"), or None. Only the first bytes are read."""
    why = not_a_file(path)
    if why:
        return why
    magic = _MAGIC.get(sys.platform, _ELF)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if not head:
        return "is empty"
    if not any(head.startswith(m) for m in magic):
        kind = "ELF" if magic is _ELF else "Mach-O" if sys.platform == "darwin" else "PE"
        return f"is not a shared library (no {kind} header; a text file, an archive or a partial copy?)"
    return None


def _from_env(kind: str) -> Path | None:
    """The library the environment variable names; None when it is unset or empty."""
    filename, env, what = LIBRARIES[kind]
    value = os.environ.get(env, "")
    if not value:
        return None
    why = library_problem(value)
    if why:
        raise MissingDependencyError(f"${env}={value} {why}: unset it or point it at the built {filename} "
                                     f"({what}); {BUILD_HINT}")
    return Path(value).resolve()


def _candidates(kind: str) -> list[Path]:
    """Where the search looks after the environment variable."""
    filename = LIBRARIES[kind][0]
    out = [PACKAGE_LIB_DIR / filename]
    if _CHECKOUT_BUILD.is_dir():
        out.extend(sorted(_CHECKOUT_BUILD.rglob(filename)))
    return out


def find_library(kind: str, path: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Path of the ``kind`` ('ort' or 'trt') plugin library, or an actionable error.

    ``path`` (a --plugins/--library flag) wins over the environment variable, which wins over the
    search. ``required=False`` returns None only when nothing is configured and nothing is found; a
    configured or found file that is not a usable library raises all the same."""
    filename, env, what = LIBRARIES[kind]
    if path is not None:
        p = Path(path)
        why = library_problem(p)
        if why:
            raise MissingDependencyError(f"{what} library {p} {why}; {BUILD_HINT}")
        return p.resolve()
    found = _from_env(kind)
    if found is not None:
        return found
    for p in _candidates(kind):
        if not_a_file(p) is None:
            why = library_problem(p)
            if why:
                raise MissingDependencyError(f"{what} library {p} {why}: remove it and {BUILD_HINT}")
            return p.resolve()
    if required:
        raise MissingDependencyError(f"{what} library {filename} not found (searched ${env}, {PACKAGE_LIB_DIR}); {BUILD_HINT}")
    return None


def get_library_path(path: str | os.PathLike | None = None) -> str:
    """The ONNX Runtime custom-op library (``libdefmamba_ort_ops.so``) as a ``str``, for
    ``SessionOptions.register_custom_ops_library(get_library_path())``: ORT takes only a string, not
    a ``Path``. Found as :func:`find_library` finds it; a MissingDependencyError when it is not built."""
    return str(find_library("ort", path))


def get_trt_plugin_library_path(path: str | os.PathLike | None = None) -> str:
    """The TensorRT plugin library (``libdefmamba_trt_plugins.so``) as a ``str``, for
    ``trt.get_plugin_registry().load_library(...)`` or ``ctypes.CDLL``; a MissingDependencyError
    when it is not built."""
    return str(find_library("trt", path))


def library_status() -> dict[str, str]:
    """{'ort': path or 'not built' or the problem, 'trt': ...} for `defmamba-deploy info`."""
    out = {}
    for kind in LIBRARIES:
        try:
            out[kind] = str(find_library(kind, required=False) or "not built")
        except MissingDependencyError as e:
            out[kind] = f"unusable: {e}"
    return out
