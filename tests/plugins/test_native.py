"""The C++ unit tests (ctest: shared math vs libm, CPU kernels per SIMD variant, TensorRT plugin
suite), run from pytest so that CI reports their failures with the rest."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUILD_DIR = Path(os.environ.get("DEFMAMBA_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))


def test_ctest_suite():
    if shutil.which("ctest") is None:
        pytest.skip("ctest (CMake) is not installed")
    if not (BUILD_DIR / "CTestTestfile.cmake").is_file():
        pytest.skip(f"no CMake build in {BUILD_DIR}: run bash scripts/build_plugins.sh")
    proc = subprocess.run(["ctest", "--test-dir", str(BUILD_DIR), "--output-on-failure", "--timeout", "600"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-8000:] + proc.stderr[-4000:])
    assert "100% tests passed" in proc.stdout, proc.stdout[-4000:]
