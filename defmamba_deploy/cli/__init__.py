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
from typer.core import TyperGroup

from .. import __version__, checks
from ..errors import DefMambaError

class _OneLineErrors(TyperGroup):
    """Click's usage errors (unknown option, bad value, missing argument) as one ``error:`` line with
    exit code 2, like the toolkit's own errors, instead of Click's usage block or Typer's panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.exceptions.TyperException as e:  # Typer's own Click: UsageError, BadParameter, ...
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError":  # no_args_is_help: the help is the answer
                print(ctx.get_help())
                sys.exit(0)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {escape(e.format_message())}{escape(hint)}", highlight=False,
                              soft_wrap=True)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            err_console.print("[bold red]error:[/] aborted", highlight=False)
            sys.exit(130)
        # non-standalone Click returns the exit code of a typer.Exit, or the command's return value
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="defmamba-deploy",
    help="DefMamba from PyTorch to ONNX, ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Rich wraps at 80 columns when not on a terminal (CI logs, pipes), which truncates wide tables.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

ModelOpt = typer.Option("s", "--model", "-m", help="Variant: t, s, b (or tiny, small, base).")
WeightsOpt = typer.Option(None, "--weights", "-w", help="Checkpoint file (.pth); random init when omitted.")
EmaOpt = typer.Option(False, "--ema", help="Use the 'model_ema' weights of a training checkpoint.")
UnsafeOpt = typer.Option(False, "--unsafe-pickle", help="Allow arbitrary pickled objects (only for files you trust).")
NonFiniteOpt = typer.Option(False, "--allow-nonfinite", help="Load a checkpoint even when some weights are NaN/inf (refused by default: such a file is damaged).")


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that the writers' clean-up runs for it too."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


_EXPORT_DEPENDENCIES = ("torch", "onnxscript")  # the [export] extra


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
        except Terminated:
            fail("terminated", 143)
        except MemoryError:
            fail("out of memory: use a smaller --batch or --img-size (or a machine with more memory)", 2)
        except ModuleNotFoundError as e:
            if e.name not in _EXPORT_DEPENDENCIES:
                raise
            fail(f"this command needs {e.name}, which a service install leaves out: pip install torch==2.13.0 "
                 f"(the CPU wheel), then pip install 'defmamba-deploy[export]'", 2)

    return wrapper


def _version(value: bool) -> None:
    if value:
        print(f"defmamba-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    """DefMamba from PyTorch to ONNX, ONNX Runtime and TensorRT."""


def parse_size(value: Optional[str], default: int = 224) -> tuple[int, int]:
    """``224`` (square), ``160x256``, ``160,256`` or ``"160 256"`` -> (H, W)."""
    from ..errors import UsageError

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


InterpOpt = typer.Option(None, "--interpolation", help="Resize filter: bilinear (the authors' evaluation, default), bicubic, nearest, box, hamming, lanczos.")
CropPctOpt = typer.Option(None, "--crop-pct", help="Crop / resized shorter side (default 0.875: resize 256, crop 224).")
ImgSizeOpt = typer.Option(None, "--img-size", help="Input size: 224 (square) or H W (e.g. --img-size 160 256). Default 224.")


@app.command()
@handle_errors
def info() -> None:
    """Versions of the toolkit and its backends, CUDA, and where the plugin libraries are.

    Example: [bold]defmamba-deploy info[/]
    """
    from ..libs import library_status

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
    from ..runtime.tensorrt.env import tensorrt_version

    table.add_row("tensorrt", tensorrt_version() or escape("not installed (pip install 'defmamba-deploy[tensorrt]' on a machine with an NVIDIA GPU)"))
    for kind, where in library_status().items():
        table.add_row(f"{kind} plugin library", where)
    console.print(table)


@app.command("backends")
@handle_errors
def backends_cmd() -> None:
    """The backends parity and bench can run, the precisions each offers and the file it takes.

    Example: [bold]defmamba-deploy backends[/]
    """
    from ..runtime.registry import backends

    table = Table(title="backends")
    for col in ("name", "precisions", "file", "what"):
        table.add_column(col)
    for b in backends().values():
        table.add_row(b.name, ", ".join(b.precisions), {"onnx": "--onnx / --portable-onnx", "engine": "--engine"}.get(
            b.file_kind or "", "-"), b.help)
    console.print(table)


@app.command()
@handle_errors
def predict(
    images: List[Path] = typer.Argument(..., help="Image file(s) to classify."),
    model: str = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    ema: bool = EmaOpt,
    unsafe_pickle: bool = UnsafeOpt,
    allow_nonfinite: bool = NonFiniteOpt,
    img_size: Optional[str] = ImgSizeOpt,
    topk: int = typer.Option(5, "--topk", min=1, help="How many classes to print."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Text file with one class name per line."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    onnx_file: Optional[Path] = typer.Option(None, "--onnx", help="Classify with this ONNX file in ONNX Runtime (the service Predictor) instead of PyTorch."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="With --onnx: path of libdefmamba_ort_ops.so (found automatically after the build)."),
    interpolation: Optional[str] = InterpOpt,
    crop_pct: Optional[float] = CropPctOpt,
) -> None:
    """Classify images with the PyTorch model, or an exported ONNX file (--onnx), and print the top-k.

    The authors' evaluation preprocessing (shorter side to 256 bilinear, centre crop 224, ImageNet
    mean/std). With --onnx the size, normalisation and resize come from the file's sidecar unless
    given here; --model/--weights do not apply.

    Examples:
      [bold]defmamba-deploy predict --model s --weights defmamba_s.pth cat.jpg[/]
      [bold]defmamba-deploy predict -m t --img-size 160 256 photo.png --json[/]
      [bold]defmamba-deploy predict --onnx defmamba_s.onnx cat.jpg dog.png[/]
    """
    from ..model import check_input_size, create_model
    from ..onnx.sidecar import RANDOM_INIT_SEED

    h, w = parse_size(img_size)
    check_input_size(h, w)
    from ..data import read_labels

    names = read_labels(labels) if labels is not None else None
    if onnx_file is not None:
        if weights is not None:
            fail("--weights sets the PyTorch model's weights; an ONNX file carries its own: drop --weights or --onnx")
        from ..runtime import Predictor

        pred = Predictor(onnx_file, img_size=(h, w) if img_size else None, library=plugins, labels=names,
                         interpolation=interpolation, crop_pct=crop_pct)
        if pred.runner.sidecar is not None and pred.runner.sidecar.random_init:
            err_console.print(f"[yellow]warning:[/] {onnx_file} was exported without --weights: its predictions mean nothing")
        results = [{"image": str(path), "top": top} for path, top in zip(images, pred.predict(list(images), topk=topk))]
        _print_predictions(results, as_json)
        return
    if weights is None:
        err_console.print("[yellow]warning:[/] no --weights given: the model is randomly initialised, so its predictions mean nothing")
    from ..runtime.predictor import Predictor
    from ..runtime.torch_runner import TorchRunner

    # (without weights: the same seeded random init as export, so `predict` and `predict --onnx` agree)
    net = create_model(model, weights, ema=ema, unsafe_pickle=unsafe_pickle, allow_nonfinite=allow_nonfinite,
                       seed=RANDOM_INIT_SEED)
    if net.load_report is not None:
        err_console.print(net.load_report.summary(), highlight=False)
    pred = Predictor.from_runner(TorchRunner(net), (h, w), mean=net.cfg.mean, std=net.cfg.std, labels=names,
                                 interpolation=interpolation, crop_pct=crop_pct)
    results = [{"image": str(path), "top": top} for path, top in zip(images, pred.predict(list(images), topk=topk))]
    _print_predictions(results, as_json)


def _print_predictions(results: list[dict], as_json: bool) -> None:
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


@app.command()
@handle_errors
def export(
    model: str = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    ema: bool = EmaOpt,
    unsafe_pickle: bool = UnsafeOpt,
    allow_nonfinite: bool = NonFiniteOpt,
    img_size: Optional[str] = ImgSizeOpt,
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size of the example input (fixed when --dynamic none). Default 1."),
    dynamic: Optional[str] = typer.Option(None, "--dynamic", help="batch (default), shape (batch, height, width) or none."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset, 17..20. Default 17."),
    portable: bool = typer.Option(False, "--portable", help="Standard ONNX ops only: runs in a stock onnxruntime, no library."),
    backbone: bool = typer.Option(False, "--backbone", help="Export the dense-prediction backbone (4 feature maps)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset from export/presets (e.g. dynamic-shape-224-512); flags override it."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .onnx (default defmamba_<m>.onnx); a .onnx.json sidecar is written next to it."),
    interpolation: Optional[str] = InterpOpt,
    crop_pct: Optional[float] = CropPctOpt,
) -> None:
    """Export DefMamba to ONNX with the [bold]defmamba[/] custom ops (or --portable standard ops).

    Examples:
      [bold]defmamba-deploy export --model s[/]                       -> defmamba_s.onnx, dynamic batch
      [bold]defmamba-deploy export -m t --img-size 160 256 --dynamic shape -o t.onnx[/]
      [bold]defmamba-deploy export -m s --portable[/]                 -> defmamba_s_portable.onnx
    """
    from ..onnx import export_onnx
    from ..onnx.presets import export_settings

    settings = export_settings(preset, img_size=parse_size(img_size) if img_size else None, batch=batch,
                               dynamic=dynamic, opset=opset)
    res = export_onnx(model, weights, ema=ema, unsafe_pickle=unsafe_pickle, allow_nonfinite=allow_nonfinite,
                      portable=portable, backbone=backbone,
                      output=output, **pre_options(interpolation, crop_pct), **settings)
    if weights is None:
        err_console.print("[yellow]warning:[/] no --weights given: exported a randomly initialised model")
    side = res.sidecar
    console.print(f"wrote [bold]{res.path}[/] ({res.path.stat().st_size / 2**20:.1f} MiB) and {res.sidecar_path}")
    console.print(f"  variant {side.variant}, opset {side.opset}, dynamic {side.dynamic}, "
                  f"custom ops: {', '.join(side.custom_ops) or 'none (portable)'}", highlight=False)


@app.command()
@handle_errors
def parity(
    model: str = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    ema: bool = EmaOpt,
    unsafe_pickle: bool = UnsafeOpt,
    allow_nonfinite: bool = NonFiniteOpt,
    onnx_file: Optional[Path] = typer.Option(None, "--onnx", help="Custom-op ONNX file for the 'ort' backend (exported on the fly if omitted)."),
    portable_file: Optional[Path] = typer.Option(None, "--portable-onnx", help="Portable ONNX file for 'ort-portable' (exported on the fly if omitted)."),
    backends: str = typer.Option("torch,ort,ort-portable", "--backends", help="Comma-separated backends (see `defmamba-deploy backends`)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine for the 'trt' backend (from build-engine)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of photos (default: scikit-image's sample photos)."),
    samples: int = typer.Option(2, "--samples", help="Random-normal inputs in addition to the photos."),
    img_size: Optional[str] = ImgSizeOpt,
    batch: str = typer.Option("1,4", "--batch", help="Batch sizes to run each backend at, e.g. 1,4."),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute tolerance."),
    rtol: float = typer.Option(1e-3, "--rtol", help="Relative tolerance."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="Path of libdefmamba_ort_ops.so (found automatically after the build)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file ('-' = stdout)."),
    reexport: bool = typer.Option(False, "--reexport", help="Export fresh models to a temporary folder even when ./defmamba_<m>.onnx matches."),
    backbone: Optional[bool] = typer.Option(None, "--backbone/--classifier", help="Compare the dense-prediction backbone's 4 feature maps (default: what --onnx's sidecar says, else the classifier)."),
) -> None:
    """Compare backends with PyTorch on the same inputs; exit 1 when a tolerance fails.

    Without --onnx / --portable-onnx it checks the files `export` writes by default in the current folder
    (defmamba_<m>.onnx, defmamba_<m>_portable.onnx) when they match the model, weights and sizes asked
    for, and exports the missing ones to a temporary folder.

    Examples:
      [bold]defmamba-deploy parity --model s[/]
      [bold]defmamba-deploy parity -m t --onnx defmamba_t.onnx --backends torch,ort --batch 1,4 --json report.json[/]
    """
    from ..parity import run_parity

    _check_outputs(json_out)
    report = run_parity(
        model, weights, ema=ema, unsafe_pickle=unsafe_pickle, allow_nonfinite=allow_nonfinite, onnx=onnx_file, portable_onnx=portable_file,
        backends=backends, images=images, samples=samples,
        img_size=parse_size(img_size), batches=batch, atol=atol, rtol=rtol,
        threads=threads, library=plugins, engine=engine, use_exported=not reexport, backbone=backbone,
        progress=lambda m: err_console.print(f"[dim]{escape(m)}[/]", highlight=False),
    )
    table = Table(title=f"parity vs PyTorch: DefMamba-{report.model} {report.img_size[0]}x{report.img_size[1]}, "
                        f"{len(report.inputs)} inputs, atol {atol:g} rtol {rtol:g}")
    maps = any(r.output != "logits" for r in report.rows)
    cols = ["backend", "batch"] + (["output"] if maps else []) + ["max abs", "max rel", "cosine"] + \
        ([] if maps else ["top-1", "top-5"]) + ["result"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("backend", "output", "result") else "right")
    for r in report.rows:
        cells = [r.backend, str(r.batch)] + ([r.output] if maps else []) + \
            [f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.cosine:.7f}"] + \
            ([] if maps else [f"{r.top1:.0%}", f"{r.top5:.0%}"]) + ["[green]pass[/]" if r.passed else "[red]FAIL[/]"]
        table.add_row(*cells)
    console.print(table)
    if json_out is not None:
        text = json.dumps(report.to_dict(), indent=2)
        _write_text(json_out, text)
    if not report.passed:
        fail("parity failed: see the rows marked FAIL", 1)


@app.command()
@handle_errors
def bench(
    model: str = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    allow_nonfinite: bool = NonFiniteOpt,
    backends: str = typer.Option("torch,ort,ort-portable", "--backends", help="Comma-separated backends (see `defmamba-deploy backends`)."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8,32."),
    img_size: str = typer.Option("224", "--img-size", help="Sizes, e.g. 224,384,512 (or HxW entries like 160x256)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16, int8 (comma-separated)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and ORT."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed warm-up runs per combination (at least 1 runs: peak memory is sampled there)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed runs per combination (default: run for --seconds)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time budget per combination (default 5 s unless --iters)."),
    onnx_file: Optional[Path] = typer.Option(None, "--onnx", help="Custom-op ONNX file for 'ort' (default: exported on the fly)."),
    portable_file: Optional[Path] = typer.Option(None, "--portable-onnx", help="Portable ONNX file for 'ort-portable'."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="TensorRT engine for 'trt' (default: built on the fly)."),
    ops: bool = typer.Option(False, "--ops", help="Op-level mode: each custom op alone at the model's shapes (224² and 512²)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON (schema: defmamba_deploy.bench.RESULT_SCHEMA)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write results as CSV."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency-vs-batch plot (PNG; needs matplotlib)."),
) -> None:
    """Latency (median/p90/p99), images/s and peak memory across backends, batches, sizes, precisions.

    Examples:
      [bold]defmamba-deploy bench --model s --backends torch,ort,ort-portable --batch 1,8[/]
      [bold]defmamba-deploy bench -m t --img-size 224,384 --iters 20 --json out.json --plot out.png[/]
      [bold]defmamba-deploy bench --ops --model s[/]
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import bench as B
    from ..errors import UsageError

    _check_outputs(json_out, csv_out, plot)
    if plot is not None:
        B.check_plot(plot)

    sizes = []
    for item in [v for v in img_size.split(",") if v.strip()]:
        sizes.append(parse_size(item))
    if not sizes:
        raise UsageError("--img-size is empty")
    if ops:
        if any(h != w for h, w in sizes):
            raise UsageError(f"--ops times the ops at square sizes; got --img-size {img_size}: use e.g. 224,512")
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console, transient=True) as prog:
            task = prog.add_task("op bench", total=None)
            from ..bench_ops import run_op_bench

            res = run_op_bench(model, img_sizes=[h for h, _ in sizes] if img_size != "224" else (224, 512),
                                 threads=threads, warmup=warmup, iters=iters, seconds=seconds,
                                 progress=lambda m: prog.update(task, description=m))
        table = Table(title=f"op bench: DefMamba-{res['model']} shapes, memcpy {res['memcpy_gb_s']:.1f} GB/s "
                                  f"({res['memcpy_threads']} threads; 1 thread: {res['memcpy_gb_s_1thread']:.1f})")
        for col in ("op", "impl", "size", "stage", "L", "Ch", "median ms", "MB moved", "GB/s", "% of memcpy"):
            table.add_column(col, justify="left" if col in ("op", "impl") else "right")
        for r in res["rows"]:
            table.add_row(r["op"], r["impl"], str(r["img_size"]), str(r["stage"]), str(r["L"]), str(r["Ch"]),
                          f"{r['median_ms']:.3f}", f"{r['bytes'] / 1e6:.2f}", f"{r['achieved_gb_s']:.2f}",
                          f"{100 * r['fraction_of_memcpy']:.0f}%")
        console.print(table)
        for sk in res["skipped"]:
            err_console.print(f"[yellow]skipped[/] {sk['impl']}: {escape(sk['reason'])}", highlight=False)
        if json_out:
            _write_text(json_out, json.dumps(res, indent=2))
        return

    blist = checks.int_list(batch, "--batch")
    plist = checks.names(precision, "--precision")
    blist_backends = checks.names(backends, "--backends")
    B.validate_args(blist_backends, blist, sizes, plist, warmup, iters, seconds, threads)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as prog:
        task = prog.add_task("bench", total=len(blist_backends) * len(plist) * len(sizes) * len(blist))
        files = {k: v for k, v in (("ort", onnx_file), ("ort-portable", portable_file)) if v is not None}
        report = B.run_bench(model, weights, backends=blist_backends, batches=blist, sizes=sizes, precisions=plist,
                             threads=threads, allow_nonfinite=allow_nonfinite, warmup=warmup, iters=iters, seconds=seconds,
                             onnx_files=files, engine=engine,
                             progress=lambda m, done, total: prog.update(task, completed=done, description=m))
    data = report.to_dict()
    table = Table(title=f"DefMamba-{report.model} latency on {data['machine']['cpu']} ({data['machine']['cores']} cores)")
    for col in ("backend", "precision", "batch", "size", "median ms", "p90 ms", "p99 ms", "images/s", "peak RSS MiB", "iters"):
        table.add_column(col, justify="left" if col in ("backend", "precision") else "right")
    for r in report.results:
        table.add_row(r.backend, r.precision, str(r.batch), f"{r.height}x{r.width}", f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}",
                      f"{r.p99_ms:.1f}", f"{r.images_per_s:.2f}", f"{r.peak_rss_mib:.0f}", str(r.iters))
    console.print(table)
    for sk in report.skipped:
        err_console.print(f"[yellow]skipped[/] {sk['backend']} {sk['precision']}: {escape(sk['reason'])}", highlight=False)
    if json_out:
        B.validate_report(data)
        _write_text(json_out, json.dumps(data, indent=2))
    if csv_out:
        _write_text(csv_out, B.to_csv(report))
    if plot:
        B.plot_latency(data, plot)
        console.print(f"wrote {plot}")


