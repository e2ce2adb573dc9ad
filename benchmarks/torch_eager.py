"""PyTorch eager latency of DefMamba.

    python benchmarks/torch_eager.py --model s --batch 1 --img-size 224 --runs 7

Times the model with this toolkit's chunked scan and, with ``--with-loop-scan``, the same model
with a per-token-loop scan (the formulation of the authors' pure-PyTorch reference), so both are
measured on one machine. Writes ``benchmarks/results/torch_eager_<machine>.json``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import defmamba_deploy as dd
from defmamba_deploy.files import write_json
from defmamba_deploy.machine import machine_info, machine_slug
from defmamba_deploy.ops.selective_scan import reversed_groups, scan_with_flipped_groups


def loop_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, reverse=None):
    """One small op per token, as in mamba's selective_scan_ref (for comparison only)."""
    flipped = reversed_groups(reverse, B.shape[1])
    if flipped:  # groups that scan backwards: their time axis flipped in and out (as the authors' code does)
        return scan_with_flipped_groups(loop_scan, flipped, u, delta, A, B, C, D, delta_bias, delta_softplus)
    dt = delta.float() + (delta_bias.float()[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt) if delta_softplus else dt
    bt, ch, length = u.shape
    g = B.shape[1]
    Bc = B.float().repeat_interleave(ch // g, 1)
    Cc = C.float().repeat_interleave(ch // g, 1)
    dA = torch.exp(dt[..., None] * A.float()[:, None])  # (b, ch, L, N)
    dBu = (dt * u.float())[..., None] * Bc.transpose(2, 3)
    h = u.new_zeros(bt, ch, A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(length):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * Cc[:, :, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    return (y + D.float()[:, None] * u if D is not None else y).to(u.dtype)


def time_model(model, x, runs, warmup=2):
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="s")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--with-loop-scan", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = dd.create_model(args.model)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    results = {"model": dd.model.resolve_name(args.model), "batch": args.batch, "img_size": args.img_size, "runs": {}}
    variants = [("chunked_scan", None)] + ([("loop_scan", loop_scan)] if args.with_loop_scan else [])
    import defmamba_deploy.model.defmamba as mdl

    for name, fn in variants:
        original = mdl.selective_scan
        if fn is not None:
            mdl.selective_scan = fn
        try:
            times = time_model(model, x, args.runs)
        finally:
            mdl.selective_scan = original
        results["runs"][name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}
        print(f"{name:>13}: median {statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) over {len(times)} runs")
    info = machine_info()
    results["machine"] = info
    out = args.out or Path(__file__).resolve().parent / "results" / f"torch_eager_{machine_slug(info)}.json"
    write_json(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
