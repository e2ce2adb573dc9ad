"""Generate the tables of benchmarks/README.md from the committed results/*.json.

    python benchmarks/tables.py           # rewrite every marked section of the README
    python benchmarks/tables.py --check   # exit 1 (and name the sections) if the README is stale

A section is the text between ``<!-- tables:begin NAME -->`` and ``<!-- tables:end NAME -->``;
NAME selects a renderer below, which reads one results file. Everything outside the markers is
left alone, and running the script twice changes nothing the second time. Edit the prose by
hand; edit the tables by re-running a benchmark (or changing its JSON) and then this script.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
MACHINE = "amd-epyc-2c"

_SECTION = re.compile(r"(<!-- tables:begin (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- tables:end (?P=name) -->)", re.S)
_BEGIN = re.compile(r"<!-- tables:begin ([\w.-]+) -->")

_BACKENDS = {
    "torch": "PyTorch eager (this toolkit's chunked scan)",
    "ort": "ONNX Runtime + our C++ ops",
    "ort-portable": "ONNX Runtime, portable graph (standard ops only)",
    "trt": "TensorRT + our plugins",
}


class TablesError(Exception):
    """A README section or results file the generator cannot handle (one line, names the cause)."""


def _load(results: Path, name: str) -> dict:
    path = results / name
    if not path.is_file():
        raise TablesError(f"{path} does not exist (its table in the README needs it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TablesError(f"{path} is not valid JSON ({e})") from None


def _backend(name: str, short: bool = False) -> str:
    if name.startswith("torch-after-batch"):
        n = name[len("torch-after-batch"):]
        return f"warmed eager (batch-{n} pass)" if short else f"PyTorch eager after two batch-{n} forwards in the process"
    if short:
        return {"torch": "fresh-process eager"}.get(name, name)
    return _BACKENDS.get(name, name)


def _ms(v: float) -> str:
    """Milliseconds with about three significant figures, seconds from 1 s up."""
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v:.3f} ms"


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


# ---- renderers: results dir -> markdown lines ------------------------------------------------------------


def machine(results: Path) -> list[str]:
    m = _load(results, f"{MACHINE}.json")["machine"]
    gpu = m.get("gpu") or "none"
    return [f"Recorded in the results files: CPU {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
            f"Python {m['python']}, torch {m['torch']}, onnxruntime {m.get('onnxruntime', '-')}; GPU {gpu}."]


def spread(file: str) -> Callable[[Path], list[str]]:
    """process_spread.py: one column per round, one row per backend, then ORT's same-round speed-ups."""

    def render(results: Path) -> list[str]:
        d = _load(results, file)
        per = d["per_process_median_ms"]
        rounds = len(per["ort"])
        header = ["backend", *[f"round {i + 1}" for i in range(rounds)], "median"]
        rows = [[_backend(b), *[_ms(v) for v in vals], f"**{_ms(statistics.median(vals))}**"] for b, vals in per.items()]
        for b, ratios in d.get("same_round_ort_speedup", {}).items():
            rows.append([f"speed-up of ORT + our ops over {_backend(b, short=True)}",
                         *[f"{r:.2f}x" for r in ratios], f"**{statistics.median(ratios):.2f}x**"])
        note = (f"DefMamba-{d['model'].upper()}, {d['img_size']}², batch {d['batch']}; each value is the median of "
                f"{d['runs_per_process']} timed runs in one fresh process (`results/{file}`).")
        return [note, "", *_table(header, rows, right=set(range(1, rounds + 2)))]

    return render


def eager(results: Path) -> list[str]:
    d = _load(results, f"torch_eager_{MACHINE}.json")
    label = {"chunked_scan": "this toolkit's chunked scan", "loop_scan": "per-token-loop scan (the authors' formulation)"}
    rows = [[label.get(k, k), f"**{_ms(1000 * r['median_s'])}**", f"{_ms(1000 * r['min_s'])} – {_ms(1000 * r['max_s'])}",
             str(len(r["times_s"]))] for k, r in d["runs"].items()]
    note = f"DefMamba-{d['model'][0].upper()}, {d['img_size']}², batch {d['batch']}, one process (`results/torch_eager_{MACHINE}.json`)."
    return [note, "", *_table(["PyTorch eager with", "median", "min – max", "runs"], rows, right={1, 2, 3})]


