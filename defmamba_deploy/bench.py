"""Latency and throughput of DefMamba across backends, batch sizes, resolutions and precisions.

Timing is honest: inputs are prepared outside the timed region, the session/engine is built once
per (backend, precision, size) and reused, warm-up runs are excluded, and a device backend is
synchronised before the clock is read. Each combination reports median / p90 / p99 latency,
images per second (batch / median) and the peak host RSS (and device memory where there is a
device) seen during its warm-up runs (the RSS sampler thread is not running while the clock is). A backend that cannot run here is reported as skipped with the reason.

The JSON written by ``--json`` follows ``RESULT_SCHEMA`` (JSON Schema, draft 2020-12).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .errors import MissingDependencyError, UsageError

BACKENDS = ("torch", "ort", "ort-portable", "trt")
PRECISIONS = ("fp32", "fp16", "int8")

RESULT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "defmamba-deploy bench result",
    "type": "object",
    "required": ["format", "toolkit_version", "model", "machine", "settings", "results", "skipped"],
    "properties": {
        "format": {"const": "defmamba-deploy/bench/1"},
        "toolkit_version": {"type": "string"},
        "model": {"type": "string", "enum": ["tiny", "small", "base"]},
        "machine": {"type": "object", "required": ["cpu", "cores"]},
        "settings": {
            "type": "object",
            "required": ["warmup", "iters", "seconds", "threads"],
            "properties": {"warmup": {"type": "integer", "minimum": 0}, "iters": {"type": ["integer", "null"]},
                           "seconds": {"type": ["number", "null"]}, "threads": {"type": ["integer", "null"]}},
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["backend", "precision", "batch", "height", "width", "iters", "median_ms", "p90_ms",
                             "p99_ms", "mean_ms", "min_ms", "images_per_s", "peak_rss_mib", "peak_device_mib"],
                "properties": {
                    "backend": {"enum": list(BACKENDS)},
                    "precision": {"enum": list(PRECISIONS)},
                    "batch": {"type": "integer", "minimum": 1},
                    "height": {"type": "integer", "minimum": 33},
                    "width": {"type": "integer", "minimum": 33},
                    "iters": {"type": "integer", "minimum": 1},
                    "median_ms": {"type": "number", "exclusiveMinimum": 0},
                    "p90_ms": {"type": "number", "exclusiveMinimum": 0},
                    "p99_ms": {"type": "number", "exclusiveMinimum": 0},
                    "mean_ms": {"type": "number", "exclusiveMinimum": 0},
                    "min_ms": {"type": "number", "exclusiveMinimum": 0},
                    "images_per_s": {"type": "number", "exclusiveMinimum": 0},
                    "peak_rss_mib": {"type": "number", "minimum": 0},
                    "peak_device_mib": {"type": ["number", "null"]},
                },
            },
        },
        "skipped": {
            "type": "array",
            "items": {"type": "object", "required": ["backend", "precision", "reason"],
                      "properties": {"backend": {"type": "string"}, "precision": {"type": "string"}, "reason": {"type": "string"}}},
        },
    },
}


@dataclass
class BenchRow:
    backend: str
    precision: str
    batch: int
    height: int
    width: int
    iters: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    images_per_s: float
    peak_rss_mib: float
    peak_device_mib: float | None = None


@dataclass
class BenchReport:
    model: str
    machine: dict
    settings: dict
    results: list[BenchRow] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": "defmamba-deploy/bench/1", "toolkit_version": __version__, "model": self.model,
                "machine": self.machine, "settings": self.settings,
                "results": [asdict(r) for r in self.results], "skipped": self.skipped}


# --- measurement helpers ---------------------------------------------------------------------

def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRss:
    """Samples the process RSS every few ms while active; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak = interval, current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_mib())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q, method="linear"))


