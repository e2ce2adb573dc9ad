"""ORT runtime: sessions with the custom-op library, input validation, Predictor, parity end to end."""
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import defmamba_deploy as dd
from shared_inputs import BAD_BATCHES
from defmamba_deploy.cli import _join_size_args, app
from defmamba_deploy.onnx import export_onnx
from defmamba_deploy.parity import run_parity
from defmamba_deploy.runtime import OrtRunner, Predictor, create_session


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    w = d / "t.pth"
    torch.save(dd.create_model("t", seed=1).state_dict(), w)
    custom = export_onnx("t", w, img_size=(64, 64), dynamic="batch", output=d / "t.onnx")
    portable = export_onnx("t", w, img_size=(64, 64), dynamic="batch", portable=True, output=d / "tp.onnx")
    static = export_onnx("t", w, img_size=(64, 64), dynamic="none", output=d / "ts.onnx")
    return {"weights": w, "custom": custom.path, "portable": portable.path, "static": static.path}


def reference(weights, x):
    with torch.inference_mode():
        return dd.create_model("t", weights)(torch.from_numpy(x)).numpy()


def test_dynamic_batch_from_one_file(lib, exported):
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    ref = reference(exported["weights"], x)
    for key in ("custom", "portable"):
        runner = OrtRunner(exported[key], threads=2)
        np.testing.assert_allclose(runner(x), ref, atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(runner(x[:1]), ref[:1], atol=1e-4, rtol=1e-3)


def test_portable_runs_without_library(exported):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported["portable"]), providers=["CPUExecutionProvider"])  # plain session
    out = sess.run(None, {"input": np.zeros((2, 3, 64, 64), np.float32)})[0]
    assert out.shape == (2, 1000)


@pytest.mark.parametrize("x,match", BAD_BATCHES)
def test_bad_inputs(lib, exported, x, match):
    runner = OrtRunner(exported["custom"])
    with pytest.raises(dd.UsageError, match=match):
        runner(x)


