"""The package's layering (DEVELOPERS.md): each module imports only modules of its own or lower layers.

    0  errors, machine, libs, data   utilities (plugin-library discovery, image loading)
    1  ops                           the three ops as PyTorch functions (the semantic reference)
    2  model (and the package root)  DefMamba, checkpoints
    3  onnx                          schemas, symbolics, export, portable expansion, precision
    4  runtime                       ONNX Runtime / TensorRT sessions, engines, Predictor
    5  parity, bench                 backend comparison, benchmarks
    6  cli                           the Typer app

Imports inside functions count too: a lazy import is still a dependency.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "defmamba_deploy"
LAYERS = {
    "errors": 0, "machine": 0, "libs": 0, "data": 0,
    "ops": 1,
    "model": 2, "": 2,  # "" = the package root (__version__, re-exports of model and errors)
    "onnx": 3,
    "runtime": 4,
    "parity": 5, "bench": 5,
    "cli": 6,
}


def _unit(dotted: str) -> str:
    """'defmamba_deploy.onnx.export' -> 'onnx'; 'defmamba_deploy' -> ''."""
    parts = dotted.split(".")
    assert parts[0] == "defmamba_deploy", dotted
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """Absolute names of the defmamba_deploy modules that ``path`` imports (anywhere in the file)."""
    here = ["defmamba_deploy", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = here[:-1]  # the package a relative import starts from (for __init__.py: its own)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                # "from . import x" / "from .. import x": x may be a submodule
                targets = [f"{name}.{a.name}" for a in node.names] if not node.module else [name]
            else:
                targets = [node.module or ""]
            found.update(t for t in targets if t.split(".")[0] == "defmamba_deploy")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "defmamba_deploy")
    return found


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    rel = path.relative_to(PACKAGE)
    unit = rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else ""
    assert unit in LAYERS, f"{rel}: add its unit to LAYERS (and to DEVELOPERS.md)"
    mine = LAYERS[unit]
    upward = []
    for target in sorted(_imports(path)):
        other = _unit(target)
        if other not in LAYERS:  # "from . import __version__" resolves to defmamba_deploy.__version__
            assert other == "__version__", f"{rel} imports {target}: unknown unit"
            continue
        if LAYERS[other] > mine:
            upward.append(f"{target} (layer {LAYERS[other]})")
    assert not upward, f"{rel} (layer {mine}) imports from a higher layer: {', '.join(upward)}"


def test_the_check_sees_imports():
    """The parser finds relative, absolute and lazy imports (so the layering test can fail)."""
    names = _imports(PACKAGE / "onnx" / "precision.py") | _imports(PACKAGE / "cli.py")
    assert "defmamba_deploy.libs" in names and "defmamba_deploy.errors" in names
    assert any(n.startswith("defmamba_deploy.runtime") for n in _imports(PACKAGE / "cli.py"))
    assert LAYERS[_unit("defmamba_deploy.runtime.onnxrt")] > LAYERS[_unit("defmamba_deploy.onnx.export")]