def time_callable(fn: Callable[[], object], *, warmup: int, iters: int | None, seconds: float | None,
                  sync: Callable[[], None] | None = None, min_iters: int = 3) -> list[float]:
    """Per-call wall times (s) of ``fn`` after ``warmup`` untimed calls; ``sync`` runs before each clock read."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + seconds if seconds is not None else None
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if iters is not None and len(times) >= iters:
            break
        if deadline is not None and time.perf_counter() >= deadline and len(times) >= min_iters:
            break
    return times


# --- backends ----------------------------------------------------------------------------------

class Skip(Exception):
    """A backend/precision that cannot run here; the message is the reason."""


def _torch_factory(name, weights, precision, size, threads, workdir, dynamic, onnx_file=None):
    import torch

    from .model import create_model

    if precision == "int8":
        raise Skip("int8 is a TensorRT precision (PyTorch eager has no int8 path for this model)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "fp16" and device == "cpu":
        raise Skip("fp16 eager needs a CUDA device (CPU half is emulated and not a deployment target)")
    if threads:
        torch.set_num_threads(threads)
    net = create_model(name, weights).to(device)
    if precision == "fp16":
        net = net.half()

    def make(x: np.ndarray):
        t = torch.from_numpy(x).to(device)
        t = t.half() if precision == "fp16" else t

        def run():
            with torch.inference_mode():
                return net(t)

        return run

    sync = torch.cuda.synchronize if device == "cuda" else None
    mem = (lambda: torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None
    return make, sync, mem


def _ort_factory(portable: bool):
    def factory(name, weights, precision, size, threads, workdir, dynamic, onnx_file=None):
        if precision != "fp32":
            raise Skip(f"{precision} on ONNX Runtime is not provided (use the TensorRT backend for fp16/int8)")
        from .onnx import export_onnx
        from .runtime.onnxrt import OrtRunner

        if onnx_file is not None:
            path = Path(onnx_file)
        else:
            # one dynamic-batch file per resolution: the fixed spatial size lets ORT fold the shape arithmetic
            path = Path(workdir) / f"{name}_{'portable' if portable else 'custom'}_{size[0]}x{size[1]}.onnx"
            if not path.exists():
                export_onnx(name, weights, img_size=size, dynamic="batch", portable=portable, output=path)
        try:
            runner = OrtRunner(path, threads=threads)
        except MissingDependencyError as e:
            raise Skip(str(e)) from None
        def make(x: np.ndarray):
            feed = {runner.input_name: runner.check_input(x)}
            return lambda: runner.session.run(runner.output_names, feed)

        return make, None, None  # host RSS only: ORT's device memory is not exposed per session

    return factory


def _trt_factory(name, weights, precision, size, threads, workdir, dynamic, onnx_file=None, engine_file=None):
    try:
        from .runtime.trt_build import build_engine, compute_profile, require_tensorrt

        require_tensorrt()
    except MissingDependencyError as e:
        raise Skip(str(e)) from None
    from .runtime.trt import TrtRunner

    if engine_file is None:
        if precision == "int8":
            raise Skip("int8 needs calibration data: build the engine with build-engine --int8 and pass --engine")
        from .onnx import export_onnx, read_sidecar

        path = Path(workdir) / f"{name}_trt_{size[0]}x{size[1]}.onnx"
        if not path.exists():
            export_onnx(name, weights, img_size=size, dynamic="batch", output=path)
        engine_file = Path(workdir) / f"{name}_{precision}_{size[0]}x{size[1]}.plan"
        if not engine_file.exists():
            build_engine(path, engine_file, precision=precision, profile=compute_profile(read_sidecar(path) or {}))
    runner = TrtRunner(engine_file)

    def make(x: np.ndarray):
        x = runner.check_input(x)
        return lambda: runner(x)

    def device_mem():
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    return make, None, device_mem


FACTORIES = {"torch": _torch_factory, "ort": _ort_factory(False), "ort-portable": _ort_factory(True), "trt": _trt_factory}


def validate_args(backends, batches, sizes, precisions, warmup, iters, seconds) -> None:
    from .model import MIN_INPUT_SIZE

    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise UsageError(f"unknown backend(s) {bad}: choose from {', '.join(BACKENDS)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UsageError(f"unknown precision(s) {bad}: choose from {', '.join(PRECISIONS)}")
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"batch sizes must be >= 1, got {list(batches)}")
    for h, w in sizes:
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise UsageError(f"image size {h}x{w} is below the model minimum of {MIN_INPUT_SIZE} px")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if iters is not None and iters < 1:
        raise UsageError(f"--iters must be >= 1, got {iters}")
    if seconds is not None and seconds <= 0:
        raise UsageError(f"--seconds must be > 0, got {seconds}")


def _check_onnx_files(name: str, onnx_files: dict, sizes) -> None:
    """Given ONNX files must exist, be for this variant and accept every requested size."""
    from .onnx import load_onnx, read_sidecar

    for backend, path in onnx_files.items():
        if backend not in ("ort", "ort-portable"):
            raise UsageError(f"an ONNX file can be given for ort or ort-portable, not {backend!r}")
        load_onnx(path, check=False)
        side = read_sidecar(path) or {}
        if side.get("variant") and side["variant"] != name:
            raise UsageError(f"{path} is DefMamba-{side['variant']}, not DefMamba-{name}: pass --model {side['variant'][0]} or the right --onnx")
        if side.get("dynamic") in ("batch", "none"):
            fixed = tuple(side.get("export_input_size", ()))
            bad = [s for s in sizes if tuple(s) != fixed]
            if bad:
                raise UsageError(f"{path} was exported for {fixed[0]}x{fixed[1]} only (--dynamic {side['dynamic']}); "
                                 f"bench it at that --img-size or re-export with --dynamic shape")


def run_bench(
    model: str = "s",
    weights: str | os.PathLike | None = None,
    *,
    backends: Sequence[str] = ("torch", "ort", "ort-portable"),
    batches: Sequence[int] = (1,),
    sizes: Sequence[tuple[int, int]] = ((224, 224),),
    precisions: Sequence[str] = ("fp32",),
    threads: int | None = None,
    warmup: int = 3,
    iters: int | None = None,
    seconds: float | None = 5.0,
    workdir: str | os.PathLike | None = None,
    onnx_files: dict[str, str] | None = None,
    engine: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> BenchReport:
    """Run the benchmark matrix and return the report (see module docstring)."""
    from .model import resolve_name

    name = resolve_name(model)
    if iters is None and seconds is None:
        seconds = 5.0
    validate_args(backends, batches, sizes, precisions, warmup, iters, seconds)
    onnx_files = dict(onnx_files or {})
    _check_onnx_files(name, onnx_files, sizes)
    from .machine import machine_info

    report = BenchReport(name, machine_info(), {"warmup": warmup, "iters": iters, "seconds": seconds, "threads": threads,
                                                "backends": list(backends), "batches": list(batches),
                                                "sizes": [list(s) for s in sizes], "precisions": list(precisions)})
    combos = [(b, p, s) for b in backends for p in precisions for s in sizes]
    total = len(combos) * len(batches)
    done = 0
    with tempfile.TemporaryDirectory(prefix="defmamba_bench_") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        for backend, precision, size in combos:
            label = f"{backend} {precision} {size[0]}x{size[1]}"
            try:
                extra = {"engine_file": engine} if backend == "trt" and engine is not None else {}
                make, sync, device_mem = FACTORIES[backend](name, weights, precision, size, threads, work, "shape",
                                                             onnx_file=onnx_files.get(backend), **extra)
            except Skip as e:
                if not any(s["backend"] == backend and s["precision"] == precision for s in report.skipped):
                    report.skipped.append({"backend": backend, "precision": precision, "reason": str(e)})
                done += len(batches)
                if progress:
                    progress(f"{label}: skipped", done, total)
                continue
            rng = np.random.default_rng(0)
            for batch in batches:
                x = rng.standard_normal((batch, 3, *size)).astype(np.float32)
                fn = make(x)
                # peak memory from the warm-up runs, latency from runs without the sampler: its thread
                # wakes every 5 ms and competes with the backend's threads (~8 % on 2 cores for ORT)
                with PeakRss() as rss:
                    time_callable(fn, warmup=0, iters=max(1, warmup), seconds=None, sync=sync, min_iters=1)
                times = time_callable(fn, warmup=0, iters=iters, seconds=seconds, sync=sync)
                ms = [t * 1000 for t in times]
                med = statistics.median(ms)
                report.results.append(BenchRow(
                    backend, precision, batch, size[0], size[1], len(ms), med, percentile(ms, 90), percentile(ms, 99),
                    statistics.fmean(ms), min(ms), batch / (med / 1000), round(rss.peak, 1),
                    device_mem() if device_mem else None))
                done += 1
                if progress:
                    progress(f"{label} batch {batch}: {med:.1f} ms", done, total)
    return report


def validate_report(data: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``data`` does not follow RESULT_SCHEMA."""
    import jsonschema

    jsonschema.validate(data, RESULT_SCHEMA)


