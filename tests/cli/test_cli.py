"""The CLI: one Typer app behind `defmamba-deploy` and `python cli.py`, one-line errors, exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import defmamba_deploy as dd
from defmamba_deploy.cli import _join_size_args, app, parse_size

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, _join_size_args(list(args)))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_info_lists_backends():
    r = invoke("info")
    assert r.exit_code == 0, r.output
    for word in ("torch", "onnxruntime", "tensorrt", "ort plugin library"):
        assert word in r.output


@pytest.mark.parametrize("cmd", [[], ["info"], ["predict"]])
def test_help(cmd):
    r = invoke(*cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_predict_json_topk(image, tmp_path):
    torch.manual_seed(0)
    w = tmp_path / "t.pth"
    torch.save({"model": dd.create_model("t").state_dict()}, w)
    r = invoke("predict", "-m", "t", "-w", str(w), "--img-size", "64", "80", "--topk", "3", "--json", str(image))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("["):])
    assert len(out[0]["top"]) == 3
    probs = [t["prob"] for t in out[0]["top"]]
    assert probs == sorted(probs, reverse=True)
    # the same numbers as the library
    from defmamba_deploy.data import preprocess

    model = dd.create_model("t", weights=w)
    with torch.inference_mode():
        p = model(torch.from_numpy(preprocess(image, (64, 80)))[None]).softmax(-1)[0]
    assert out[0]["top"][0]["class"] == int(p.argmax())


def test_predict_warns_without_weights(image):
    r = invoke("predict", "-m", "t", "--img-size", "48", str(image))
    assert r.exit_code == 0
    assert "randomly initialised" in r.output


def _one_line_error(r, code_min=1):
    assert r.exit_code >= code_min, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip().startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello")
    assert "not an image" in _one_line_error(invoke("predict", "-m", "t", str(bad)))


def test_input_under_33_px(image):
    assert ">= 33" in _one_line_error(invoke("predict", "-m", "t", "--img-size", "32", str(image)))


def test_bad_size_syntax(image):
    assert "not a size" in _one_line_error(invoke("predict", "-m", "t", "--img-size", "big", str(image)))


def test_unknown_model(image):
    assert "unknown model" in _one_line_error(invoke("predict", "-m", "xl", str(image)))


def test_corrupt_checkpoint(image, tmp_path):
    w = tmp_path / "bad.pth"
    w.write_bytes(os.urandom(1000))
    assert "corrupt" in _one_line_error(invoke("predict", "-m", "t", "-w", str(w), str(image)))


def test_wrong_variant_checkpoint(image, tmp_path):
    w = tmp_path / "t.pth"
    torch.save(dd.create_model("t").state_dict(), w)
    assert "--model t" in _one_line_error(invoke("predict", "-m", "s", "-w", str(w), str(image)))


def test_foreign_pickle(image, tmp_path):
    w = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Evil()}, w)
    assert "--unsafe-pickle" in _one_line_error(invoke("predict", "-m", "t", "-w", str(w), str(image)))


def test_parse_size():
    assert parse_size(None) == (224, 224)
    assert parse_size("160x256") == (160, 256)
    assert parse_size("160,256") == (160, 256)
    assert _join_size_args(["predict", "--img-size", "160", "256", "x.png"]) == ["predict", "--img-size", "160x256", "x.png"]
    assert _join_size_args(["--img-size", "224", "x.png"]) == ["--img-size", "224", "x.png"]


def test_console_script_and_cli_py_are_the_same_app(image):
    """`python cli.py` and the installed console script run the same code with exit codes."""
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "predict", "-m", "t", "--img-size", "20", str(image)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "defmamba_deploy.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "export" in r.stdout or "predict" in r.stdout
