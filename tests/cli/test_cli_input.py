"""Bad input through the CLI and the API: one ``error:`` line, the documented exit code, no traceback.

Numbers that are not numbers (NaN, inf, negative, empty lists), Click's own usage errors, labels
files of the wrong kind, signals and running out of memory. Each case must fail before any slow
work starts, so none of these builds a model.
"""
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from defmamba_deploy import __version__
from defmamba_deploy.cli import _join_size_args, app
from defmamba_deploy.errors import UsageError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, _join_size_args(list(args)))


def one_line_error(r, code=2) -> str:
    """The single ``error:`` line of a failed run: exit ``code``, no traceback, the error is the last
    line of stderr (warnings and progress may come before it)."""
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    return errors[0]


@pytest.fixture
def no_work(monkeypatch):
    """Building a model fails the test: the case must be refused before any slow work starts."""
    import defmamba_deploy.model as model_pkg
    import defmamba_deploy.onnx.export as export_mod

    def started(*a, **k):
        raise AssertionError("the work started before the bad input was refused")

    monkeypatch.setattr(model_pkg, "create_model", started)
    monkeypatch.setattr(export_mod, "create_model", started)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
    return path


# --- numbers that are not numbers -----------------------------------------------------------------

BAD_NUMBERS = [
    (["bench", "--seconds", "nan"], "--seconds"),
    (["bench", "--seconds", "inf"], "--seconds"),
    (["bench", "--seconds", "-1"], "--seconds"),
    (["bench", "--seconds", "0"], "--seconds"),
    (["bench", "--seconds", "1e9"], "--seconds"),
    (["bench", "--iters", "0"], "--iters"),
    (["bench", "--warmup", "-1"], "--warmup"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--batch", "0"], "--batch"),
    (["bench", "--batch", ","], "--batch"),
    (["bench", "--batch", "1,x"], "--batch"),
    (["bench", "--backends", ","], "--backends"),
    (["bench", "--backends", "torch,nope"], "unknown backend"),
    (["bench", "--precision", ","], "--precision"),
    (["bench", "--img-size", ","], "--img-size"),
    (["bench", "--ops", "--seconds", "nan"], "--seconds"),
    (["bench", "--ops", "--warmup", "-3"], "--warmup"),
    (["bench", "--ops", "--threads", "-1"], "--threads"),
    (["bench", "--ops", "--img-size", "224x160"], "square"),
    (["bench", "--ops", "--img-size", "16"], "--img-size"),
    (["parity", "--atol", "nan"], "--atol"),
    (["parity", "--atol", "inf"], "--atol"),
    (["parity", "--atol", "-1"], "--atol"),
    (["parity", "--rtol", "nan"], "--rtol"),
    (["parity", "--rtol", "-0.5"], "--rtol"),
    (["parity", "--backends", ","], "--backends"),
    (["parity", "--backends", " , ,"], "--backends"),
    (["parity", "--batch", ","], "--batch"),
    (["parity", "--batch", "-4"], "--batch"),
    (["parity", "--samples", "-1"], "--samples"),
    (["parity", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("args,names", BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_one_line(args, names, no_work):
    line = one_line_error(invoke(*args))  # refused up front: a NaN budget used to run for ever
    assert names in line


def test_api_refuses_non_finite_numbers():
    from defmamba_deploy.bench import run_bench, time_callable
    from defmamba_deploy.bench_ops import run_op_bench
    from defmamba_deploy.parity import run_parity

    nan = math.nan
    for call in (lambda: run_parity("t", atol=nan), lambda: run_parity("t", rtol=-1.0),
                 lambda: run_parity("t", backends=[]), lambda: run_parity("t", batches=[]),
                 lambda: run_bench("t", seconds=nan), lambda: run_bench("t", seconds=math.inf),
                 lambda: run_bench("t", warmup=-1), lambda: run_bench("t", backends=["", " "]),
                 lambda: run_op_bench("t", seconds=nan), lambda: run_op_bench("t", img_sizes=[]),
                 lambda: run_op_bench("t", threads=0), lambda: run_op_bench("t", impls=["gpu"]),
                 lambda: time_callable(lambda: None, warmup=0, iters=None, seconds=None)):
        with pytest.raises(UsageError):
            call()


def test_checks_module():
    from defmamba_deploy import checks

    assert checks.number(0.5, "x", low=0) == 0.5
    assert checks.count(3.0, "n") == 3
    assert checks.names(" torch, ort ,torch,", "--backends") == ["torch", "ort"]
    assert checks.int_list("1, 4", "--batch") == [1, 4]
    for bad in (math.nan, -math.inf, "1", None, True):
        with pytest.raises(UsageError):
            checks.number(bad, "x")
    for bad in (1.5, math.nan, "2", True, 0):
        with pytest.raises(UsageError):
            checks.count(bad, "n")


# --- Click's own usage errors, --version ------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["bench", "--bogus"], "No such option"),
    (["export", "--opset", "abc"], "--opset"),
    (["predict"], "Missing argument"),
    (["predict", "--topk", "0", "x.png"], "--topk"),
    (["no-such-command"], "No such command"),
])
def test_click_usage_errors_are_one_line(args, fragment):
    line = one_line_error(invoke(*args))
    assert fragment in line and "--help" in line


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"defmamba-deploy {__version__}"


def test_no_arguments_prints_the_help():
    r = invoke()
    assert r.exit_code == 0 and "Usage" in r.stdout and "predict" in r.stdout


# --- labels files of the wrong kind -------------------------------------------------------------

@pytest.mark.parametrize("kind,fragment", [
    ("binary", "not UTF-8"), ("nul", "binary"), ("folder", "is a folder"), ("missing", "does not exist"),
    ("empty", "is empty"),
])
def test_bad_labels_file(kind, fragment, tmp_path, image):
    labels = tmp_path / "labels.txt"
    if kind == "binary":
        labels.write_bytes(bytes(range(128, 256)) * 4)
    elif kind == "nul":
        labels.write_bytes(b"cat\x00dog\n")
    elif kind == "folder":
        labels.mkdir()
    elif kind == "empty":
        labels.write_text("\n\n")
    line = one_line_error(invoke("predict", "-m", "t", "--img-size", "48", "--labels", str(labels), str(image)))
    assert fragment in line and str(labels) in line


def test_good_labels_file(tmp_path, image):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1000)), encoding="utf-8")
    r = invoke("predict", "-m", "t", "--img-size", "48", "--labels", str(labels), "--json", str(image))
    assert r.exit_code == 0, r.output
    assert '"label": "class ' in r.stdout