@app.command("build-engine")
@handle_errors
def build_engine_cmd(
    onnx_file: Optional[Path] = typer.Argument(None, help="ONNX file from `export` (default: export --model now)."),
    model: str = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    allow_nonfinite: bool = NonFiniteOpt,
    fp16: bool = typer.Option(False, "--fp16", help="FP16 engine (TensorRT 10: builder flag; 11: converted ONNX)."),
    int8: bool = typer.Option(False, "--int8", help="INT8 engine (TensorRT 10: entropy calibrator; 11: Q/DQ ONNX)."),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", help="Folder of calibration photos (INT8)."),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="Use at most N calibration images."),
    calib_batch: int = typer.Option(8, "--calib-batch", help="Calibration batch size."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Profile from export/presets (e.g. dynamic-batch-224)."),
    min_shape: Optional[str] = typer.Option(None, "--min-shape", help="BxHxW, e.g. 1x224x224."),
    opt_shape: Optional[str] = typer.Option(None, "--opt-shape", help="BxHxW, e.g. 8x224x224."),
    max_shape: Optional[str] = typer.Option(None, "--max-shape", help="BxHxW, e.g. 32x224x224."),
    workspace: float = typer.Option(4.0, "--workspace", help="Builder workspace in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file (read if present, then updated)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libdefmamba_trt_plugins.so (found automatically after the build)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Engine file (default defmamba_<m>_<precision>.plan); a .plan.json sidecar is written next to it."),
    strongly_typed: Optional[bool] = typer.Option(None, "--strongly-typed/--no-strongly-typed", help="Precision written into the ONNX (FP16 rewrite / Q/DQ) and a strongly typed network; default: TensorRT 11 yes (its only kind), 10 no (builder flags + float32 layer constraints)."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT verbose log."),
) -> None:
    """Build a TensorRT engine (FP32/FP16/INT8, dynamic shapes, timing cache) with our plugins.

    Examples:
      [bold]defmamba-deploy build-engine defmamba_s.onnx --fp16[/]
      [bold]defmamba-deploy build-engine -m s --int8 --calib-images imgs/ --calib-samples 512 --preset dynamic-batch-224[/]
      [bold]defmamba-deploy build-engine t.onnx --min-shape 1x224x224 --opt-shape 8x224x224 --max-shape 32x224x224[/]
    """
    from ..errors import UsageError
    from ..runtime.tensorrt.build import build_engine_for_cli

    if fp16 and int8:
        raise UsageError("choose one of --fp16 and --int8 (INT8 engines keep FP16 for the layers that are not quantised)")
    out, info = build_engine_for_cli(
        onnx_file, model=model, weights=weights, allow_nonfinite=allow_nonfinite, precision="int8" if int8 else "fp16" if fp16 else "fp32",
        calib_images=calib_images, calib_samples=calib_samples, calib_batch=calib_batch, preset=preset,
        min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, workspace_gib=workspace, timing_cache=timing_cache,
        plugins=plugins, output=output, strongly_typed=strongly_typed, verbose=verbose,
        progress=lambda m: err_console.print(f"[dim]{escape(m)}[/]", highlight=False))
    console.print(f"wrote [bold]{out}[/] ({info.precision}{', strongly typed' if info.strongly_typed else ''}, "
                  f"TensorRT {info.tensorrt_version}, {info.gpu_name} sm_{info.compute_capability})")
    if info.fp32_layers:
        console.print(f"kept float32 ({len(info.fp32_layers)}): " + ", ".join(info.fp32_layers[:12])
                      + (" ..." if len(info.fp32_layers) > 12 else ""), highlight=False)


def pre_options(interpolation: Optional[str], crop_pct: Optional[float]) -> dict:
    """The preprocessing options given on the command line (the library's defaults otherwise)."""
    return {k: v for k, v in (("interpolation", interpolation), ("crop_pct", crop_pct)) if v is not None}


def _check_outputs(*paths: Optional[Path]) -> None:
    """Refuse an output that cannot be written before the work that produces it ('-' = stdout)."""
    from ..files import check_writable

    for p in paths:
        if p is not None and str(p) != "-":
            check_writable(p, fix="choose another path")


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename ('-' = stdout)."""
    if str(path) == "-":
        print(text)
        return
    from ..files import atomic_write_text

    atomic_write_text(path, text)


def install_signal_handlers() -> None:
    """SIGTERM as an exception: the default action kills the process before any clean-up; raised,
    it removes temporaries exactly as Ctrl-C does."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)


def main() -> None:
    install_signal_handlers()
    app(args=_join_size_args(sys.argv[1:]), prog_name="defmamba-deploy")