def test_static_model_rejects_other_shapes(lib, exported):
    runner = OrtRunner(exported["static"])
    runner(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(dd.UsageError, match="fixed input shape.*--dynamic"):
        runner(np.zeros((2, 3, 64, 64), np.float32))


def test_explicit_library_path_and_missing_library(lib, exported, tmp_path):
    assert create_session(exported["custom"], library=lib) is not None
    with pytest.raises(dd.MissingDependencyError, match="does not exist"):
        create_session(exported["custom"], library=tmp_path / "nope.so")
    with pytest.raises(dd.UsageError, match="not available"):
        create_session(exported["custom"], providers=["NoSuchExecutionProvider"])


def test_predictor_thread_safe(lib, exported, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((70, 90, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    pred = Predictor(exported["custom"], threads=1)
    assert pred.img_size == (64, 64)  # from the sidecar
    expected = [pred.predict([p], topk=3)[0] for p in paths]
    assert pred.predict(paths[0], topk=3) == [expected[0]]  # one path instead of a list
    assert pred.predict([]) == []
    for bad in (0, -2, 2.5):
        with pytest.raises(dd.UsageError, match="topk must be an integer >= 1"):
            pred.predict(paths[:1], topk=bad)
    assert [e["prob"] for e in expected[0]] == sorted([e["prob"] for e in expected[0]], reverse=True)
    results, errors = {}, []

    def worker(i):
        try:
            for _ in range(3):
                results.setdefault(i, []).append(pred.predict([paths[i]], topk=3)[0])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        for r in results[i]:
            assert [c["class"] for c in r] == [c["class"] for c in expected[i]]


def test_parity_api_and_cli(lib, exported, tmp_path):
    report = run_parity("t", exported["weights"], onnx=exported["custom"], portable_onnx=exported["portable"],
                        samples=2, images=None, img_size=(64, 64), batches=(1, 3))
    assert report.passed and {(r.backend, r.batch) for r in report.rows} == {
        (b, n) for b in ("torch", "ort", "ort-portable") for n in (1, 3)}
    for r in report.rows:
        assert r.max_abs < 1e-4 and r.cosine > 0.99999 and r.top1 == 1.0
    runner = CliRunner()
    out = tmp_path / "p.json"
    args = ["parity", "-m", "t", "-w", str(exported["weights"]), "--onnx", str(exported["custom"]), "--backends", "torch,ort",
            "--img-size", "64", "--samples", "1", "--batch", "1,2", "--json", str(out)]
    r = runner.invoke(app, _join_size_args(args))
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["passed"] and len(data["rows"]) == 4
    # an impossible tolerance fails with exit code 1
    r = runner.invoke(app, _join_size_args(args[:-2] + ["--atol", "0", "--rtol", "0"]))
    assert r.exit_code == 1 and "parity failed" in r.output


def test_cli_predict_onnx_matches_pytorch(lib, exported, tmp_path):
    """`predict --onnx F` (the service Predictor) ranks like `predict` with the same weights."""
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(5).random((80, 70, 3)) * 255).astype(np.uint8)).save(img)
    runner = CliRunner()
    r_onnx = runner.invoke(app, ["predict", "--onnx", str(exported["custom"]), str(img), "--topk", "3", "--json"])
    r_torch = runner.invoke(app, ["predict", "-m", "t", "-w", str(exported["weights"]), "--img-size", "64", str(img),
                                  "--topk", "3", "--json"])
    assert r_onnx.exit_code == 0 and r_torch.exit_code == 0, r_onnx.output + r_torch.output
    top = lambda out: [t["class"] for t in json.loads(out[out.index("["):])[0]["top"]]  # noqa: E731
    assert top(r_onnx.stdout) == top(r_torch.stdout)
    r = runner.invoke(app, ["predict", "--onnx", str(exported["custom"]), "-w", str(exported["weights"]), str(img)])
    assert r.exit_code == 2 and "drop --weights or --onnx" in r.output


def test_parity_refuses_mismatched_files(lib, exported, tmp_path):
    with pytest.raises(dd.UsageError, match="--model t"):
        run_parity("s", onnx=exported["custom"], backends=["ort"], samples=1, img_size=(64, 64))
    other = tmp_path / "other.pth"
    torch.save(dd.create_model("t", seed=5).state_dict(), other)
    with pytest.raises(dd.UsageError, match="other weights"):
        run_parity("t", other, onnx=exported["custom"], backends=["ort"], samples=1, img_size=(64, 64))
    with pytest.raises(dd.UsageError, match="unknown backend"):
        run_parity("t", backends=["tensorflow"])


def test_parity_checks_the_file_export_wrote(lib, exported, tmp_path, monkeypatch):
    """`export` then `parity` in one folder: parity runs ./defmamba_<m>.onnx when it matches the run."""
    import shutil

    monkeypatch.chdir(tmp_path)
    for suffix in (".onnx", ".onnx.json"):
        shutil.copy(str(exported["custom"]) + suffix[5:], "defmamba_t" + suffix)
    said = []
    report = run_parity("t", exported["weights"], backends=["ort"], samples=1, img_size=(64, 64), batches=(1, 2),
                        progress=said.append)
    assert report.passed and "running ort: defmamba_t.onnx" in said, said
    # another size than the file was exported for: not used, exported afresh (and says why)
    said.clear()
    report = run_parity("t", exported["weights"], backends=["ort"], samples=1, img_size=(48, 48), batches=(1,),
                        progress=said.append)
    assert report.passed and any("not using defmamba_t.onnx: its input size is fixed to 64" in m for m in said), said
    assert not any(m == "running ort: defmamba_t.onnx" for m in said)
    # --reexport ignores it
    said.clear()
    run_parity("t", exported["weights"], backends=["ort"], samples=1, img_size=(64, 64), batches=(1,),
               use_exported=False, progress=said.append)
    assert not any("defmamba_t.onnx" in m for m in said), said
    # the same through the CLI: `export` then `parity` in one folder, and --reexport
    runner = CliRunner()
    args = ["parity", "-m", "t", "-w", str(exported["weights"]), "--backends", "ort", "--img-size", "64",
            "--samples", "1", "--batch", "1"]
    r = runner.invoke(app, _join_size_args(args))
    assert r.exit_code == 0 and "running ort: defmamba_t.onnx" in r.output, r.output
    r = runner.invoke(app, _join_size_args(args + ["--reexport"]))
    assert r.exit_code == 0 and "defmamba_t.onnx" not in r.output, r.output


def test_backbone_parity(lib, tmp_path):
    """parity compares the backbone's four feature maps (no top-k), from the file's sidecar or --backbone."""
    bb = export_onnx("t", img_size=(64, 64), backbone=True, output=tmp_path / "bb.onnx").path
    report = run_parity("t", onnx=bb, backends=["torch", "ort"], samples=1, images=None, img_size=(64, 64),
                        batches=(1, 2))
    assert report.passed
    assert {(r.backend, r.batch, r.output) for r in report.rows} == {
        (b, n, f"feat{i}") for b in ("torch", "ort") for n in (1, 2) for i in range(4)}
    assert all(r.top1 is None and r.max_abs < 1e-4 for r in report.rows)
    with pytest.raises(dd.UsageError, match="backbone export .* drop --backbone|pass --backbone|classifier"):
        run_parity("t", onnx=bb, backends=["ort"], samples=1, img_size=(64, 64), backbone=False)
    r = CliRunner().invoke(app, _join_size_args(["parity", "-m", "t", "--onnx", str(bb), "--backends", "ort",
                                                 "--img-size", "64", "--samples", "1", "--batch", "1"]))
    assert r.exit_code == 0 and "feat3" in r.output, r.output


def test_sidecar_problem():
    """OnnxSidecar.problem: the one check of whether an exported file may stand in for a run."""
    from types import SimpleNamespace

    from defmamba_deploy.onnx.sidecar import OnnxSidecar

    base = {"variant": "tiny", "backbone": False, "portable": False, "inputs": [{"shape": ["batch", 3, 224, 224]}],
            "outputs": [{"name": "logits"}], "dynamic": "batch", "weights": {"random_init_seed": 0}}

    def problem(side: dict, **kw):
        ok = dict(variant="tiny", portable=False, backbone=False, weights=None, load_report=None,
                  img_sizes=[kw.pop("img_size", (224, 224))], batches=(1, 4))
        return OnnxSidecar.from_dict(side).problem(**{**ok, **kw})

    assert problem(base) is None
    assert "DefMamba-small" in problem({**base, "variant": "small"})
    assert "backbone" in problem({**base, "backbone": True})
    assert problem({**base, "backbone": True}, backbone=True) is None
    assert "classifier export" in problem(base, backbone=True)
    assert "portable export" in problem({**base, "portable": True})
    assert "custom-op export" in problem(base, portable=True)
    assert "input size is fixed to 224" in problem(base, img_size=(224, 256))
    fixed = {**base, "inputs": [{"shape": [1, 3, 224, 224]}], "dynamic": "none"}
    assert "batch is fixed to 1" in problem(fixed)
    assert problem(fixed, batches=(1,)) is None
    anysize = {**base, "inputs": [{"shape": ["batch", 3, "height", "width"]}], "dynamic": "shape"}
    assert problem(anysize, img_size=(160, 256)) is None
    assert "seed 3" in problem({**base, "weights": {"random_init_seed": 3}})
    rep = SimpleNamespace(sha256="abc", source="model")
    trained = {**base, "weights": {"path": "w.pth", "sha256": "abc", "source": "model"}}
    assert "--weights" in problem(trained)
    assert problem(trained, weights="w.pth", load_report=rep) is None
    assert "other weights" in problem(trained, weights="w.pth", load_report=SimpleNamespace(sha256="def", source="model"))
    assert "'model' entry, not 'model_ema'" in problem(
        trained, weights="w.pth", load_report=SimpleNamespace(sha256="abc", source="model_ema"))
    assert "random weights" in problem(base, weights="w.pth", load_report=rep)


def test_sidecar_reading(tmp_path):
    """A missing sidecar reads as None; a broken one is an error naming it (a reader that relies on
    its preprocessing must not silently fall back to defaults); from_dict names what is wrong."""
    from defmamba_deploy.onnx.sidecar import OnnxSidecar

    f = tmp_path / "m.onnx"
    assert OnnxSidecar.read(f) is None
    (tmp_path / "m.onnx.json").write_text("{broken")
    with pytest.raises(dd.UsageError, match=r"ONNX sidecar \S+m\.onnx\.json is not valid JSON .*delete it or re-export"):
        OnnxSidecar.read(f)
    with pytest.raises(dd.UsageError, match="lacks variant"):
        OnnxSidecar.from_dict({"inputs": [], "outputs": []})
    with pytest.raises(dd.UsageError, match="format"):
        OnnxSidecar.from_dict({"format": "other/1", "variant": "tiny", "inputs": [], "outputs": []})
    with pytest.raises(dd.UsageError, match="input shape"):
        OnnxSidecar.from_dict({"variant": "tiny", "inputs": [{"shape": [3, 4]}], "outputs": []})


def test_parity_random_init_matches_export(lib, tmp_path):
    """Without weights, export and parity share the seeded random init."""
    path = export_onnx("t", img_size=(48, 48), output=tmp_path / "r.onnx").path
    report = run_parity("t", onnx=path, backends=["ort"], samples=1, img_size=(48, 48), batches=(1,))
    assert report.passed


def test_dynamic_shape_and_backbone_exports_run(lib, tmp_path):
    """One dynamic-shape file serves several sizes; the backbone export returns the 4 maps."""
    m = dd.create_model("t", seed=0)
    path = export_onnx("t", img_size=(64, 64), dynamic="shape", output=tmp_path / "d.onnx").path
    runner = OrtRunner(path)
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128), (1, 3, 160, 96)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            ref = m(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(runner(x), ref, atol=1e-4, rtol=1e-3)
    res = export_onnx("t", img_size=(64, 96), dynamic="shape", backbone=True, output=tmp_path / "bb.onnx")
    assert [o["shape"][1] for o in res.sidecar.outputs] == [48, 96, 192, 384]
    outs = OrtRunner(res.path).run(np.random.default_rng(2).standard_normal((2, 3, 96, 64)).astype(np.float32))
    with torch.inference_mode():
        refs = dd.create_model("t", seed=0, backbone=True)(torch.from_numpy(
            np.random.default_rng(2).standard_normal((2, 3, 96, 64)).astype(np.float32)))
    assert [o.shape for o in outs] == [(2, 48, 24, 16), (2, 96, 12, 8), (2, 192, 6, 4), (2, 384, 3, 2)]
    for o, r in zip(outs, refs):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=1e-3)


def test_dynamic_shape_models_check_the_input_size_in_graph(lib, tmp_path):
    """A plain session (no OrtRunner checks) on a dynamic-shape file: < 33 px fails with the reason,
    for the custom-op model and the portable one (which would otherwise return NaN silently)."""
    import onnx
    import onnxruntime as ort

    from defmamba_deploy.onnx.guard import has_input_guard, strip_input_guard

    custom = export_onnx("t", img_size=(64, 64), dynamic="shape", output=tmp_path / "d.onnx")
    portable = export_onnx("t", img_size=(64, 64), dynamic="shape", portable=True, output=tmp_path / "dp.onnx")
    assert custom.sidecar.input_check_in_graph and portable.sidecar.input_check_in_graph
    ok = np.random.default_rng(3).standard_normal((2, 3, 33, 40)).astype(np.float32)
    for res in (custom, portable):
        sess = create_session(res.path)
        for shape in [(1, 3, 32, 64), (1, 3, 64, 32), (1, 3, 8, 8)]:
            with pytest.raises(Exception, match="height and width must be >= 33 px"):
                sess.run(None, {"input": np.zeros(shape, np.float32)})
        assert np.isfinite(sess.run(None, {"input": ok})[0]).all()
    # stripped (what build-engine hands TensorRT): the same results, no check left
    model = onnx.load(str(portable.path))
    stripped = strip_input_guard(model)
    assert has_input_guard(model) and not has_input_guard(stripped)
    onnx.checker.check_model(stripped, full_check=True)
    plain = ort.InferenceSession(stripped.SerializeToString(), providers=["CPUExecutionProvider"])
    guarded = ort.InferenceSession(str(portable.path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(plain.run(None, {"input": ok})[0], guarded.run(None, {"input": ok})[0])
    # static sizes need no check (every runtime checks the declared shape)
    static = export_onnx("t", img_size=(64, 64), dynamic="batch", output=tmp_path / "s.onnx")
    assert not static.sidecar.input_check_in_graph and not has_input_guard(onnx.load(str(static.path)))
