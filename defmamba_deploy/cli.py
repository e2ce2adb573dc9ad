"""The ``defmamba-deploy`` command line (Typer + rich). Thin: every command calls library code."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import DefMambaError

app = typer.Typer(
    name="defmamba-deploy",
    help="DefMamba from PyTorch to ONNX, ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

ModelOpt = typer.Option("s", "--model", "-m", help="Variant: t, s, b (or tiny, small, base).")
WeightsOpt = typer.Option(None, "--weights", "-w", help="Checkpoint file (.pth); random init when omitted.")
EmaOpt = typer.Option(False, "--ema", help="Use the 'model_ema' weights of a training checkpoint.")
UnsafeOpt = typer.Option(False, "--unsafe-pickle", help="Allow arbitrary pickled objects (only for files you trust).")


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn DefMambaError (and a few obvious environment errors) into a one-line message + exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DefMambaError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


def parse_size(value: Optional[str], default: int = 224) -> tuple[int, int]:
    """``224`` (square), ``160x256``, ``160,256`` or ``"160 256"`` -> (H, W)."""
    from .errors import UsageError

    if value is None or not str(value).strip():
        return default, default
    parts = [p for p in str(value).replace("x", " ").replace(",", " ").split() if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--img-size {value!r} is not a size: use 224 (square) or H W, e.g. 160 256") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise UsageError(f"--img-size takes one value (square) or two (H W), got {value!r}")


def _join_size_args(argv: list[str]) -> list[str]:
    """Let ``--img-size H W`` (two numbers) through Click, which gives an option one value: -> ``HxW``."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--img-size" and i + 2 < len(argv) and argv[i + 1].isdigit() and argv[i + 2].isdigit():
            out += [a, f"{argv[i + 1]}x{argv[i + 2]}"]
            i += 3
            continue
        out.append(a)
        i += 1
    return out


ImgSizeOpt = typer.Option(None, "--img-size", help="Input size: 224 (square) or H W (e.g. --img-size 160 256). Default 224.")


@app.command()
@handle_errors
def info() -> None:
    """Versions of the toolkit and its backends, CUDA, and where the plugin libraries are.

    Example: [bold]defmamba-deploy info[/]
    """
    from .runtime.libs import library_status

    table = Table(title=f"defmamba-deploy {__version__}", show_header=False)
    table.add_column("component", style="bold")
    table.add_column("status")
    table.add_row("python", sys.version.split()[0])
    import torch

    table.add_row("torch", torch.__version__)
    table.add_row("CUDA (torch)", f"available: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "not available")
    for mod in ("onnx", "onnxruntime"):
        try:
            m = __import__(mod)
            version = m.__version__
            if mod == "onnxruntime":
                version += f" (providers: {', '.join(m.get_available_providers())})"
        except ImportError:
            version = "not installed (pip install " + mod + ")"
        table.add_row(mod, version)
    try:
        import tensorrt  # type: ignore

        table.add_row("tensorrt", tensorrt.__version__)
    except Exception:  # noqa: BLE001 - any failure means it is not usable
        table.add_row("tensorrt", escape("not installed (pip install 'defmamba-deploy[tensorrt]' on a machine with an NVIDIA GPU)"))
    for kind, where in library_status().items():
        table.add_row(f"{kind} plugin library", where)
    console.print(table)


@app.command()
@handle_errors
def predict(
    images: List[Path] = typer.Argument(..., help="Image file(s) to classify."),
    model: str = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    ema: bool = EmaOpt,
    unsafe_pickle: bool = UnsafeOpt,
    img_size: Optional[str] = ImgSizeOpt,
    topk: int = typer.Option(5, "--topk", min=1, help="How many classes to print."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Text file with one class name per line."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images with the PyTorch model (standard ImageNet preprocessing) and print the top-k.

    Examples:
      [bold]defmamba-deploy predict --model s --weights defmamba_s.pth cat.jpg[/]
      [bold]defmamba-deploy predict -m t --img-size 160 256 photo.png --json[/]
    """
    import numpy as np
    import torch

    from .data import preprocess
    from .model import check_input_size, create_model

    h, w = parse_size(img_size)
    check_input_size(h, w)
    names = None
    if labels is not None:
        if not labels.is_file():
            fail(f"labels file {labels} does not exist")
        names = labels.read_text().splitlines()
    batch = np.stack([preprocess(p, (h, w)) for p in images])
    if weights is None:
        err_console.print("[yellow]warning:[/] no --weights given: the model is randomly initialised, so its predictions mean nothing")
    net = create_model(model, weights, ema=ema, unsafe_pickle=unsafe_pickle)
    if net.load_report is not None:
        err_console.print(net.load_report.summary(), highlight=False)
    with torch.inference_mode():
        probs = net(torch.from_numpy(batch)).softmax(-1)
    k = min(topk, probs.shape[-1])
    top = probs.topk(k, dim=-1)
    results = []
    for path, p, i in zip(images, top.values.tolist(), top.indices.tolist()):
        results.append({"image": str(path), "top": [
            {"class": c, "label": names[c] if names and c < len(names) else None, "prob": q} for c, q in zip(i, p)]})
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        table = Table(title=r["image"])
        table.add_column("rank", justify="right")
        table.add_column("class", justify="right")
        table.add_column("label")
        table.add_column("probability", justify="right")
        for rank, t in enumerate(r["top"], 1):
            table.add_row(str(rank), str(t["class"]), t["label"] or "", f"{t['prob']:.4f}")
        console.print(table)


def main() -> None:
    app(args=_join_size_args(sys.argv[1:]), prog_name="defmamba-deploy")


if __name__ == "__main__":
    main()
