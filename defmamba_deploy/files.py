"""Files: the package's one writer (atomic), one hash and one JSON reader.

Every file the toolkit writes (ONNX models, engines, sidecars, reports, caches, plots) goes through
:func:`atomic_write_bytes` or :func:`write_pair`: the data lands in a temporary file in the target's
folder and is renamed over the target, so a crash or an error never leaves a half-written file.
A model and its sidecar are written as a pair: both temporaries are complete before either is
renamed, and the sidecar is renamed first after removing an old one, so a failure never leaves
a new model beside an old sidecar.

A command that writes after slow work (an export, an engine build) calls :func:`check_writable`
on each of its outputs first, so that a read-only folder or an impossible name fails in one line
before the work rather than after it. The check creates nothing that outlives it: a missing
parent folder is created by the write itself, and only its nearest existing ancestor is checked.
A failure during the write is one UsageError line naming the target, with the temporary removed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UsageError

NAME_MAX_FALLBACK = 255  # where pathconf cannot tell (most Linux, macOS and Windows file systems)
PATH_MAX_FALLBACK = 4096
_TEMP_END = ".tmp"
_RANDOM_CHARS = 8  # the length of the random part tempfile.mkstemp puts between prefix and suffix
_WRITE_FIX = "choose another path"


# --- where a file can go -------------------------------------------------------------------------

def _limit(folder: Path, name: str, fallback: int) -> int:
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or the name is unknown here
        return fallback
    return value if value and value > 0 else fallback


def _nbytes(text: str) -> int:
    return len(os.fsencode(text))


def _temp_prefix(path: Path, suffix: str, name_max: int) -> str:
    """``.<name>.`` when the temporary name fits the folder's name limit; else a hash of the name, so a
    valid target name never becomes an impossible temporary one. ``suffix`` stays at the end."""
    prefix = f".{path.name}."
    if _nbytes(prefix) + _RANDOM_CHARS + _nbytes(_TEMP_END + suffix) <= name_max:
        return prefix
    return "." + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16] + "."


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above ``path`` (absolute) that exists, or a file standing where one should be."""
    for folder in path.parents:
        try:
            os.stat(folder)
        except OSError:
            continue
        return folder
    return Path(path.anchor or os.sep)


def _static_problem(path: Path) -> str | None:
    """What makes ``path`` impossible to write whatever the permissions, or None. Needs no write."""
    full = Path(os.path.abspath(path))
    base = _existing_ancestor(full)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    name_max = _limit(base, "PC_NAME_MAX", NAME_MAX_FALLBACK)
    for part in full.relative_to(base).parts:
        if _nbytes(part) > name_max:
            short = part if len(part) <= 24 else part[:20] + "..."
            return f"the name {short!r} is {_nbytes(part)} bytes, longer than the {name_max} this file system allows"
    path_max = _limit(base, "PC_PATH_MAX", PATH_MAX_FALLBACK)
    if _nbytes(str(full)) >= path_max:  # PATH_MAX counts the terminating NUL
        return f"the path is {_nbytes(str(full))} bytes, longer than the {path_max - 1} this system allows"
    if full.is_dir():
        return "it is a folder, not a file"
    if full.exists() and not full.is_file():
        return "it is not a regular file, which the rename would replace"
    return None


def _cannot(what: str, path, problem: str, fix: str) -> UsageError:
    return UsageError(f"cannot write {what + ' ' if what else ''}{path}: {problem} ({fix})")


def check_writable(path: str | os.PathLike, what: str = "output", *, fix: str = _WRITE_FIX) -> Path:
    """``path`` as a Path when the atomic writers can write it; else one UsageError line
    ("cannot write <what> <path>: <problem> (<fix>)"). Call it before the slow work.

    Checked: the target is not a folder (nor a device); its parent is a folder or can be created
    (no file stands in the way, the nearest existing ancestor is writable); every missing name
    fits the file system's name limit and the whole path its path limit; and a temporary file of
    the writer's kind can really be created and removed in that folder (``os.access`` says yes on
    read-only mounts and for root). Nothing is left behind: a missing parent is not created here.
    ``fix`` is the advice at the end (a CLI passes e.g. "choose another --output")."""
    p = Path(path)
    problem = _static_problem(p)
    if problem:
        raise _cannot(what, p, problem, fix)
    full = Path(os.path.abspath(p))
    folder = full.parent if full.parent.is_dir() else _existing_ancestor(full)
    missing = "" if folder == full.parent else f"folder {full.parent} cannot be created: "
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _cannot(what, p, f"{missing}folder {folder} is not writable", fix)
    name_max = _limit(folder, "PC_NAME_MAX", NAME_MAX_FALLBACK)
    probe_name = full if folder == full.parent else folder / "probe"
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(probe_name, "", name_max), suffix=_TEMP_END, dir=folder)
    except OSError as e:
        raise _cannot(what, p, f"{missing}folder {folder} is not writable: {e.strerror or e}", fix) from None
    os.close(fd)
    _unlink_quietly(probe)
    return p


# --- writing -------------------------------------------------------------------------------------