def to_csv(report: BenchReport) -> str:
    import csv
    import io

    buf = io.StringIO()
    fields = list(BenchRow.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in report.results:
        w.writerow(asdict(r))
    return buf.getvalue()


def plot_latency(data: dict, path: str | os.PathLike) -> None:
    """Median latency vs batch, one line per (backend, precision, size); PNG written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    groups: dict[tuple, list] = {}
    for r in data["results"]:
        groups.setdefault((r["backend"], r["precision"], f"{r['height']}x{r['width']}"), []).append(r)
    for (backend, prec, size), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["median_ms"] for r in rows], marker="o", label=f"{backend} {prec} {size}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency (ms)")
    m = data["machine"]
    ax.set_title(f"DefMamba-{data['model']} on {m.get('gpu') or m['cpu']} ({m['cores']} cores)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# --- op-level benchmark -------------------------------------------------------------------------

def stage_shapes(model: str, img_size: int) -> list[dict]:
    """The op shapes of each stage of ``model`` at ``img_size``², batch 1."""
    from .model import get_config

    cfg = get_config(model)
    side = img_size // 4
    out = []
    for i, dim in enumerate(cfg.dims):
        out.append({"stage": i + 1, "dim": dim, "H": side, "W": side, "L": side * side, "Ch": 3 * dim, "G": 3, "N": cfg.d_state})
        side = (side + 1) // 2
    return out


def op_inputs(op: str, s: dict, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of a realistic range for ``op`` at stage shape ``s``."""
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    if op == "SelectiveScan":
        return {"u": f(batch, s["Ch"], s["L"]), "delta": f(batch, s["Ch"], s["L"]) - 2,
                "A": -np.exp(f(s["Ch"], s["N"]) * 0.5), "B": f(batch, s["G"], s["N"], s["L"]),
                "C": f(batch, s["G"], s["N"], s["L"]), "D": f(s["Ch"]), "delta_bias": f(s["Ch"]) * 0.1}
    if op == "DeformGather":
        return {"x": f(batch, s["dim"], s["H"], s["W"]), "offset": f(batch, 3, s["H"], s["W"]), "rpe_table": f(s["dim"], 7, 7)}
    return {"token_offset": f(batch, s["L"])}


def op_bytes(op: str, s: dict, batch: int = 1) -> int:
    """Bytes an ideal kernel must move (each input read once, each output written once), float32."""
    L = s["L"]
    if op == "SelectiveScan":
        return 4 * batch * L * (3 * s["Ch"] + 2 * s["G"] * s["N"]) + 4 * s["Ch"] * (s["N"] + 2)
    if op == "DeformGather":
        return 4 * batch * L * (2 * s["dim"] + 2) + 4 * s["dim"] * 49
    return batch * L * (4 + 8 + 8)


def memcpy_bandwidth(mib: int = 256, repeats: int = 5, threads: int = 1) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written per second) of a large copy.

    ``threads``: threads sharing the copy. Compare a kernel with the bandwidth of as many threads as
    it runs on: on the 2-core reference VM one thread copies ~27 GB/s and two ~45-54 GB/s in quiet
    periods, ~33-35 GB/s in contended ones (one core cannot keep enough misses in flight to saturate
    the memory system; other tenants share it). torch's tensor copy splits
    over its intra-op threads; numpy's copyto does not (it stayed at one thread's rate).
    """
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = min(time_callable(lambda: dst.copy_(src), warmup=1, iters=repeats, seconds=None))
    finally:
        torch.set_num_threads(prev)
    return 2 * src.numel() * 4 / best / 1e9


def default_threads() -> int:
    """The CPU cores this process may run on (ORT's and torch's default thread count here)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _torch_op(op: str, arrays: dict[str, np.ndarray]):
    import torch

    from .ops import REFERENCE

    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if op == "SelectiveScan":
        fn = lambda: REFERENCE["selective_scan"](t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True)  # noqa: E731
    elif op == "DeformGather":
        fn = lambda: REFERENCE["deform_gather"](t["x"], t["offset"], t["rpe_table"])  # noqa: E731
    else:
        fn = lambda: REFERENCE["token_sort"](t["token_offset"])  # noqa: E731

    def run():
        with torch.inference_mode():
            return fn()

    return run


