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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__, checks
from .errors import MissingDependencyError, UsageError
from .files import atomic_write_with, check_writable
from .runtime.registry import PRECISIONS


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
                    "backend": {"type": "string", "minLength": 1},
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
    if iters is None and seconds is None:
        raise UsageError("time_callable needs iters or seconds")  # else it would never stop
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


# --- backends come from the registry ------------------------------------------------------------

MAX_SECONDS = 3600.0  # per combination: a budget beyond an hour is a typo, not a benchmark
MAX_ITERS = 1_000_000


def check_timing(warmup, iters, seconds) -> None:
    """The timing arguments of ``bench`` and ``bench --ops``: finite and bounded, so a run always ends."""
    checks.count(warmup, "--warmup", low=0, high=MAX_ITERS)
    checks.optional_count(iters, "--iters", high=MAX_ITERS)
    if seconds is not None:
        checks.number(seconds, "--seconds", low=0, low_open=True, high=MAX_SECONDS)


def validate_args(backends, batches, sizes, precisions, warmup, iters, seconds, threads=None) -> None:
    from .model import MIN_INPUT_SIZE
    from .runtime.registry import check_backend_names

    check_backend_names(backends)
    bad = [p for p in checks.names(precisions, "--precision") if p not in PRECISIONS]
    if bad:
        raise UsageError(f"unknown precision(s) {bad}: choose from {', '.join(PRECISIONS)}")
    checks.int_list(batches, "--batch")
    if not sizes:
        raise UsageError("--img-size is empty: give at least one size, e.g. 224")
    for h, w in sizes:
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise UsageError(f"image size {h}x{w} is below the model minimum of {MIN_INPUT_SIZE} px")
    checks.optional_count(threads, "--threads")
    check_timing(warmup, iters, seconds)


def run_bench(
    model: str = "s",
    weights: str | os.PathLike | None = None,
    *,
    backends: Sequence[str] = ("torch", "ort", "ort-portable"),
    batches: Sequence[int] = (1,),
    sizes: Sequence[tuple[int, int]] = ((224, 224),),
    precisions: Sequence[str] = ("fp32",),
    threads: int | None = None,
    allow_nonfinite: bool = False,
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

    from .machine import machine_info
    from .runtime.registry import BackendRequest, Unavailable, check_backend_names

    name = resolve_name(model)
    if iters is None and seconds is None:
        seconds = 5.0
    validate_args(backends, batches, sizes, precisions, warmup, iters, seconds, threads)
    chosen = check_backend_names(backends)
    files = dict(onnx_files or {})
    if engine is not None:
        files["trt"] = engine
    for key in files:
        spec = next((b for b in chosen if b.name == key), None)
        if spec is None or spec.file_kind is None:
            takes = [b.name for b in chosen if b.file_kind]
            raise UsageError(f"a file was given for {key!r}, which is not a benchmarked backend that takes one "
                             f"(these do: {', '.join(takes) or 'none'})")
    report = BenchReport(name, machine_info(), {"warmup": warmup, "iters": iters, "seconds": seconds, "threads": threads,
                                                "backends": list(backends), "batches": list(batches),
                                                "sizes": [list(s) for s in sizes], "precisions": list(precisions)})
    with tempfile.TemporaryDirectory(prefix="defmamba_bench_") as tmp:
        base = BackendRequest(name, weights, batches=tuple(batches), threads=threads, allow_nonfinite=allow_nonfinite,
                              workdir=Path(workdir) if workdir is not None else Path(tmp), check_weights=False)
        combos = [(b, p, s, replace(base, precision=p, img_size=tuple(s), file=files.get(b.name)))
                  for b in chosen for p in precisions for s in sizes]
        for spec, _, _, request in combos:  # fail fast on a given file that does not fit, before any timing
            if request.file is not None and spec.check is not None:
                spec.check(request)
        total, done = len(combos) * len(batches), 0
        for spec, precision, size, request in combos:
            label = f"{spec.name} {precision} {size[0]}x{size[1]}"
            try:
                spec.precheck(request)
                runner = spec.create(request)
                runner.activate()
            except Unavailable as e:
                if not any(s["backend"] == spec.name and s["precision"] == precision for s in report.skipped):
                    report.skipped.append({"backend": spec.name, "precision": precision, "reason": str(e)})
                done += len(batches)
                if progress:
                    progress(f"{label}: skipped", done, total)
                continue
            rng = np.random.default_rng(0)
            with runner:
                for batch in batches:
                    x = runner.check_input(rng.standard_normal((batch, 3, *size)).astype(np.float32))
                    row = _time_runner(runner, x, warmup, iters, seconds)
                    report.results.append(BenchRow(spec.name, precision, batch, size[0], size[1], **row))
                    done += 1
                    if progress:
                        progress(f"{label} batch {batch}: {row['median_ms']:.1f} ms", done, total)
    return report


def _time_runner(runner, x: np.ndarray, warmup: int, iters: int | None, seconds: float | None) -> dict:
    """Timings of ``runner`` on the checked batch ``x``: the BenchRow fields after the configuration."""
    fn = lambda: runner.infer(x, check=False)  # noqa: E731 - the input is checked once, outside the clock
    # peak memory from the warm-up runs, latency from runs without the sampler: its thread
    # wakes every 5 ms and competes with the backend's threads (~8 % on 2 cores for ORT)
    with PeakRss() as rss:
        time_callable(fn, warmup=0, iters=max(1, warmup), seconds=None, sync=runner.synchronize, min_iters=1)
    ms = [t * 1000 for t in time_callable(fn, warmup=0, iters=iters, seconds=seconds, sync=runner.synchronize)]
    med = statistics.median(ms)
    return {"iters": len(ms), "median_ms": med, "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.fmean(ms), "min_ms": min(ms), "images_per_s": x.shape[0] / (med / 1000),
            "peak_rss_mib": round(rss.peak, 1), "peak_device_mib": runner.device_memory_mib()}


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


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_plot(path: str | os.PathLike):
    """matplotlib's pyplot when ``path`` can take a plot (matplotlib installed, a known ending);
    the CLI calls it before the benchmark so that a bad --plot fails in a second, not after it."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot {path}: the file must end in {', '.join(PLOT_SUFFIXES)}")
    check_writable(path, "plot", fix="choose another --plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def plot_latency(data: dict, path: str | os.PathLike) -> None:
    """Median latency vs batch, one line per (backend, precision, size); written atomically."""
    plt = check_plot(path)
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
    try:
        atomic_write_with(path, fig.savefig, suffix=Path(path).suffix.lower())
    finally:
        plt.close(fig)
