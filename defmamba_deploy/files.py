"""Files: the package's one writer (atomic), one hash and one JSON reader.

Every file the toolkit writes (ONNX models, engines, sidecars, reports, caches, plots) goes through
:func:`atomic_write_bytes` or :func:`write_pair`: the data lands in a temporary file in the target's
folder and is renamed over the target, so a crash or an error never leaves a half-written file.
A model and its sidecar are written as a pair: both temporaries are complete before either is
renamed, and the sidecar is renamed first after removing an old one, so a failure never leaves
a new model beside an old sidecar.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UsageError


def _temp_beside(path: Path, suffix: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a writer that picks the format from the name (matplotlib) must see the ending last
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    return tmp


def _unlink_quietly(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, data) -> Path:
    """``data`` as indented JSON (trailing newline), written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], object], suffix: str = "") -> Path:
    """Let ``write(tmp_path)`` produce the file (a library that writes by path: matplotlib, torch),
    then rename it over ``path``. ``suffix``: an ending the writer needs to see (``.png``)."""
    path = Path(path)
    tmp = _temp_beside(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def write_pair(path: str | os.PathLike, data: bytes, sidecar_path: str | os.PathLike, sidecar: dict) -> None:
    """A file and its JSON sidecar, so that a failure never leaves a new file beside an old or
    missing sidecar: both temporaries are written in full first; then the old sidecar goes, the
    file is renamed, and the sidecar is renamed last. At every moment a reader sees the old pair,
    a file without a sidecar (which readers refuse or re-create), or the new pair."""
    path, sidecar_path = Path(path), Path(sidecar_path)
    tmp_file, tmp_side = _temp_beside(path), _temp_beside(sidecar_path)
    try:
        Path(tmp_file).write_bytes(data)
        Path(tmp_side).write_text(json.dumps(sidecar, indent=2) + "\n")
        _unlink_quietly(str(sidecar_path))
        os.replace(tmp_file, path)
        os.replace(tmp_side, sidecar_path)
    except BaseException:
        _unlink_quietly(tmp_file)
        _unlink_quietly(tmp_side)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str, missing_fix: str, empty_fix: str,
                 error: type[Exception] = UsageError) -> Path:
    """``path`` as a Path when it is a non-empty file; else ``error`` with one line that says which."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} does not exist ({missing_fix})")
    if p.stat().st_size == 0:
        raise error(f"{what} {p} is empty{empty_fix}")
    return p


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "write it again") -> dict:
    """A JSON object from ``path``, or a one-line UsageError naming the file and ``fix``."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p} does not exist; {fix}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {p} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {p} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data