# --- out of memory, signals ---------------------------------------------------------------------

def test_out_of_memory_is_one_line(monkeypatch, image):
    import defmamba_deploy.model as model_pkg

    def huge(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(model_pkg, "create_model", huge)
    assert "out of memory" in one_line_error(invoke("predict", "-m", "t", "--img-size", "48", str(image)))


def test_sigterm_mid_write_leaves_nothing(tmp_path):
    """SIGTERM while a file is half-written: the temporary goes, the target never appears, exit 143."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        import typer
        from defmamba_deploy import cli
        from defmamba_deploy.files import atomic_write_with

        cli.install_signal_handlers()

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"half a model")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        try:
            cli.handle_errors(lambda: atomic_write_with(sys.argv[1], write))()
        except typer.Exit as e:
            sys.exit(e.exit_code)
    """)
    target = tmp_path / "out" / "model.onnx"
    r = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 143, r.stderr
    assert "terminated" in r.stderr and "Traceback" not in r.stderr
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_sigterm_during_a_command(tmp_path):
    """The installed command under SIGTERM: exit 143, one line, no report file, no temporaries."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "defmamba_deploy.cli", "bench", "-m", "t", "--backends", "torch", "--img-size", "64",
           "--seconds", "60", "--json", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        time.sleep(8)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip().startswith("error:")]
    assert lines == ["error: terminated"] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --- outputs that cannot be written: refused before the work ------------------------------------

def _unwritable(kind: str, tmp_path: Path, name: str) -> Path:
    if kind == "folder":
        (tmp_path / name).mkdir()
        return tmp_path / name
    if kind == "parent-is-file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / name
    if kind == "name-too-long":
        return tmp_path / ("n" * 300 + Path(name).suffix)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["folder", "parent-is-file", "name-too-long"])
@pytest.mark.parametrize("cmd", ["export", "bench --json", "bench --csv", "bench --plot", "parity --json"])
def test_unwritable_output_fails_first(cmd, kind, tmp_path, no_work):
    name = {"export": "m.onnx", "bench --plot": "p.png"}.get(cmd, "out.json")
    out = _unwritable(kind, tmp_path, name)
    before = sorted(tmp_path.rglob("*"))
    args = {"export": ["export", "-m", "t", "-o", str(out)]}.get(cmd) or [*cmd.split(), str(out), "-m", "t"]
    line = one_line_error(invoke(*args))  # before the export or the benchmark, not after
    assert "cannot write" in line and str(out)[:60] in line
    assert sorted(tmp_path.rglob("*")) == before


def test_plot_with_an_unknown_ending_fails_first(tmp_path):
    line = one_line_error(invoke("bench", "-m", "t", "--plot", str(tmp_path / "p.txt")))
    assert ".png" in line


# --- damaged checkpoints: refused by default, named opt-out ---------------------------------------

def test_nonfinite_weights_refused_with_an_opt_out(tmp_path, image):
    import torch

    import defmamba_deploy as dd

    sd = dd.create_model("t").state_dict()
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)
    sd[key].view(-1)[:3] = float("nan")
    w = tmp_path / "nan.pth"
    torch.save(sd, w)
    for cmd in (["predict", "-m", "t", "--img-size", "48", "-w", str(w), str(image)],
                ["export", "-m", "t", "-w", str(w), "-o", str(tmp_path / "m.onnx")],
                ["parity", "-m", "t", "-w", str(w), "--backends", "torch", "--samples", "1", "--img-size", "48"],
                ["bench", "-m", "t", "-w", str(w), "--backends", "torch", "--img-size", "48", "--iters", "1"]):
        line = one_line_error(invoke(*cmd), code=3)
        assert key in line and "--allow-nonfinite" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pth"]
    # with the opt-out the file loads; its NaN logits are then refused by the output check instead
    r = invoke("predict", "-m", "t", "--img-size", "48", "-w", str(w), "--allow-nonfinite", str(image))
    assert r.exit_code != 3, r.output


# --- preprocessing options, non-finite outputs ------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["--interpolation", "cubic"], "interpolation must be one of"),
    (["--crop-pct", "2"], "crop_pct must be in (0, 1]"),
    (["--crop-pct", "nan"], "crop_pct"),
])
@pytest.mark.parametrize("cmd", ["predict", "export"])
def test_bad_preprocessing_options(cmd, args, fragment, tmp_path, image):
    base = ["predict", "-m", "t", "--img-size", "48", str(image)] if cmd == "predict" else \
        ["export", "-m", "t", "-o", str(tmp_path / "m.onnx")]
    assert fragment in one_line_error(invoke(*base, *args))
    assert not list(tmp_path.iterdir())


def test_interpolation_reaches_the_model(image):
    import json

    def probs(*extra):
        r = invoke("predict", "-m", "t", "--img-size", "48", "--json", "--topk", "3", *extra, str(image))
        assert r.exit_code == 0, r.output
        return [t["prob"] for t in json.loads(r.stdout)[0]["top"]]

    assert probs() == probs("--interpolation", "bilinear")
    assert probs() != probs("--interpolation", "nearest")


def test_nan_logits_are_an_error_not_an_answer():
    from defmamba_deploy.errors import OutputError
    from defmamba_deploy.runtime.predictor import top_k

    logits = np.zeros((3, 10), np.float32)
    logits[1, 4] = np.nan
    with pytest.raises(OutputError, match="1 of 3 image"):
        top_k(logits, 5)
    logits[1, 4] = np.inf
    with pytest.raises(OutputError):
        top_k(logits, 5)
    assert len(top_k(np.zeros((2, 10)), 5)) == 2


def test_a_named_plugin_library_that_is_not_one_is_an_error(tmp_path, no_work):
    """A library the user names is an error when unusable (a backend found missing on its own is skipped)."""
    fake = tmp_path / "libfake.so"
    fake.write_text("not a library")
    line = one_line_error(invoke("parity", "-m", "t", "--backends", "ort", "--plugins", str(fake), "--samples", "1",
                                 "--img-size", "48", "--batch", "1", "--reexport"))  # before export and reference
    assert "not a shared library" in line and str(fake) in line


def test_a_command_without_torch_says_which_extra(monkeypatch, image):
    import defmamba_deploy.model as model_pkg

    def no_torch(*a, **k):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(model_pkg, "create_model", no_torch)
    line = one_line_error(invoke("predict", "-m", "t", "--img-size", "48", str(image)))
    assert "defmamba-deploy[export]" in line and "torch==2.13.0" in line
