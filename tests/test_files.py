"""files: the one atomic writer, the model+sidecar pair, hashing and JSON reading."""
import hashlib
import json
import os

import pytest

import defmamba_deploy as dd
from defmamba_deploy.files import atomic_write_bytes, atomic_write_with, read_json, sha256_file, write_json, write_pair


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
    with pytest.raises(OSError):
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
