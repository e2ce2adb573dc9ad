"""How close can the selective scan get to the memory floor on this CPU?

    python benchmarks/scan_floor.py [--reps 15]

Compiles ``scan_floor/scan_floor.cpp`` (g++, or $CXX) and runs it: the S6 recurrence alone at
DefMamba-S stage 1 (Ch 288, L 3136, N 16) on two threads, with the kernel's exp, with the cheapest
other float32 exp found, and with no exp at all. In the same period it measures the 2-thread copy
bandwidth (before and after; the higher figure is the floor, as ``bench --ops`` does) and the real
ORT SelectiveScan op at that shape, and reports each against the floor. Writes
``benchmarks/results/scan_floor_<machine>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from defmamba_deploy.bench_ops import memcpy_bandwidth, op_bytes, run_op_bench, stage_shapes
from defmamba_deploy.files import write_json
from defmamba_deploy.machine import machine_info, machine_slug

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def build(tmp: Path) -> Path:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        sys.exit("scan_floor: no C++ compiler found (install g++ or set CXX)")
    exe = tmp / "scan_floor"
    cmd = [cxx, "-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-pthread",  # the plugins' flags
           str(HERE / "scan_floor" / "scan_floor.cpp"), "-o", str(exe)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"scan_floor: compiling failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="interleaved repetitions of each variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    shape = stage_shapes("small", 224)[0]
    nbytes = op_bytes("SelectiveScan", shape, 1)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        bw = [memcpy_bandwidth(threads=args.threads)]
        micro = json.loads(subprocess.run([str(exe), str(args.threads), str(args.reps)], capture_output=True, text=True,
                                          check=True).stdout)
        ops = run_op_bench("s", img_sizes=(224,), impls=("ort",), ops=("SelectiveScan",), threads=args.threads, seconds=2.0)
        bw.append(memcpy_bandwidth(threads=args.threads))
    if "skipped" in micro:
        sys.exit(f"scan_floor: skipped: {micro['skipped']}")
    if not micro["variants"]["kernel_exp"].get("same_as_kernel"):
        sys.exit("scan_floor: the benchmark's kernel_exp no longer matches the kernel's exp2_table_f32 bit for bit: "
                 "update scan_floor.cpp to the kernel's exp before comparing")
    kernel_ms = next(r["median_ms"] for r in ops["rows"] if r["stage"] == 1)
    floor_ms = nbytes / max(bw) / 1e6
    rows = [("SelectiveScan op in ORT (the whole kernel)", kernel_ms, None)]
    rows += [(f"recurrence alone, {name}", v["median_ms"], v.get("max_ulp")) for name, v in micro["variants"].items()]
    print(f"DefMamba-S stage 1 (Ch {shape['Ch']}, L {shape['L']}, N 16): {nbytes / 1e6:.2f} MB moved; "
          f"{args.threads}-thread copy {max(bw):.1f} GB/s (runs {', '.join(f'{b:.1f}' for b in bw)}) -> floor {floor_ms:.3f} ms; "
          f"goal 3x = {3 * floor_ms:.3f} ms")
    print(f"{'what':48s} {'median ms':>10s} {'x floor':>8s} {'exp max ulp':>12s}")
    for what, ms, ulp in rows:
        print(f"{what:48s} {ms:10.3f} {ms / floor_ms:8.2f} {'' if ulp is None else f'{ulp:.2f}':>12s}")
    out = {"format": "defmamba-deploy/scan-floor/1", "machine": machine_info(), "shape": shape, "bytes": nbytes,
           "memcpy_gb_s_runs": bw, "memcpy_threads": args.threads, "floor_ms": floor_ms, "kernel_ms": kernel_ms,
           "micro": micro, "ratios": {what: ms / floor_ms for what, ms, _ in rows}}
    path = args.out_dir / f"scan_floor_{machine_slug(out['machine'])}.json"
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
