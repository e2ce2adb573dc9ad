"""Run-to-run spread across fresh processes (224², batch 1 by default): the honest error bar for the tables.

    python benchmarks/process_spread.py --model s --processes 6 [--warm-batch 8] [--batch 8]

On the shared 2-vCPU machine used here, latency is stable within a process but can differ by
tens of percent between processes (the same binary, input and weights). This script starts one
fresh process per measurement and reports every per-process median, so the committed numbers
come with the spread actually seen. Writes benchmarks/results/process_spread_<machine>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from defmamba_deploy.files import write_json
from defmamba_deploy.machine import machine_info, machine_slug

CHILD = r"""
import json, sys, time, numpy as np
backend, model, path, runs, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
if backend.startswith("torch"):
    import torch, defmamba_deploy as dd
    net = dd.create_model(model, seed=0)
    t = torch.from_numpy(x)
    def fn():
        with torch.inference_mode():
            net(t)
    if backend.startswith("torch-after-batch"):  # two passes at a larger batch first: warm glibc's allocator
        big = t.expand(int(backend[len("torch-after-batch"):]), -1, -1, -1).contiguous()
        with torch.inference_mode():
            net(big)
            net(big)
else:
    from defmamba_deploy.runtime import create_session
    s = create_session(path)
    fn = lambda: s.run(None, {"input": x})
for _ in range(3):
    fn()
ts = []
for _ in range(runs):
    t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
print(json.dumps(sorted(ts)[len(ts) // 2] * 1000))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="s")
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--batch", type=int, default=1, help="batch size of the timed runs")
    ap.add_argument("--warm-batch", type=int, default=0,
                    help="also time PyTorch eager after two forwards at this batch in the same process "
                         "(backend 'torch-after-batchN'): whether glibc's allocator, warmed by large frees, "
                         "makes batch 1 faster in steady state")
    ap.add_argument("--out", type=Path, default=None,
                    help="result file (default: results/process_spread_<machine>[_batchN].json)")
    args = ap.parse_args()
    from defmamba_deploy.onnx import export_onnx

    out: dict = {"model": args.model, "batch": args.batch, "img_size": 224, "runs_per_process": args.runs, "per_process_median_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"torch": "-"}
        if args.warm_batch > 0:
            files[f"torch-after-batch{args.warm_batch}"] = "-"
        files["ort"] = str(export_onnx(args.model, output=Path(tmp) / "c.onnx").path)
        files["ort-portable"] = str(export_onnx(args.model, portable=True, output=Path(tmp) / "p.onnx").path)
        for i in range(args.processes):
            for backend, path in files.items():  # interleaved, so drifts hit every backend alike
                r = subprocess.run([sys.executable, "-c", CHILD, backend, args.model, path, str(args.runs), str(args.batch)],
                                   capture_output=True, text=True, check=True)
                out["per_process_median_ms"].setdefault(backend, []).append(round(json.loads(r.stdout.strip().splitlines()[-1]), 1))
                print(f"process {i + 1}: {backend} {out['per_process_median_ms'][backend][-1]} ms", flush=True)
    summary = {}
    for backend, values in out["per_process_median_ms"].items():
        summary[backend] = {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values)}
    t = summary["torch"]["median_ms"]
    for entry in summary.values():
        entry["speedup_vs_torch_median"] = round(t / entry["median_ms"], 2)
    # the same-round ratios (a round's processes run back to back, so they share the machine's period)
    per = out["per_process_median_ms"]
    out["same_round_ort_speedup"] = {b: [round(e / o, 2) for e, o in zip(per[b], per["ort"])]
                                     for b in per if b.startswith("torch")}
    out["summary"] = summary
    out["machine"] = machine_info()
    suffix = "" if args.batch == 1 else f"_batch{args.batch}"
    dest = args.out or Path(__file__).resolve().parent / "results" / f"process_spread_{machine_slug(out['machine'])}{suffix}.json"
    write_json(dest, out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
