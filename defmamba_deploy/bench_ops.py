"""The op-level benchmark: each custom op alone at the model's stage shapes, against the memory floor.

For each stage of a variant at a resolution, every op runs in PyTorch (the reference functions), in
ONNX Runtime with our C++ kernels and as the portable standard-ops expansion; a row reports the
median time, the bytes an ideal kernel moves (each input read once, each output written once) and
the achieved bandwidth as a fraction of the machine's measured copy bandwidth.
"""
from __future__ import annotations

import os
import statistics
from typing import Sequence

import numpy as np

from . import checks
from .bench import check_timing, time_callable
from .errors import MissingDependencyError, UsageError
from .runtime.registry import Unavailable


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
    from .onnx.single_op import single_op_model
    from .runtime.onnxrt import create_session

    attrs = {"delta_softplus": 1} if op == "SelectiveScan" else {}
    model = single_op_model(op, arrays, **attrs)
    if portable:
        from .onnx.portable import expand_custom_ops

        model = expand_custom_ops(model, 17)
    try:
        sess = create_session(model, ["CPUExecutionProvider"], threads)
    except MissingDependencyError as e:
        raise Unavailable(str(e)) from None
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
    # the same checks as the model bench: a NaN budget would never end, an empty list would time nothing
    check_timing(warmup, iters, seconds)
    checks.optional_count(threads, "--threads")
    checks.count(batch, "--batch")
    from .model import MIN_INPUT_SIZE

    img_sizes = checks.int_list(img_sizes, "--img-size", low=MIN_INPUT_SIZE)
    bad = [v for v in checks.names(impls, "impls") + checks.names(ops, "ops") if v not in OP_IMPLS + OPS]
    if bad:
        raise UsageError(f"unknown op or implementation(s) {bad}: choose from {', '.join(OPS + OP_IMPLS)}")
    if iters is None and seconds is None:
        seconds = 1.0
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
                    except Unavailable as e:
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
