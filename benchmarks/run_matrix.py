"""Run the standard benchmark matrix on this machine and write the committed results.

    python benchmarks/run_matrix.py                      # DefMamba-S, torch/ort/ort-portable, batch 1 and 8, 224²
    python benchmarks/run_matrix.py --batch 1,8,32 --backends torch,ort,trt --precision fp32,fp16

Writes ``benchmarks/results/<machine>.json`` (the bench JSON schema plus the op-level results),
``<machine>.md`` (a summary table) and ``<machine>.png`` (latency vs batch per backend).
Run it twice to see the spread; the summary records the spread of repeated runs when given
``--repeat N``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from defmamba_deploy.bench import plot_latency, run_bench, validate_report
from defmamba_deploy.bench_ops import run_op_bench
from defmamba_deploy.files import atomic_write_text, write_json
from defmamba_deploy.machine import machine_slug

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="s")
    ap.add_argument("--backends", default="torch,ort,ort-portable")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--img-size", default="224")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="run the matrix N times and report the spread")
    ap.add_argument("--no-ops", action="store_true", help="skip the op-level benchmark")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--summary-only", type=Path, default=None, help="re-write the .md summary of an existing results JSON")
    args = ap.parse_args()
    if args.summary_only:
        if not args.summary_only.is_file():
            raise SystemExit(f"--summary-only: {args.summary_only} is not a file (give a results JSON written by this script)")
        data = json.loads(args.summary_only.read_text())
        atomic_write_text(args.summary_only.with_suffix(".md"), summary(data))
        return

    sizes = [(int(s), int(s)) for s in args.img_size.split(",")]
    runs = []
    for i in range(args.repeat):
        rep = run_bench(args.model, backends=args.backends.split(","), batches=[int(b) for b in args.batch.split(",")],
                        sizes=sizes, precisions=args.precision.split(","), threads=args.threads, warmup=args.warmup,
                        seconds=args.seconds, progress=lambda m, d, t, i=i: print(f"[{i + 1}/{args.repeat}] {d}/{t} {m}", flush=True))
        data = rep.to_dict()
        validate_report(data)
        runs.append(data)
    data = runs[0]
    if args.repeat > 1:  # median over repeats, keep the spread
        for row_i, row in enumerate(data["results"]):
            medians = [r["results"][row_i]["median_ms"] for r in runs]
            row["median_ms"] = statistics.median(medians)
            row["images_per_s"] = row["batch"] / (row["median_ms"] / 1000)
            row["repeat_medians_ms"] = medians
    if not args.no_ops:
        data["ops"] = run_op_bench(args.model, img_sizes=(224, 512), threads=args.threads, seconds=1.0,
                                   progress=lambda m: print(m, flush=True))
    slug = machine_slug(data["machine"])
    write_json(args.out_dir / f"{slug}.json", data)
    plot_latency(data, args.out_dir / f"{slug}.png")  # the library writes the PNG atomically
    atomic_write_text(args.out_dir / f"{slug}.md", summary(data))
    print(summary(data))
    print(f"wrote {args.out_dir / slug}.{{json,md,png}}")


def summary(data: dict) -> str:
    m = data["machine"]
    lines = [f"# DefMamba-{data['model']} on {m.get('gpu') or m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB)", "",
             (f"torch {m['torch']}, onnxruntime {m.get('onnxruntime', '-')}, {m['os']}; "
              f"warm-up {data['settings']['warmup']}, {data['settings']['seconds']} s per combination, threads "
              f"{data['settings']['threads'] or 'default'}."), "",
             "| backend | precision | batch | size | median ms | p90 ms | p99 ms | images/s | peak RSS MiB | spread of repeats |"
             if not any("repeat_medians_ms" in r for r in data["results"]) else
             "| backend | precision | batch | size | median ms (median of repeats) | p90 ms (1st repeat) | p99 ms (1st repeat) "
             "| images/s | peak RSS MiB | per-repeat medians |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    base = {}
    for r in data["results"]:
        if r["backend"] == "torch":
            base[(r["batch"], r["height"], r["width"])] = r["median_ms"]
    for r in data["results"]:
        spread = r.get("repeat_medians_ms")
        spread_s = f"{min(spread):.1f}–{max(spread):.1f} ms" if spread else "-"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['height']}x{r['width']} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['images_per_s']:.2f} | {r['peak_rss_mib']:.0f} | {spread_s} |")
    # the same repeat's eager row: a repeat runs in one period of the (shared) machine, so its pair
    # is comparable; the ratio of medians over repeats can pair a quiet period with a contended one
    base_rep = {}
    for r in data["results"]:
        if r["backend"] == "torch" and r.get("repeat_medians_ms"):
            base_rep[(r["batch"], r["height"], r["width"])] = r["repeat_medians_ms"]
    speed = []
    for r in data["results"]:
        key = (r["batch"], r["height"], r["width"])
        b = base.get(key)
        if b and r["backend"] != "torch":
            line = f"- {r['backend']} batch {r['batch']}: {b / r['median_ms']:.1f}x PyTorch eager"
            if key in base_rep and r.get("repeat_medians_ms"):
                pairs = ", ".join(f"{e / o:.1f}x" for e, o in zip(base_rep[key], r["repeat_medians_ms"]))
                line += f" (per repeat, same repeat's eager: {pairs})"
            speed.append(line)
    if speed:
        lines += ["", "Speed-up over PyTorch eager (median latency):", *speed]
    for s in data.get("skipped", []):
        lines.append(f"- skipped {s['backend']} {s['precision']}: {s['reason']}")
    ops = data.get("ops")
    if ops:
        threads = ops.get("memcpy_threads")
        bw = f"{ops['memcpy_gb_s']:.1f} GB/s (read + write" + (f", {threads} threads, as the kernels run)" if threads else ")")
        if ops.get("memcpy_gb_s_1thread") and threads and threads > 1:
            bw += f"; one thread copies {ops['memcpy_gb_s_1thread']:.1f} GB/s"
        lines += ["", f"## Ops alone (batch 1), memcpy bandwidth {bw}", "",
                  "| op | impl | input | stage | L | Ch | median ms | MB moved | GB/s | % of memcpy |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ops["rows"]:
            lines.append(f"| {r['op']} | {r['impl']} | {r['img_size']}² | {r['stage']} | {r['L']} | {r['Ch']} | {r['median_ms']:.3f} | "
                         f"{r['bytes'] / 1e6:.2f} | {r['achieved_gb_s']:.2f} | {100 * r['fraction_of_memcpy']:.0f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
