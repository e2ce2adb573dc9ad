import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = Path(os.environ.get("DEFMAMBA_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (SHARED_REFERENCE / "official_tiny_seed0.pt").is_file():
        pytest.skip(f"official reference files not found in {SHARED_REFERENCE} (set DEFMAMBA_REFERENCE_DIR)")
    return SHARED_REFERENCE


@pytest.fixture(scope="session")
def golden(reference_dir):
    return torch.load(reference_dir / "official_tiny_seed0.pt")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lib():
    """The built ONNX Runtime custom-op library (tests that need it skip, saying how to build it)."""
    from defmamba_deploy.libs import find_library

    path = find_library("ort", required=False)
    if path is None:
        pytest.skip("libdefmamba_ort_ops.so is not built (bash scripts/build_plugins.sh)")
    return path


# DefMamba-T exported once at 64x64 (dynamic batch) for the precision tests (FP16, INT8, policy)
@pytest.fixture(scope="session")
def fp32(tmp_path_factory):
    import onnx

    from defmamba_deploy.onnx import export_onnx

    res = export_onnx("t", img_size=(64, 64), dynamic="batch", output=tmp_path_factory.mktemp("precision") / "t.onnx")
    return res.path, onnx.load(str(res.path))


@pytest.fixture(scope="session")
def x():
    import numpy as np

    return np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="session")
def ref(lib, fp32, x):
    """ONNX Runtime's float32 output of ``fp32`` on ``x``: what reduced precisions are compared with."""
    from defmamba_deploy.runtime import create_session

    return create_session(fp32[0], threads=2).run(None, {"input": x})[0]


@pytest.fixture(scope="session")
def fp16(fp32):
    from defmamba_deploy.onnx.precision import convert_fp16

    return convert_fp16(fp32[1])