def matrix(results: Path) -> list[str]:
    d = _load(results, f"{MACHINE}.json")
    res = d["results"]
    eager = {(r["batch"], r["height"], r["width"], r["precision"]): r for r in res if r["backend"] == "torch"}
    rows = []
    for r in res:
        reps = r.get("repeat_medians_ms") or [r["median_ms"]]
        base = eager.get((r["batch"], r["height"], r["width"], r["precision"]))
        if base is None or r["backend"] == "torch":
            speed = "-"
        else:
            base_reps = base.get("repeat_medians_ms") or [base["median_ms"]]
            speed = " / ".join(f"{e / o:.1f}x" for e, o in zip(base_reps, reps))
        rows.append([r["backend"], r["precision"], str(r["batch"]), f"{r['height']}x{r['width']}",
                     " / ".join(_ms(v) for v in reps), f"{r['images_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}", speed])
    s = d["settings"]
    n = len(res[0].get("repeat_medians_ms") or [0])
    note = (f"DefMamba-{d['model'][0].upper()}; {n} repeat(s), {s['seconds']} s per combination after {s['warmup']} "
            f"warm-up runs; values per repeat, in order (`results/{MACHINE}.json`).")
    header = ["backend", "precision", "batch", "size", "median latency per repeat", "images/s", "peak RSS MiB",
              "speed-up over eager, same repeat"]
    lines = [note, "", *_table(header, rows, right={2, 4, 5, 6, 7})]
    for sk in d.get("skipped", []):
        lines.append(f"- skipped {sk['backend']} {sk['precision']}: {sk['reason']}")
    return lines


def _ops(results: Path) -> dict:
    ops = _load(results, f"{MACHINE}.json").get("ops")
    if not ops:
        raise TablesError(f"results/{MACHINE}.json has no op-level results (run run_matrix.py without --no-ops)")
    return ops


def ops(results: Path) -> list[str]:
    o = _ops(results)
    bw = o["memcpy_gb_s"]
    first = [r for r in o["rows"] if r["img_size"] == 224 and r["stage"] == 1]
    by = {(r["op"], r["impl"]): r for r in first}
    rows = []
    for op in dict.fromkeys(r["op"] for r in first):
        ort = by.get((op, "ort"))
        cell = lambda impl: _ms(by[(op, impl)]["median_ms"]) if (op, impl) in by else "-"  # noqa: E731
        floor = ort["bytes"] / bw / 1e6 if ort else None
        floor = floor if floor and floor >= 0.01 else None  # below 10 us the call overhead dominates
        rows.append([op, cell("torch"), f"**{cell('ort')}**", cell("ort-portable"),
                     f"{ort['bytes'] / 1e6:.2f}" if ort else "-", _ms(floor) if floor else "-",
                     f"{ort['median_ms'] / floor:.1f}x" if floor else "-"])
    r0 = first[0]
    note = (f"DefMamba-S stage 1 at 224² (L {r0['L']}, Ch {r0['Ch']} = 3 x {r0['dim']}), batch 1; "
            f"memory floor = bytes moved / the run's {o.get('memcpy_threads', '?')}-thread copy rate, {bw:.1f} GB/s.")
    header = ["op", "PyTorch reference", "ORT, our C++", "ORT, portable", "MB moved", "memory floor", "ORT / floor"]
    return [note, "", *_table(header, rows, right={1, 2, 3, 4, 5, 6})]


def scan_stages(results: Path) -> list[str]:
    o = _ops(results)
    bw = o["memcpy_gb_s"]
    rows = []
    for r in o["rows"]:
        if r["op"] == "SelectiveScan" and r["impl"] == "ort":
            floor = r["bytes"] / bw / 1e6
            rows.append([f"{r['img_size']}²", str(r["stage"]), str(r["L"]), str(r["Ch"]), _ms(r["median_ms"]),
                         f"{r['bytes'] / 1e6:.2f}", f"{r['median_ms'] / floor:.1f}x"])
    note = f"SelectiveScan in ORT (our C++ kernel), every stage of DefMamba-S; floor at the same run's {bw:.1f} GB/s."
    return [note, "", *_table(["input", "stage", "L", "Ch", "median", "MB moved", "x floor"], rows, right=set(range(1, 7)))]


