"""bench: JSON schema, honest-timing helpers, bad arguments (no speed is asserted here)."""
import json

import jsonschema
import pytest
from typer.testing import CliRunner

from defmamba_deploy import bench as B
from defmamba_deploy.cli import app
from defmamba_deploy.onnx import export_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def small_report():
    rep = B.run_bench("t", backends=["torch", "ort", "ort-portable", "trt"], batches=[1, 2], sizes=[(48, 48)],
                      precisions=["fp32", "fp16"], warmup=1, iters=2, seconds=None)
    return rep.to_dict()


def test_report_follows_schema(small_report):
    B.validate_report(small_report)
    rows = {(r["backend"], r["precision"], r["batch"]) for r in small_report["results"]}
    assert ("torch", "fp32", 1) in rows and ("torch", "fp32", 2) in rows
    assert ("ort-portable", "fp32", 2) in rows
    skipped = {(s["backend"], s["precision"]) for s in small_report["skipped"]}
    assert ("trt", "fp32") in skipped  # no TensorRT here: skipped with a reason, not an error
    assert ("torch", "fp16") in skipped and all(s["reason"] for s in small_report["skipped"])
    for r in small_report["results"]:
        assert r["iters"] == 2 and r["p99_ms"] >= r["median_ms"] >= r["min_ms"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1000))
        assert r["peak_rss_mib"] > 0


def test_schema_rejects_bad_reports(small_report):
    bad = json.loads(json.dumps(small_report))
    bad["results"][0]["batch"] = 0
    with pytest.raises(jsonschema.ValidationError):
        B.validate_report(bad)
    bad = json.loads(json.dumps(small_report))
    del bad["results"][0]["p90_ms"]
    with pytest.raises(jsonschema.ValidationError):
        B.validate_report(bad)


def test_time_callable_excludes_warmup_and_syncs():
    calls, syncs = [], []
    times = B.time_callable(lambda: calls.append(1), warmup=3, iters=5, seconds=None, sync=lambda: syncs.append(1))
    assert len(times) == 5 and len(calls) == 8
    assert len(syncs) == 1 + 5  # once after the warm-up, then before every clock read
    times = B.time_callable(lambda: None, warmup=0, iters=None, seconds=0.01)
    assert len(times) >= 3


def test_percentile_and_rss():
    assert B.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)
    with B.PeakRss() as rss:
        buf = bytearray(64 * 2**20)  # noqa: F841 - touched memory shows up in the peak
        buf[:: 4096] = b"x" * len(buf[:: 4096])
    assert rss.peak >= 64


def _err(result):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize("args,match", [
    (["--backends", "torch,tensorflow"], "unknown backend"),
    (["--batch", "0"], "--batch must be an integer >= 1"),
    (["--batch", "1,x"], "comma-separated integers"),
    (["--img-size", "32"], "below the model minimum"),
    (["--precision", "fp8"], "unknown precision"),
    (["--iters", "0"], "--iters must be an integer >= 1"),
])
def test_bad_arguments(args, match):
    out = _err(runner.invoke(app, ["bench", "-m", "t", *args]))
    assert match in out


def test_onnx_for_another_variant(tmp_path):
    path = export_onnx("t", img_size=(48, 48), output=tmp_path / "t.onnx").path
    out = _err(runner.invoke(app, ["bench", "-m", "s", "--backends", "ort", "--onnx", str(path), "--img-size", "48"]))
    assert "DefMamba-tiny, not DefMamba-small" in out
    out = _err(runner.invoke(app, ["bench", "-m", "t", "--backends", "ort", "--onnx", str(path), "--img-size", "64"]))
    assert "exported for 48x48 only" in out


def test_cli_writes_json_csv_plot(tmp_path):
    pytest.importorskip("matplotlib")
    j, c, p = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    r = runner.invoke(app, ["bench", "-m", "t", "--backends", "torch,trt", "--batch", "1,2", "--img-size", "40",
                            "--iters", "2", "--warmup", "0", "--json", str(j), "--csv", str(c), "--plot", str(p)])
    assert r.exit_code == 0, r.output
    data = json.loads(j.read_text())
    B.validate_report(data)
    assert len(data["results"]) == 2 and data["skipped"][0]["backend"] == "trt"
    assert c.read_text().splitlines()[0].startswith("backend,precision,batch")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "skipped" in r.output and "trt" in r.output


def test_op_bench_rows():
    from defmamba_deploy.bench_ops import op_bytes, run_op_bench

    res = run_op_bench("t", img_sizes=(64,), impls=("torch", "ort-portable"), seconds=None, iters=1, warmup=0)
    assert res["memcpy_gb_s"] > 0 and res["memcpy_gb_s_1thread"] > 0 and res["memcpy_threads"] >= 1
    ops = {(r["op"], r["impl"]) for r in res["rows"]}
    assert ("SelectiveScan", "torch") in ops and ("TokenSort", "ort-portable") in ops
    for r in res["rows"]:
        assert r["bytes"] > 0 and r["achieved_gb_s"] > 0
    assert op_bytes("SelectiveScan", {"L": 10, "Ch": 6, "G": 3, "N": 4}) == 4 * 10 * (18 + 24) + 4 * 6 * 6


def test_scan_floor_benchmark_measures_the_kernels_exp(tmp_path):
    """benchmarks/scan_floor.py's C++ program builds with the plugins' flags, times the kernel's exp
    (bit for bit the scalar reference exp2_table_f32), and both exps it compares stay within 2 ulp."""
    import importlib.util
    import shutil
    import subprocess
    from pathlib import Path

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler on this machine")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "scan_floor.py"
    spec = importlib.util.spec_from_file_location("scan_floor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exe = mod.build(tmp_path)
    out = json.loads(subprocess.run([str(exe), "1", "1"], check=True, capture_output=True, text=True).stdout)
    if "skipped" in out:
        pytest.skip(out["skipped"])
    v = out["variants"]
    assert set(v) == {"kernel_exp", "coef_exp", "no_exp"}
    assert v["kernel_exp"]["same_as_kernel"] is True
    assert v["kernel_exp"]["max_ulp"] <= 2.0 and v["coef_exp"]["max_ulp"] <= 2.0
    assert all(x["median_ms"] > 0 for x in v.values())
