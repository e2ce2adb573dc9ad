"""Serving needs no PyTorch: ``import defmamba_deploy.runtime`` and a whole ``Predictor(...).predict`` on a
standard-ops ONNX file run in a fresh interpreter without importing torch or the exporter.

The fresh interpreters get this checkout first on their path, so they test this tree and not whichever
copy the environment has installed."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import defmamba_deploy as dd

ROOT = Path(__file__).resolve().parents[2]
CLASSES = 10
SIZE = 64


# what must stay out of a serving process: PyTorch and the code that needs it
CHECK_TORCH_FREE = """
    import sys
    heavy = [m for m in ("torch", "defmamba_deploy.onnx.export", "defmamba_deploy.model.defmamba",
                         "defmamba_deploy.model.checkpoint", "defmamba_deploy.ops") if m in sys.modules]
    assert not heavy, f"imported {heavy}"
"""


def _fresh(code: str, cwd: Path, *, torch_free: bool = True) -> str:
    """Run ``code`` (then the torch-free check) in a new interpreter on this checkout; its stdout, or the
    failure with its stderr."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    script = textwrap.dedent(code) + (textwrap.dedent(CHECK_TORCH_FREE) if torch_free else "")
    r = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_the_runtime_imports_without_torch(tmp_path):
    out = _fresh("""
        import defmamba_deploy as dd
        import defmamba_deploy.runtime
        from defmamba_deploy.data import preprocess
        from defmamba_deploy.runtime import OrtRunner, Predictor, backend_names, create_session
        print(dd.__file__)
        print(",".join(backend_names()))  # the registry imports every built-in backend module
        print(dd.__version__, dd.UsageError.__name__, callable(dd.get_library_path))
    """, tmp_path)
    path, backends, root = out.splitlines()
    assert Path(path).resolve() == (ROOT / "defmamba_deploy" / "__init__.py").resolve()
    assert backends.split(",")[:4] == ["torch", "ort", "ort-portable", "trt"]
    assert root == f"{dd.__version__} UsageError True"


def _tiny_classifier(folder: Path) -> tuple[Path, np.ndarray]:
    """(N, 3, 64, 64) -> GlobalAveragePool -> Flatten -> MatMul: 10 logits, a standard-ops ONNX file with
    the sidecar export would write; and its weight matrix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from defmamba_deploy.data import preprocessing_record
    from defmamba_deploy.onnx.sidecar import OnnxSidecar, sidecar_path

    w = np.random.default_rng(0).standard_normal((3, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "tiny.onnx"
    onnx.save(model, str(path))
    side = OnnxSidecar(variant="tiny", portable=True, dynamic="batch", export_input_size=[SIZE, SIZE],
                       inputs=[{"name": "input", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32"}],
                       outputs=[{"name": "logits", "shape": ["batch", CLASSES], "dtype": "float32"}],
                       preprocessing=preprocessing_record((SIZE, SIZE)))
    sidecar_path(path).write_text(json.dumps(side.to_dict()))
    return path, w


def test_a_prediction_runs_without_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from defmamba_deploy.data import preprocess
    from defmamba_deploy.onnx.sidecar import read_sidecar

    model, w = _tiny_classifier(tmp_path)
    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    out = _fresh(f"""
        import json
        from defmamba_deploy.runtime import Predictor
        print(json.dumps(Predictor({str(model)!r}).predict([{str(image)!r}], topk=3)))
    """, tmp_path)
    got = json.loads(out)

    pre = read_sidecar(model).preprocessing  # the expected answer, by hand from the same preprocessing
    x = preprocess(str(image), (SIZE, SIZE), pre["crop_pct"], pre["mean"], pre["std"], interpolation=pre["interpolation"])
    logits = x.mean(axis=(1, 2)).astype(np.float64) @ w
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = np.argsort(-probs, kind="stable")[:3]
    assert [p["class"] for p in got[0]] == best.tolist()
    np.testing.assert_allclose([p["prob"] for p in got[0]], probs[best], rtol=1e-4)


def test_the_lazy_names_resolve():
    """The package root, model and onnx packages load their torch-side names on first use, and list them."""
    import defmamba_deploy.model as model_pkg
    import defmamba_deploy.onnx as onnx_pkg
    from defmamba_deploy.model import checkpoint
    from defmamba_deploy.onnx import export

    assert dd.create_model is model_pkg.create_model and dd.load_checkpoint is checkpoint.load_checkpoint
    assert dd.list_models() == ["tiny", "small", "base"]
    assert onnx_pkg.export_onnx is export.export_onnx and onnx_pkg.default_output is export.default_output
    assert model_pkg.DefMamba.__module__ == "defmamba_deploy.model.defmamba"
    for pkg in (dd, model_pkg, onnx_pkg):
        assert set(pkg.__all__) <= set(dir(pkg)), pkg.__name__
        assert all(getattr(pkg, name) is not None for name in pkg.__all__)
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            pkg.nope  # noqa: B018


def test_torch_loads_on_first_use_of_a_model_name(tmp_path):
    """``dd.model`` and the variant list come without torch; ``dd.create_model`` brings it."""
    out = _fresh("""
        import sys
        import defmamba_deploy as dd
        assert dd.model.MIN_INPUT_SIZE == 33 and dd.list_models() == ["tiny", "small", "base"]
        assert "torch" not in sys.modules
        model = dd.create_model("t")
        print(type(model).__name__, "torch" in sys.modules, dd.onnx.export.__name__)
    """, tmp_path, torch_free=False)
    assert out.split() == ["DefMamba", "True", "defmamba_deploy.onnx.export"]