def scan_floor(results: Path) -> list[str]:
    d = _load(results, f"scan_floor_{MACHINE}.json")
    v = d["micro"]["variants"]
    label = {"kernel_exp": "recurrence alone, the kernel's exp",
             "coef_exp": "recurrence alone, three coefficient tables + degree-2 polynomial",
             "no_exp": "recurrence alone, no exp (fixed decay factors)"}
    floor = d["floor_ms"]
    rows = [["SelectiveScan op in ORT (the whole kernel)", _ms(d["kernel_ms"]), f"{d['kernel_ms'] / floor:.1f}x", "-"]]
    for k, r in v.items():
        ulp = f"{r['max_ulp']:.2f} ulp" if "max_ulp" in r else "-"
        rows.append([label.get(k, k), _ms(r["median_ms"]), f"{r['median_ms'] / floor:.1f}x", ulp])
    sh = d["shape"]
    note = (f"Ch {sh['Ch']}, L {sh['L']}, N {sh['N']}, {d['memcpy_threads']} threads; {d['bytes'] / 1e6:.2f} MB moved "
            f"over a {max(d['memcpy_gb_s_runs']):.1f} GB/s copy: floor {_ms(floor)}, 3x the floor {_ms(3 * floor)} "
            f"(`results/scan_floor_{MACHINE}.json`).")
    return [note, "", *_table(["DefMamba-S stage 1, 224²", "median", "x memory floor", "exp max error"], rows, right={1, 2, 3})]


def parity(results: Path) -> list[str]:
    d = _load(results, f"parity_matrix_{MACHINE}.json")
    backends = list(dict.fromkeys(r["backend"] for row in d["rows"] for r in (row["parity"] or [])))
    rows = []
    for row in d["rows"]:
        cells = []
        for b in backends:
            rs = [r for r in (row["parity"] or []) if r["backend"] == b]
            cells.append(f"{max(r['max_abs'] for r in rs):.2e}" if rs else "-")
        top1 = min((r["top1"] for r in row["parity"] or []), default=0.0)
        rows.append([row["model"].upper(), row["size"], *cells, f"{top1:.0%}", "pass" if row["passed"] else "**FAIL**"])
    batches = sorted({r["batch"] for row in d["rows"] for r in (row["parity"] or [])})
    note = (f"Largest absolute logit difference to PyTorch over batches {', '.join(map(str, batches))} "
            f"(`results/parity_matrix_{MACHINE}.json`; all rows passed: {'yes' if d['passed'] else 'no'}).")
    short = {"torch": "PyTorch", "ort": "ORT + our ops", "ort-portable": "ORT portable", "trt": "TensorRT"}
    header = ["model", "input", *[f"{short.get(b, b)} max abs" for b in backends], "top-1 agreement", "result"]
    return [note, "", *_table(header, rows, right=set(range(2, 3 + len(backends))))]


SECTIONS: dict[str, Callable[[Path], list[str]]] = {
    "machine": machine,
    "spread-quiet": spread(f"process_spread_{MACHINE}.json"),
    "spread-quiet-4rounds": spread(f"process_spread_{MACHINE}_quiet-4rounds.json"),
    "spread-fast-and-slow": spread(f"process_spread_{MACHINE}_fast-and-slow.json"),
    "spread-batch8": spread(f"process_spread_{MACHINE}_batch8.json"),
    "eager": eager,
    "matrix": matrix,
    "ops": ops,
    "scan-stages": scan_stages,
    "scan-floor": scan_floor,
    "parity": parity,
}


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked section rewritten from ``results``."""
    found = [m.group(1) for m in _BEGIN.finditer(text)]
    closed = [m.group("name") for m in _SECTION.finditer(text)]
    if found != closed:
        missing = [n for n in found if n not in closed]
        raise TablesError(f"section(s) without a matching end marker: {', '.join(missing) or '(order)'}")
    unknown = [n for n in found if n not in SECTIONS]
    if unknown:
        raise TablesError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    def one(m: re.Match) -> str:
        body = "\n".join(SECTIONS[m.group("name")](results))
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return _SECTION.sub(one, text)


def stale_sections(text: str, results: Path = RESULTS) -> list[str]:
    """Names of the sections whose text differs from what ``results`` gives."""
    new = {m.group("name"): m.group("body") for m in _SECTION.finditer(render(text, results))}
    return [m.group("name") for m in _SECTION.finditer(text) if new[m.group("name")] != m.group("body")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if any section is stale")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    try:
        text = args.readme.read_text()
        if args.check:
            stale = stale_sections(text, args.results)
            if stale:
                print(f"{args.readme}: stale table(s) {', '.join(stale)}; run python benchmarks/tables.py", file=sys.stderr)
                return 1
            print(f"{args.readme}: tables up to date")
            return 0
        new = render(text, args.results)
    except (OSError, TablesError) as e:
        print(f"tables: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"tables: a results file lacks the field {e} its table needs", file=sys.stderr)
        return 2
    if new != text:
        from defmamba_deploy.files import atomic_write_text

        atomic_write_text(args.readme, new)
        print(f"rewrote the tables of {args.readme}")
    else:
        print(f"{args.readme}: tables already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