def _write_error(path: Path, e: OSError, tmp: str | None) -> UsageError:
    """One line for an OSError of a write: the target, the system's reason, what to do."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is not None and os.fspath(e.filename) not in (tmp, str(path)):
        reason = f"{e.filename}: {reason}"  # a writer that failed on another file (an input it reads)
    full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    return _cannot("", path, reason, "free some space or " + _WRITE_FIX if full else _WRITE_FIX)


def _refuse_impossible(path: Path) -> None:
    problem = _static_problem(path)
    if problem:
        raise _cannot("", path, problem, _WRITE_FIX)


def _temp_beside(path: Path, suffix: str = "") -> str:
    """A new temporary file in ``path``'s folder (created with its parents when missing); a folder that
    refuses it is one UsageError line naming the target and the folder."""
    try:
        return _new_temp(path, suffix)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            # the folder that refused: the one the temporary or a missing parent was to be created in
            folder = os.path.dirname(os.path.abspath(e.filename)) if e.filename else os.path.abspath(path.parent)
            raise _cannot("", path, f"folder {folder} is not writable: {e.strerror}", _WRITE_FIX) from None
        raise


def _new_temp(path: Path, suffix: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    name_max = _limit(path.parent, "PC_NAME_MAX", NAME_MAX_FALLBACK)
    # a writer that picks the format from the name (matplotlib) must see the ending last
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path, suffix, name_max), suffix=_TEMP_END + suffix,
                               dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(tmp: str | None) -> None:
    """Remove a temporary after a failure; a second error here would hide the first."""
    if tmp is None:
        return
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _remove_old(path: Path) -> None:
    try:
        os.unlink(path)
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
    then rename it over ``path``. ``suffix``: an ending the writer needs to see (``.png``).
    An OSError (no space, read-only, permission, a folder in the way) is one UsageError line naming
    ``path``; any failure removes the temporary and leaves an old ``path`` as it was."""
    path = Path(path)
    _refuse_impossible(path)
    tmp = None
    try:
        tmp = _temp_beside(path, suffix)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _write_error(path, e, tmp) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False):
    """Yield an empty temporary folder beside ``path``; when the block ends without an error it becomes
    ``path`` (an old ``path`` removed first with ``replace``), else it is removed: no half-written tree."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists() and replace:
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_pair(path: str | os.PathLike, data: bytes, sidecar_path: str | os.PathLike, sidecar: dict) -> None:
    """A file and its JSON sidecar, so that a failure never leaves a new file beside an old or
    missing sidecar: both temporaries are written in full first; then the old sidecar goes, the
    file is renamed, and the sidecar is renamed last. At every moment a reader sees the old pair,
    a file without a sidecar (which readers refuse or re-create), or the new pair. An OSError is one
    UsageError line naming the file being written when it happened; both temporaries are removed."""
    path, sidecar_path = Path(path), Path(sidecar_path)
    _refuse_impossible(path)
    _refuse_impossible(sidecar_path)
    tmp_file = tmp_side = None
    current = path
    try:
        tmp_file = _temp_beside(path)
        Path(tmp_file).write_bytes(data)
        current = sidecar_path
        tmp_side = _temp_beside(sidecar_path)
        Path(tmp_side).write_text(json.dumps(sidecar, indent=2) + "\n")
        _remove_old(sidecar_path)
        current = path
        os.replace(tmp_file, path)
        current = sidecar_path
        os.replace(tmp_side, sidecar_path)
    except OSError as e:
        _unlink_quietly(tmp_file)
        _unlink_quietly(tmp_side)
        raise _write_error(current, e, tmp_side if current == sidecar_path else tmp_file) from None
    except BaseException:
        _unlink_quietly(tmp_file)
        _unlink_quietly(tmp_side)
        raise


# --- reading -------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file ("does not exist", "is a folder, not a file", "is not a
    regular file", "cannot be read: <reason>"), or None for a regular file."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return "does not exist"
        return f"cannot be read: {e.strerror or e}"
    p = Path(path)
    if p.is_dir():
        return "is a folder, not a file"
    if not p.is_file():
        return "is not a regular file"
    return None


def require_file(path: str | os.PathLike, what: str, missing_fix: str, empty_fix: str,
                 error: type[Exception] = UsageError) -> Path:
    """``path`` as a Path when it is a non-empty file; else ``error`` with one line that says which
    (missing, a folder, not a regular file, empty)."""
    p = Path(path)
    why = not_a_file(p)
    if why:
        raise error(f"{what} {p} {why} ({missing_fix})")
    if p.stat().st_size == 0:
        raise error(f"{what} {p} is empty{empty_fix}")
    return p


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "write it again") -> dict:
    """A JSON object from ``path``, or a one-line UsageError naming the file and ``fix``."""
    p = Path(path)
    why = not_a_file(p)
    if why:
        raise UsageError(f"{what} {p} {why}; {fix}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {p} is not valid JSON ({e}); {fix}") from None
    except OSError as e:
        raise UsageError(f"{what} {p} cannot be read: {e.strerror or e}; {fix}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {p} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data
