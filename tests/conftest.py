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