def _ort_op(op: str, arrays: dict[str, np.ndarray], portable: bool, threads: int | None):
    import onnxruntime as ort

    from .onnx.single_op import single_op_model
    from .libs import find_library

    attrs = {"delta_softplus": 1} if op == "SelectiveScan" else {}
    model = single_op_model(op, arrays, **attrs)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    if portable:
        from .onnx.portable import expand_custom_ops

        model = expand_custom_ops(model, 17)
    else:
        try:
            so.register_custom_ops_library(str(find_library("ort")))
        except MissingDependencyError as e:
            raise Skip(str(e)) from None
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, arrays)


OP_IMPLS = ("torch", "ort", "ort-portable")
OPS = ("SelectiveScan", "DeformGather", "TokenSort")


def run_op_bench(model: str = "s", img_sizes: Sequence[int] = (224, 512), impls: Sequence[str] = OP_IMPLS,
                 ops: Sequence[str] = OPS, batch: int = 1, threads: int | None = None, warmup: int = 2,
                 iters: int | None = None, seconds: float | None = 1.0, progress=None) -> dict:
    """Each op alone at the model's stage shapes: median time, bytes moved, achieved bandwidth."""
    from .machine import machine_info
    from .model import resolve_name

    name = resolve_name(model)
    if threads:
        import torch

        torch.set_num_threads(threads)
    # the kernels run on `threads` (default: every core), so the memory bound is that many threads' copy
    # (measured before and after the ops; the higher figure is the floor: on a shared machine the
    # bandwidth left to this process varies over minutes)
    bw_threads = threads or default_threads()
    bw_runs = [memcpy_bandwidth(threads=bw_threads)]
    bw_one = memcpy_bandwidth(threads=1) if bw_threads > 1 else bw_runs[0]
    rows, skipped = [], []
    for size in img_sizes:
        for s in stage_shapes(name, size):
            for op in ops:
                arrays = op_inputs(op, s, batch)
                nbytes = op_bytes(op, s, batch)
                for impl in impls:
                    try:
                        fn = _torch_op(op, arrays) if impl == "torch" else _ort_op(op, arrays, impl == "ort-portable", threads)
                    except Skip as e:
                        if not any(k["impl"] == impl for k in skipped):
                            skipped.append({"impl": impl, "reason": str(e)})
                        continue
                    times = time_callable(fn, warmup=warmup, iters=iters, seconds=seconds)
                    med = statistics.median(times)
                    row = {"op": op, "impl": impl, "img_size": size, **s, "batch": batch, "median_ms": med * 1000,
                           "bytes": nbytes, "achieved_gb_s": nbytes / med / 1e9}
                    rows.append(row)
                    if progress:
                        progress(f"{op} {impl} {size}px stage {s['stage']}: {med * 1000:.2f} ms")
    bw_runs.append(memcpy_bandwidth(threads=bw_threads))
    bw = max(bw_runs)
    for row in rows:
        row["fraction_of_memcpy"] = row["achieved_gb_s"] / bw
    return {"format": "defmamba-deploy/op-bench/1", "model": name, "machine": machine_info(), "memcpy_gb_s": bw,
            "memcpy_gb_s_runs": bw_runs, "memcpy_threads": bw_threads, "memcpy_gb_s_1thread": bw_one, "rows": rows, "skipped": skipped}
