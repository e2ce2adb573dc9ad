"""The package's layering (DEVELOPERS.md): each module imports only modules of its own or lower layers.

    0  errors, checks, lazy,         utilities (argument checks, lazy package names, plugin-library discovery,
       machine, libs, data, files    image loading, the one file writer)
    1  ops                           the three ops as PyTorch functions (the semantic reference)
    2  model (and the package root)  DefMamba, checkpoints
    3  onnx                          schemas, symbolics, export, portable expansion, precision
    4  runtime                       the Runner contract and backend registry; PyTorch, ONNX Runtime and
                                     TensorRT runners, engines, calibration, Predictor
    5  parity, bench, bench_ops      backend comparison, benchmarks
    6  cli                           the Typer app

Imports inside functions count too: a lazy import is still a dependency.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "defmamba_deploy"
LAYERS = {
    "errors": 0, "checks": 0, "lazy": 0, "machine": 0, "libs": 0, "data": 0, "files": 0,
    "ops": 1,
    "model": 2, "": 2,  # "" = the package root (__version__, re-exports of model and errors)
    "onnx": 3,
    "runtime": 4,
    "parity": 5, "bench": 5, "bench_ops": 5, "serve": 5,
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
    names = _imports(PACKAGE / "onnx" / "precision.py") | _imports(PACKAGE / "cli" / "__init__.py")
    assert "defmamba_deploy.libs" in names and "defmamba_deploy.errors" in names
    assert any(n.startswith("defmamba_deploy.runtime") for n in _imports(PACKAGE / "cli" / "__init__.py"))
    assert LAYERS[_unit("defmamba_deploy.runtime.onnxrt")] > LAYERS[_unit("defmamba_deploy.onnx.export")]


MAX_MODULE_LINES = 600


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = ["defmamba_deploy", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (a name that is a package's attribute counts as the package)."""
    modules = {_module_name(p): p for p in _modules()}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path):
            while target not in modules and "." in target:  # "pkg.mod.func" -> "pkg.mod"
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its modules is not a cycle with a module that imports a sibling
    through the package: count edges into a package only from outside it."""
    out = {}
    for n, deps in graph.items():
        out[n] = {d for d in deps if not (n.startswith(d + ".") and d in graph)}
    return out


def test_no_import_cycle():
    cycle = _find_cycle(_without_package_inits(_import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    graph = _import_graph()
    assert "defmamba_deploy.files" in graph["defmamba_deploy.onnx.export"]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {n} lines: split it by concern"


def test_one_atomic_writer():
    """Only files.py renames temporaries into place; every other writer calls it."""
    offenders = [str(p.relative_to(PACKAGE)) for p in _modules()
                 if p.name != "files.py" and ("os.replace(" in p.read_text() or "mkstemp(" in p.read_text())]
    assert not offenders, f"write through defmamba_deploy.files instead: {offenders}"
