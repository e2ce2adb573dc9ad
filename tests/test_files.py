"""files: the one atomic writer, the model+sidecar pair, hashing and JSON reading; writes that cannot
happen are one line, checked before the work (check_writable) or at the write, and leave nothing behind."""
import errno
import hashlib
import json
import os
import pathlib

import pytest

import defmamba_deploy as dd
from defmamba_deploy import files
from defmamba_deploy.files import (atomic_write_bytes, atomic_write_with, check_writable, read_json, require_file,
                                   sha256_file, write_json, write_pair)

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into a 0o555 folder all the same


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    f = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(f, b"one")
    atomic_write_bytes(f, b"two")
    assert f.read_bytes() == b"two" and os.listdir(f.parent) == ["a.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    f = tmp_path / "plot.png"
    f.write_bytes(b"old")

    def broken(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        atomic_write_with(f, broken, suffix=".png")
    assert f.read_bytes() == b"old" and os.listdir(tmp_path) == ["plot.png"]


def test_pair_never_leaves_a_new_file_beside_an_old_sidecar(tmp_path, monkeypatch):
    model, side = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    write_pair(model, b"v1", side, {"v": 1})
    assert model.read_bytes() == b"v1" and json.loads(side.read_text()) == {"v": 1}
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(dd.UsageError, match=r"^cannot write \S+m\.onnx\.json: disk gone \(choose another path\)$"):
        write_pair(model, b"v2", side, {"v": 2})
    monkeypatch.undo()
    # the new model landed but its sidecar did not: the old sidecar is gone too, never beside v2
    assert model.read_bytes() == b"v2" and not side.exists()
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_sha256_and_read_json(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    write_json(tmp_path / "d.json", {"a": [1, 2]})
    assert read_json(tmp_path / "d.json") == {"a": [1, 2]}
    with pytest.raises(dd.UsageError, match="does not exist; rebuild"):
        read_json(tmp_path / "missing.json", "sidecar", "rebuild")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(dd.UsageError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(dd.UsageError, match="not an object"):
        read_json(tmp_path / "list.json")

    os.mkdir(tmp_path / "folder.json")
    with pytest.raises(dd.UsageError, match=r"file \S+folder.json is a folder, not a file; write it again"):
        read_json(tmp_path / "folder.json")


def test_require_file_tells_a_folder_from_a_missing_file(tmp_path):
    with pytest.raises(dd.UsageError, match=r"^ONNX file \S+ is a folder, not a file \(export one\)$"):
        require_file(tmp_path, "ONNX file", "export one", ": re-export it")
    with pytest.raises(dd.UsageError, match="does not exist"):
        require_file(tmp_path / "none.onnx", "ONNX file", "export one", ": re-export it")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(dd.UsageError, match="empty.onnx is empty: re-export it$"):
        require_file(tmp_path / "empty.onnx", "ONNX file", "export one", ": re-export it")


# --- writes that cannot happen --------------------------------------------------------------------

@pytest.mark.skipif(AS_ROOT, reason="root writes into a 0o555 folder; test_a_folder_that_refuses_the_probe covers it")
def test_read_only_folder_is_refused_before_and_at_the_write(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.onnx").write_bytes(b"old")
    ro.chmod(0o555)
    try:
        with pytest.raises(dd.UsageError, match=r"^cannot write output \S+/ro/x\.onnx: folder \S+/ro is not writable "
                                                 r"\(choose another --output\)$"):
            check_writable(ro / "x.onnx", fix="choose another --output")
        with pytest.raises(dd.UsageError, match=r"^cannot write \S+/ro/old\.onnx: folder \S+/ro is not writable: "
                                                 r"Permission denied"):
            atomic_write_bytes(ro / "old.onnx", b"new")
        with pytest.raises(dd.UsageError, match="cannot write output .*cannot be created: folder .*ro is not writable"):
            check_writable(ro / "sub" / "x.onnx")
        assert os.listdir(ro) == ["old.onnx"] and (ro / "old.onnx").read_bytes() == b"old"
    finally:
        ro.chmod(0o755)


def test_a_folder_that_refuses_the_probe(tmp_path, monkeypatch):
    """os.access says yes on a read-only mount and for root: the real creation of a temporary decides."""
    monkeypatch.setattr(files.os, "access", lambda *a, **k: True)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(dd.UsageError, match=r"^cannot write engine \S+x\.plan: folder \S+ is not writable: "
                                             r"Read-only file system \(choose another path\)$"):
        check_writable(tmp_path / "x.plan", "engine")
    with pytest.raises(dd.UsageError, match=r"^cannot write \S+x\.plan: folder \S+ is not writable: Read-only file "
                                             r"system \(choose another path\)$"):
        atomic_write_bytes(tmp_path / "x.plan", b"data")
    monkeypatch.undo()
    monkeypatch.setattr(files.os, "access", lambda *a, **k: False)
    with pytest.raises(dd.UsageError, match=r"folder \S+ is not writable \(choose another path\)$"):
        check_writable(tmp_path / "x.plan")
    assert os.listdir(tmp_path) == []


def test_a_missing_parent_that_cannot_be_created(tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    with pytest.raises(dd.UsageError, match=rf"^cannot write \S+/new/x\.onnx: folder {tmp_path} is not writable: "
                                             r"Permission denied \(choose another path\)$"):
        atomic_write_bytes(tmp_path / "new" / "x.onnx", b"data")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_check_writable_passes_and_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "x.onnx") == tmp_path / "x.onnx"
    # a missing parent is created by the write, not by the check
    assert check_writable(tmp_path / "new" / "sub" / "x.onnx") == tmp_path / "new" / "sub" / "x.onnx"
    assert os.listdir(tmp_path) == []
    (tmp_path / "x.onnx").write_bytes(b"old")  # an existing file is replaced by the rename
    check_writable(tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == ["x.onnx"]


def test_a_folder_where_the_file_should_go(tmp_path):
    (tmp_path / "out.onnx").mkdir()
    msg = r"cannot write (output )?\S+out\.onnx: it is a folder, not a file \(choose another path\)$"
    with pytest.raises(dd.UsageError, match="^" + msg):
        check_writable(tmp_path / "out.onnx")
    with pytest.raises(dd.UsageError, match=msg):
        atomic_write_bytes(tmp_path / "out.onnx", b"data")
    with pytest.raises(dd.UsageError, match=msg):
        write_pair(tmp_path / "out.onnx", b"data", tmp_path / "out.onnx.json", {})
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(dd.UsageError, match="pipe: it is not a regular file, which the rename would replace"):
        check_writable(tmp_path / "pipe")
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "pipe"] and os.listdir(tmp_path / "out.onnx") == []


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    for target in (tmp_path / "f" / "x.onnx", tmp_path / "f" / "deeper" / "x.onnx"):
        with pytest.raises(dd.UsageError, match=r"^cannot write output \S+x\.onnx: \S+/f is a file, not a folder"):
            check_writable(target)
        with pytest.raises(dd.UsageError, match=r"\S+/f is a file, not a folder"):
            atomic_write_bytes(target, b"data")
    assert os.listdir(tmp_path) == ["f"]


def test_names_near_the_length_limit(tmp_path):
    """The temporary '.<name>.XXXXXXXX.tmp' must not push a valid name over the 255-byte limit."""
    name = "m" * 245 + ".onnx"  # 250 bytes
    assert check_writable(tmp_path / name) == tmp_path / name
    atomic_write_bytes(tmp_path / name, b"one")
    write_pair(tmp_path / name, b"two", tmp_path / (name + ".json"), {"v": 2})  # the sidecar is 255 bytes
    assert (tmp_path / name).read_bytes() == b"two" and json.loads((tmp_path / (name + ".json")).read_text()) == {"v": 2}
    seen = []

    def writer(tmp):
        seen.append(os.path.basename(tmp))
        pathlib.Path(tmp).write_bytes(b"png")

    atomic_write_with(tmp_path / ("p" * 251 + ".png"), writer, suffix=".png")
    assert seen[0].endswith(".tmp.png") and len(seen[0]) <= 255  # the writer still sees its ending
    short = []
    atomic_write_with(tmp_path / "plot.png", lambda tmp: (short.append(os.path.basename(tmp)), open(tmp, "wb").close()),
                      suffix=".png")
    assert short[0].startswith(".plot.png.") and short[0].endswith(".tmp.png")  # short names keep the readable form
    assert sorted(os.listdir(tmp_path)) == sorted([name, name + ".json", "p" * 251 + ".png", "plot.png"])


def test_names_over_the_limit_are_refused(tmp_path):
    long = "m" * 251 + ".onnx"  # 256 bytes
    with pytest.raises(dd.UsageError, match=r"^cannot write output \S+: the name 'mmmmmmmmmmmmmmmmmmmm\.\.\.' is 256 "
                                             r"bytes, longer than the 255 this file system allows \(choose another path\)$"):
        check_writable(tmp_path / long)
    with pytest.raises(dd.UsageError, match="is 256 bytes, longer than the 255"):
        atomic_write_bytes(tmp_path / long, b"x")
    with pytest.raises(dd.UsageError, match="is 256 bytes"):
        check_writable(tmp_path / long / "x.onnx")  # a folder name the write would have to create
    with pytest.raises(dd.UsageError, match=r"the path is \d+ bytes, longer than the \d+ this system allows"):
        check_writable(tmp_path.joinpath(*["d" * 200] * 25, "x.onnx"))
    assert os.listdir(tmp_path) == []


def test_no_space_left_is_one_line_and_cleans_up(tmp_path, monkeypatch):
    f = tmp_path / "big.onnx"
    f.write_bytes(b"old")

    def disk_full(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    with pytest.raises(dd.UsageError, match=r"^cannot write \S+big\.onnx: No space left on device \(free some space "
                                             r"or choose another path\)$"):
        atomic_write_with(f, disk_full)
    assert os.listdir(tmp_path) == ["big.onnx"] and f.read_bytes() == b"old"

    write_pair(f, b"v1", tmp_path / "big.onnx.json", {"v": 1})
    real = pathlib.Path.write_text

    def full_at_the_sidecar(self, *a, **k):
        real(self, "{", **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full_at_the_sidecar)
    with pytest.raises(dd.UsageError, match=r"^cannot write \S+big\.onnx\.json: No space left on device"):
        write_pair(f, b"v2", tmp_path / "big.onnx.json", {"v": 2})
    monkeypatch.undo()
    # both temporaries removed; the old pair untouched (no rename had happened)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.json"] and f.read_bytes() == b"v1"
    assert json.loads((tmp_path / "big.onnx.json").read_text()) == {"v": 1}


def test_a_writer_that_fails_on_another_file_says_which(tmp_path):
    def reads_a_missing_input(tmp):
        open(tmp_path / "no_such_input.bin", "rb")

    with pytest.raises(dd.UsageError, match=r"cannot write \S+out\.bin: \S+no_such_input\.bin: No such file or directory"):
        atomic_write_with(tmp_path / "out.bin", reads_a_missing_input)
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # not an OSError: passes through, the temporary still goes
        atomic_write_with(tmp_path / "out.bin", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == []
