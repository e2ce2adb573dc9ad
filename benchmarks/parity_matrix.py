"""The export + parity acceptance matrix, run the way a user runs it, with the CLI:

    python benchmarks/parity_matrix.py [--models t,s,b] [--sizes 224,160x256] [--samples 2]

For each model and input size, in a fresh temporary folder:

    defmamba-deploy export --model M [--img-size H W]               -> defmamba_M.onnx
    defmamba-deploy export --model M [--img-size H W] --portable    -> defmamba_M_portable.onnx
    defmamba-deploy parity --model M [--img-size H W] --batch 1,4 --json parity.json

(parity checks those two files: batch 1 and 4 from one dynamic-batch file each; the portable model
runs in a plain ONNX Runtime session with no library). Every command's exit code is recorded.
Writes benchmarks/results/parity_matrix_<machine>.{json,md}; exits 1 when any row fails.
This is not a test (it takes minutes): the test suite covers the same paths on small inputs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from defmamba_deploy.files import atomic_write_text, write_json
from defmamba_deploy.machine import machine_info, machine_slug

RESULTS = Path(__file__).resolve().parent / "results"


def _cli(args: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run `defmamba-deploy ARGS` (the same app as the console script) in cwd: exit code, output, seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "defmamba_deploy.cli", *args], cwd=cwd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def _short(variant: str) -> str:
    return variant[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="t,s,b")
    ap.add_argument("--sizes", default="224,160x256", help="224 = square; HxW = non-square")
    ap.add_argument("--samples", type=int, default=2, help="random-normal inputs besides the sample photos")
    ap.add_argument("--out", type=Path, default=None, help="results stem (default benchmarks/results/parity_matrix_<machine>)")
    args = ap.parse_args()

    info = machine_info()
    rows, ok = [], True
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            size_args = ["--img-size", size] if size != "224" else []
            with tempfile.TemporaryDirectory(prefix="defmamba_acceptance_") as tmp:
                cwd = Path(tmp)
                steps = {}
                for name, cmd in (("export", ["export", "--model", model, *size_args]),
                                  ("export_portable", ["export", "--model", model, *size_args, "--portable"]),
                                  ("parity", ["parity", "--model", model, *size_args, "--batch", "1,4",
                                              "--samples", str(args.samples), "--json", "parity.json"])):
                    rc, output, secs = _cli(cmd, cwd)
                    steps[name] = {"command": "defmamba-deploy " + " ".join(cmd), "exit_code": rc, "seconds": round(secs, 1)}
                    print(f"[{model} {size}] {steps[name]['command']}: exit {rc} ({secs:.0f} s)", flush=True)
                    if name == "parity":  # which files each backend ran (the exported ones, when they match)
                        steps[name]["ran"] = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("running ")]
                    if rc != 0:
                        steps[name]["output_tail"] = output[-2000:]
                        if name != "parity":
                            break
                report = json.loads((cwd / "parity.json").read_text()) if (cwd / "parity.json").is_file() else None
                passed = bool(report and report.get("passed")) and all(s["exit_code"] == 0 for s in steps.values())
                ok &= passed
                rows.append({"model": model, "size": size, "passed": passed, "steps": steps,
                             "parity": report["rows"] if report else None})
    result = {"format": "defmamba-deploy/parity-matrix/1", "machine": info, "passed": ok,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    stem = args.out or RESULTS / f"parity_matrix_{machine_slug(info)}"
    write_json(stem.with_name(stem.name + ".json"), result)
    atomic_write_text(stem.with_name(stem.name + ".md"), _markdown(result))
    print(f"wrote {stem}.json and {stem}.md: {'all passed' if ok else 'FAILURES'}")
    sys.exit(0 if ok else 1)


def _markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Export + parity matrix", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores; torch {m.get('torch', '?')}, onnxruntime "
             f"{m.get('onnxruntime', '?')}. Commands per row: `export`, `export --portable`, "
             "`parity --batch 1,4` in one folder (parity checks the two exported files).", "",
             "| model | size | backend | batch | max abs | max rel | cosine | top-1 | top-5 | result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for r in row["parity"] or []:
            lines.append(f"| {row['model']} | {row['size']} | {r['backend']} | {r['batch']} | {r['max_abs']:.2e} | "
                         f"{r['max_rel']:.2e} | {r['cosine']:.7f} | {r['top1']:.0%} | {r['top5']:.0%} | "
                         f"{'pass' if r['passed'] else 'FAIL'} |")
        if not row["parity"]:
            failed = [k for k, s in row["steps"].items() if s["exit_code"] != 0]
            lines.append(f"| {row['model']} | {row['size']} | - | - | - | - | - | - | - | FAIL ({', '.join(failed)}) |")
    lines += ["", "Files each parity run checked (from its log):", ""]
    for row in result["rows"]:
        ran = row["steps"].get("parity", {}).get("ran") or ["(parity did not run)"]
        lines.append(f"- {row['model']} {row['size']}: " + "; ".join(f"`{r}`" for r in ran))
    lines += ["", f"All passed: {'yes' if result['passed'] else 'no'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
