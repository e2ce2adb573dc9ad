"""Seeded, bounded fuzzing of every file the toolkit reads: ONNX models, checkpoints, sidecars, images.

The promise under test: a bad input ends in a :class:`~defmamba_deploy.errors.DefMambaError`
through the Python API, and on the CLI in one ``error:`` line on stderr with the error's exit
code; never a traceback, a hang, a non-finite result or a stray file.

Each target kind is one test that runs its cases in a loop, collects every violation and fails
once at the end with a summary (how many inputs were accepted, rejected and failed; the first
failures with their seeds), so one run reports all of them. Case ``i`` of a kind always uses
``numpy.random.default_rng([KIND_SEED, i])`` on inputs that are built deterministically (seeded
model weights and pixels), so a reported ``seed [s, i]`` reproduces on its own, whatever the
number of cases: ``DEFMAMBA_FUZZ_ONLY=kind:i[,kind:i...]`` runs just those. (An ONNX case
reproduces as long as the export's bytes are the same.) ``DEFMAMBA_FUZZ_CASES`` is the total
number of cases over all kinds (default 300), shared out as in ``SHARES``.

The ONNX files are the portable export and, when ``libdefmamba_ort_ops.so`` is built, the
custom-op export too (each case picks one of them).

Byte mutations (every target): flip 1-8 bytes, overwrite a range with random bytes, insert or
delete a few bytes, or truncate (to 0 bytes, 1 byte, or a random length). Positions favour the
parts of a file that carry structure (the ONNX graph before and after the weight blobs, the
start and the central directory of a checkpoint zip, the headers of an image), because random
positions in a 30 MB file almost always land in weight data.

Pass criteria, per kind:

* ``onnx-session``: ``create_session(corrupt.onnx, threads=1, options=<graph optimisation off>)``
  raises a DefMambaError or returns a session. (The optimiser is off to afford more cases: it
  quadruples the session's build time; ``onnx-predictor`` and the CLI use the default.)
* ``onnx-predictor``: ``Predictor(corrupt.onnx).predict([image])`` raises a DefMambaError in
  either step, or returns one top-5 list whose probabilities are finite and in [0, 1]. A
  corruption that leaves the file loadable but makes the logits NaN/inf must be reported as a
  DefMambaError, not returned as probabilities.
* ``checkpoint-load`` / ``checkpoint-create``: ``load_checkpoint(model, corrupt.pth)`` /
  ``create_model("t", weights=corrupt.pth)`` raise a CheckpointError (not another subclass) or
  succeed.
* ``sidecar-bytes`` / ``sidecar-struct``: byte-corrupted sidecar JSON, or a valid JSON document
  with wrong types, deleted keys, containers swapped, zero/NaN/negative std, huge or non-integer
  sizes; ``Predictor(model.onnx).predict([image])`` raises a DefMambaError or returns finite
  probabilities in [0, 1]. The model beside these sidecars is a small stand-in with the
  export's input/output names and shapes (fixed 64x64), because a session on the real export
  takes seconds and the sidecar is read independently of the graph.
* ``image-preprocess``: ``data.preprocess(corrupt image)`` raises a UsageError or returns a
  finite float32 (3, 224, 224) array.
* ``image-predict``: ``Predictor(t.onnx).predict([corrupt image])`` raises a UsageError or
  returns finite probabilities in [0, 1].
* ``cli``: ``predict --json`` with a corrupt ``--onnx`` file (the real export), a corrupt
  ``--weights`` file, a corrupt image or a corrupt sidecar (both on the stand-in). The exit code is
  0, 1, 2 or 3; ``result.exception`` is None or SystemExit; nothing says ``Traceback``; on a
  non-zero code exactly one stderr line starts with ``error:`` and it is the last non-empty one
  (lines before it, such as warnings, are allowed); on 0 the JSON printed has finite probabilities.

Every kind: a DefMambaError's message is one non-empty line; no call writes a file (the case's
folder and the working directory list the same files after the call; no ``*.tmp`` file remains
anywhere under the test's folders); each case finishes within ``CASE_TIMEOUT_S`` (a SIGALRM
watchdog turns a slow case into a reported failure; a hang inside native code, where the signal
cannot land, is ended by faulthandler, which dumps every thread's stack to the process's stderr,
seen with ``pytest -s``, and exits the run with status 1).
"""
from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import re
import shutil
import signal
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from defmamba_deploy.errors import CheckpointError, DefMambaError, UsageError

# kind -> (seed, share of DEFMAMBA_FUZZ_CASES); shares follow the cost of one case (an ORT
# session on the real export takes ~1.5 s, a model build ~0.5 s, a checkpoint load ~0.2 s, an image
# ~10 ms)
SHARES = {
    "onnx-session": (101, 24),
    "onnx-predictor": (102, 8),
    "checkpoint-load": (201, 22),
    "checkpoint-create": (202, 7),
    "sidecar-bytes": (301, 32),
    "sidecar-struct": (302, 72),
    "image-preprocess": (401, 70),
    "image-predict": (402, 44),
    "cli": (501, 21),
}
TOTAL_CASES = int(os.environ.get("DEFMAMBA_FUZZ_CASES", "300"))
CASE_TIMEOUT_S = 60
SHOWN_FAILURES = 10
IMG = (64, 64)
_FIXTURE_FOLDERS: list[Path] = []  # searched for stray *.tmp files along with each test's folder


def _only() -> dict[str, set[int]] | None:
    spec = os.environ.get("DEFMAMBA_FUZZ_ONLY", "").strip()
    if not spec:
        return None
    out: dict[str, set[int]] = {}
    for item in spec.split(","):
        kind, _, idx = item.strip().rpartition(":")
        out.setdefault(kind, set()).add(int(idx))
    return out


def case_indices(kind: str) -> list[int]:
    only = _only()
    if only is not None:
        return sorted(only.get(kind, ()))
    total_share = sum(share for _, share in SHARES.values())
    return list(range(max(1, round(TOTAL_CASES * SHARES[kind][1] / total_share))))


# --- watchdog -------------------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """Raised by the watchdog; a BaseException so that ``except Exception`` in the code under test
    (and CliRunner) cannot swallow it."""


@contextmanager
def watchdog(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    # a hang in native code never returns to the interpreter, so the alarm cannot land: dump and exit
    faulthandler.dump_traceback_later(seconds * 3, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)


# --- byte mutations -------------------------------------------------------------------------------

def _pick(rng, regions) -> int:
    weights = np.array([w for _, _, w in regions], dtype=float)
    lo, hi, _ = regions[int(rng.choice(len(regions), p=weights / weights.sum()))]
    return int(rng.integers(lo, hi))


def mutate_bytes(rng, data: bytes, regions=None) -> tuple[bytes, str]:
    """One random corruption of ``data``: (new bytes, what was done). ``regions``: (lo, hi, weight)
    ranges that positions are drawn from (default: the whole file)."""
    n = len(data)
    regions = [(max(0, lo), min(n, hi), w) for lo, hi, w in (regions or [])]
    regions = [r for r in regions if r[1] > r[0]] or [(0, n, 1.0)]
    op = str(rng.choice(["flip", "overwrite", "insert", "delete", "truncate"], p=[0.3, 0.2, 0.15, 0.15, 0.2]))
    buf = bytearray(data)
    if op == "flip":
        pos = sorted({_pick(rng, regions) for _ in range(int(rng.integers(1, 9)))})
        for p in pos:
            buf[p] ^= int(rng.integers(1, 256))
        return bytes(buf), f"flip bytes at {pos}"
    if op == "overwrite":
        start = _pick(rng, regions)
        length = min(int(rng.choice([1, 2, 4, 8, 16, 64, 256, 4096])), n - start)
        buf[start:start + length] = rng.bytes(length)
        return bytes(buf), f"overwrite {length} bytes at {start}"
    if op == "insert":
        start, length = _pick(rng, regions), int(rng.integers(1, 17))
        buf[start:start] = rng.bytes(length)
        return bytes(buf), f"insert {length} bytes at {start}"
    if op == "delete":
        start, length = _pick(rng, regions), int(rng.integers(1, 65))
        del buf[start:start + length]
        return bytes(buf), f"delete {min(length, n - start)} bytes at {start}"
    how = int(rng.integers(0, 5))
    keep = [0, 1, int(rng.integers(2, max(3, n))), _pick(rng, regions), n - int(rng.integers(1, min(n, 64) + 1))][how]
    return bytes(buf[:keep]), f"truncate to {keep} of {n} bytes"


def file_regions(n: int, head: int, tail: int) -> list[tuple[int, int, float]]:
    return [(0, head, 0.4), (n - tail, n, 0.3), (0, n, 0.3)]


def onnx_regions(data: bytes) -> list[tuple[int, int, float]]:
    """Graph structure lies before and after the big initializer blobs: favour those ranges."""
    import onnx

    proto = onnx.load_from_string(data)
    spans = []
    for init in proto.graph.initializer:
        raw = init.raw_data
        if len(raw) >= 4096 and len(set(raw[:256])) > 64:  # a distinctive blob, found only where it is
            at = data.find(raw[:4096])
            if at >= 0:
                spans.append((at, at + len(raw)))
    n = len(data)
    if not spans:
        return file_regions(n, 1 << 20, 1 << 16)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return [(0, first, 0.45), (last, n, 0.25), (0, n, 0.3)]


# --- sidecar mutations ----------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
WRONG_VALUES = [None, True, False, 0, -1, 2**63, 10**30, 1e308, -1e308, NAN, INF, -INF, "", "x", "64", [], [None],
                [64, "a"], {}, {"k": 1}]
TARGETED = [
    (("preprocessing", "std"), [0, 0, 0]), (("preprocessing", "std"), [NAN, NAN, NAN]),
    (("preprocessing", "std"), [0.229, 0.0, 0.225]), (("preprocessing", "std"), [-1, -1, -1]),
    (("preprocessing", "std"), []), (("preprocessing", "std"), [1e-45, 1e-45, 1e-45]),
    (("preprocessing", "std"), "abc"), (("preprocessing", "std"), [1, 2]), (("preprocessing", "std"), 0),
    (("preprocessing", "std"), [INF, INF, INF]), (("preprocessing", "mean"), [INF, INF, INF]),
    (("preprocessing", "mean"), [1e308, 1e308, 1e308]), (("preprocessing", "mean"), {"r": 0.5}),
    (("preprocessing", "mean"), [0.5] * 1000), (("preprocessing", "mean"), ["a", "b", "c"]),
    (("preprocessing",), []), (("preprocessing",), None), (("preprocessing",), "x"),
    (("export_input_size",), [0, 0]), (("export_input_size",), [-64, 64]), (("export_input_size",), [64.5, 64]),
    (("export_input_size",), ["64", "64"]), (("export_input_size",), [64]), (("export_input_size",), [64, 64, 64]),
    (("export_input_size",), [10**7, 10**7]), (("export_input_size",), [2**63, 64]),
    (("export_input_size",), 10**20), (("export_input_size",), "64"), (("export_input_size",), None),
    (("export_input_size",), [NAN, NAN]), (("export_input_size",), [1e308, 1e308]),
    (("export_input_size",), [True, True]), (("export_input_size",), [32, 32]), (("export_input_size",), [128, 96]),
    (("inputs",), []), (("inputs",), {}), (("inputs",), None), (("inputs",), "x"), (("inputs", 0), []),
    (("inputs", 0, "shape"), [1, 3, 64]), (("inputs", 0, "shape"), "abcd"), (("inputs", 0, "shape"), None),
    (("outputs",), None), (("weights",), []), (("weights",), "x"), (("weights",), 5), (("weights",), None),
    (("format",), 1), (("format",), "defmamba-deploy/onnx-sidecar/2"), (("variant",), None), (("variant",), 7),
    (("variant",), "xl"), (("dynamic",), None), (("dynamic",), "shape"), (("min_input_size",), -1),
    ((), []), ((), "x"), ((), None), ((), 3),
]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _parent(obj, path):
    for key in path[:-1]:
        obj = obj[key]
    if not isinstance(obj, (dict, list)) or (isinstance(obj, list) and not isinstance(path[-1], int)):
        raise KeyError(path)
    if isinstance(obj, list) and not -len(obj) <= path[-1] < len(obj):
        raise KeyError(path)
    return obj


def _set(obj, path, value):
    if not path:
        return value
    _parent(obj, path)[path[-1]] = value
    return obj


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dotted(path) -> str:
    return ".".join(map(str, path)) or "<root>"


def mutate_sidecar(rng, doc: dict) -> tuple[object, str]:
    """1-3 structure-aware mutations of a sidecar document: (new document, what was done)."""
    doc = copy.deepcopy(doc)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        op = str(rng.choice(["targeted", "wrong-type", "delete", "container"], p=[0.45, 0.25, 0.15, 0.15]))
        paths = list(_paths(doc))
        try:
            if op == "targeted":
                path, value = TARGETED[int(rng.integers(len(TARGETED)))]
                doc = _set(doc, path, copy.deepcopy(value))
                done.append(f"{_dotted(path)}={_short(value)}")
            elif op == "wrong-type":
                path = paths[int(rng.integers(len(paths)))]
                value = WRONG_VALUES[int(rng.integers(len(WRONG_VALUES)))]
                doc = _set(doc, path, copy.deepcopy(value))
                done.append(f"{_dotted(path)}={_short(value)}")
            elif op == "delete":
                keyed = [p for p in paths if p]
                path = keyed[int(rng.integers(len(keyed)))]
                del _parent(doc, path)[path[-1]]
                done.append(f"del {_dotted(path)}")
            else:
                containers = [p for p in paths if isinstance(_get(doc, p), (dict, list))]
                path = containers[int(rng.integers(len(containers)))]
                old = _get(doc, path)
                new = list(old.values()) if isinstance(old, dict) else {str(i): v for i, v in enumerate(old)}
                doc = _set(doc, path, new)
                done.append(f"{_dotted(path)}: {type(old).__name__}->{type(new).__name__}")
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # an earlier mutation removed or replaced that part
    return doc, "; ".join(done) or "no-op"


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


# --- outcome checks -------------------------------------------------------------------------------

class CaseFailure(Exception):
    """A case broke its pass criterion (raised by the checks, recorded by the loop)."""


def first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else "<empty message>"


_last_outcome = ["-"]  # how the latest expect() ended, for the per-kind tally


def expect(fn, allowed=(DefMambaError,)):
    """``(fn(), True)``, or ``(None, False)`` when it raised one of ``allowed`` with a one-line
    message. Other exceptions propagate to the loop, which records them."""
    try:
        out = fn()
    except allowed as e:
        _last_outcome[0] = f"rejected ({type(e).__name__})"
        msg = str(e)
        if not msg.strip() or "\n" in msg.strip():
            raise CaseFailure(f"{type(e).__name__} message is not one non-empty line: {msg!r:.200}") from None
        return None, False
    _last_outcome[0] = "accepted"
    return out, True


def check_probs(top) -> None:
    if not isinstance(top, list) or len(top) != 1 or not isinstance(top[0], list) or not top[0]:
        raise CaseFailure(f"predict returned {type(top).__name__} {str(top)[:120]}, not one top-k list")
    probs = [t.get("prob") if isinstance(t, dict) else None for t in top[0]]
    if not all(isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
        raise CaseFailure(f"predict returned probabilities {probs[:5]} (not finite in [0, 1])")


def check_image_array(arr, hw=(224, 224)) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != (3, *hw):
        what = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise CaseFailure(f"preprocess returned {what}, not float32 (3, {hw[0]}, {hw[1]})")
    if not np.isfinite(arr).all():
        raise CaseFailure(f"preprocess returned {int((~np.isfinite(arr)).sum())} non-finite values")


def predict_or_error(model_path, image, **kw) -> None:
    from defmamba_deploy.runtime import Predictor

    pred, ok = expect(lambda: Predictor(model_path, threads=1, **kw))
    if not ok:
        return
    top, ok = expect(lambda: pred.predict([str(image)], topk=5))
    if ok:
        check_probs(top)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def check_cli(result) -> None:
    _last_outcome[0] = f"exit {result.exit_code}"
    problems = []
    if result.exit_code not in (0, 1, 2, 3):
        problems.append(f"exit code {result.exit_code}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"raised {type(result.exception).__name__}: {first_line(result.exception)}")
    output = _ANSI.sub("", result.output)
    if "Traceback" in output:
        problems.append("printed a traceback")
    stderr = [line for line in _ANSI.sub("", result.stderr).splitlines() if line.strip()]
    if result.exit_code != 0:
        errors = [line for line in stderr if line.startswith("error:")]
        if len(errors) != 1 or stderr[-1] != errors[0]:
            problems.append(f"exit {result.exit_code} with stderr {stderr[-3:]!r:.300} (want one final 'error:' line)")
    else:
        stdout = result.stdout
        try:
            data = json.loads(stdout[stdout.index("["):])
            for entry in data:
                check_probs([entry["top"]])
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"exit 0 without the JSON predictions ({first_line(e)}): {stdout[:120]!r}")
        except CaseFailure as e:
            problems.append(f"exit 0 but {e}")
    if problems:
        raise CaseFailure(f"exit {result.exit_code}: " + "; ".join(problems))


# --- the loop -------------------------------------------------------------------------------------

def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders for p in folder.rglob("*")}


def run_cases(kind: str, tmp_path: Path, prepare) -> None:
    """Run every case of ``kind``: ``prepare(rng, case_dir) -> (description, action)``; ``action()``
    makes the call and checks its outcome. Fails once at the end, listing the first failures."""
    seed = SHARES[kind][0]
    indices = case_indices(kind)
    if not indices:
        pytest.skip(f"DEFMAMBA_FUZZ_ONLY selects no {kind} case")
    cwd = Path.cwd()
    failures = []
    tally: Counter = Counter()
    for i in indices:
        rng = np.random.default_rng([seed, i])
        case_dir = tmp_path / f"case{i}"
        case_dir.mkdir()
        desc, action = prepare(rng, case_dir)
        before = _files(case_dir, cwd)
        outcome = None
        _last_outcome[0] = "-"
        try:
            with watchdog(CASE_TIMEOUT_S):
                action()
        except CaseFailure as e:
            outcome = str(e)
        except CaseTimeout as e:
            outcome = f"hang: {e}"
        except Exception as e:  # noqa: BLE001 - any other escape is what this test looks for
            outcome = f"{type(e).__name__}: {first_line(e)}"
        written = sorted(str(p.relative_to(p.parent.parent)) for p in _files(case_dir, cwd) - before)
        if written:
            outcome = (outcome + "; " if outcome else "") + f"wrote {written[:5]}"
        if outcome:
            failures.append(f"{kind} seed [{seed}, {i}] {desc} -> {outcome}")
        tally["failed" if outcome else _last_outcome[0]] += 1
        shutil.rmtree(case_dir, ignore_errors=True)
    stray = sorted(str(p) for folder in [tmp_path.parent, *_FIXTURE_FOLDERS] for p in folder.rglob("*.tmp"))
    if stray:
        failures.append(f"{kind}: stray temporary files {stray[:5]}")
    summary = ", ".join(f"{n} {what}" for what, n in sorted(tally.items()))
    print(f"{kind}: {summary}")  # shown with -s, and with the failure report
    assert not failures, (f"{len(failures)} of {len(indices)} {kind} cases failed ({summary}); the first "
                          f"{min(len(failures), SHOWN_FAILURES)}:\n  " + "\n  ".join(failures[:SHOWN_FAILURES]))


# --- inputs (built once per module) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The real DefMamba-T export(s) at 64x64: [(path, onnx bytes, sidecar text, position regions)]."""
    from defmamba_deploy.libs import find_library
    from defmamba_deploy.onnx import export_onnx

    folder = tmp_path_factory.mktemp("export")
    _FIXTURE_FOLDERS.append(folder)
    forms = [True] + ([False] if find_library("ort", required=False) is not None else [])
    out = []
    for portable in forms:
        path = folder / f"t_{'portable' if portable else 'custom'}.onnx"
        export_onnx("t", None, portable=portable, img_size=IMG, output=path)
        data = path.read_bytes()
        out.append((path, data, Path(str(path) + ".json").read_text(), onnx_regions(data)))
    return out


@pytest.fixture(scope="module")
def standin(exported, tmp_path_factory):
    """A small ONNX model with the export's input and output (names, fixed 64x64 shape, 1000
    logits) beside a copy of the export's sidecar: sessions in milliseconds for sidecar cases."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((3, 1000)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, *IMG])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("standin") / "m.onnx"
    _FIXTURE_FOLDERS.append(path.parent)
    path.write_bytes(model.SerializeToString())
    side = exported[0][2]
    Path(str(path) + ".json").write_text(side)
    return path, path.read_bytes(), side


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A bare DefMamba-T state_dict saved by torch.save (a zip): (bytes, a model to load into)."""
    import torch

    import defmamba_deploy as dd

    model = dd.create_model("t", seed=0)  # seeded: the same bytes, so a case's seed reproduces it
    path = tmp_path_factory.mktemp("ckpt") / "t.pth"
    torch.save(model.state_dict(), path)
    return path.read_bytes(), model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """PNG and JPEG files of random pixels in a few sizes and modes: [(suffix, bytes)]."""
    folder = tmp_path_factory.mktemp("images")
    _FIXTURE_FOLDERS.append(folder)
    rng = np.random.default_rng(7)
    out = []
    for fmt, (h, w), mode in [("png", IMG, "RGB"), ("png", (40, 52), "RGBA"), ("jpeg", (48, 80), "RGB"),
                              ("jpeg", (120, 96), "L")]:
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = (rng.random((h, w, channels)) * 255).astype(np.uint8)
        im = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
        path = folder / f"{h}x{w}_{mode}.{'png' if fmt == 'png' else 'jpg'}"
        im.save(path, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        out.append((path.suffix, path.read_bytes()))
    return out


@pytest.fixture(scope="module")
def good_image(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "img.png"
    path.write_bytes(images[0][1])
    return path


@pytest.fixture(scope="module")
def predictor(exported):
    from defmamba_deploy.runtime import Predictor

    return Predictor(exported[0][0], threads=1)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The test's folder, with the working directory inside it (a stray write in cwd is seen)."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cases = tmp_path / "cases"
    cases.mkdir()
    return cases


# --- preparing one case per kind ------------------------------------------------------------------

def _corrupt_onnx(rng, case_dir, exported):
    # the same draw whether or not the custom-op export exists, so a case's mutation stays the same
    path, data, side, regions = exported[int(rng.integers(2)) % len(exported)]
    bad, desc = mutate_bytes(rng, data, regions)
    target = case_dir / "m.onnx"
    target.write_bytes(bad)
    Path(str(target) + ".json").write_text(side)
    return target, f"{path.name}: {desc}"


def _corrupt_file(rng, case_dir, data, name, regions):
    bad, desc = mutate_bytes(rng, data, regions)
    target = case_dir / name
    target.write_bytes(bad)
    return target, desc


def _sidecar_case(rng, case_dir, standin, structured):
    _, model, side = standin
    target = case_dir / "m.onnx"
    target.write_bytes(model)
    if structured:
        doc, desc = mutate_sidecar(rng, json.loads(side))
        text = json.dumps(doc, indent=2).encode()
    else:
        text, desc = mutate_bytes(rng, side.encode())
    Path(str(target) + ".json").write_bytes(text)
    return target, desc


def _image_case(rng, case_dir, images):
    suffix, data = images[int(rng.integers(len(images)))]
    n = len(data)
    target, desc = _corrupt_file(rng, case_dir, data, f"img{suffix}", [(0, 64, 0.4), (n - 64, n, 0.2), (0, n, 0.4)])
    return target, f"{suffix[1:]} {n} bytes: {desc}"


def _prepare(kind, request):
    fx = request.getfixturevalue

    if kind == "onnx-session":
        exported = fx("exported")

        def prepare(rng, case_dir):
            import onnxruntime as ort

            from defmamba_deploy.runtime import create_session

            target, desc = _corrupt_onnx(rng, case_dir, exported)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

            def action():
                sess, ok = expect(lambda: create_session(target, threads=1, options=so))
                if ok and not hasattr(sess, "run"):
                    raise CaseFailure(f"create_session returned {type(sess).__name__}")

            return desc, action
    elif kind == "onnx-predictor":
        exported, image = fx("exported"), fx("good_image")

        def prepare(rng, case_dir):
            target, desc = _corrupt_onnx(rng, case_dir, exported)
            return desc, lambda: predict_or_error(target, image)
    elif kind in ("checkpoint-load", "checkpoint-create"):
        data, model = fx("checkpoint")
        regions = file_regions(len(data), 1 << 16, 1 << 16)

        def prepare(rng, case_dir):
            import defmamba_deploy as dd

            target, desc = _corrupt_file(rng, case_dir, data, "t.pth", regions)
            if kind == "checkpoint-load":
                return desc, lambda: expect(lambda: dd.load_checkpoint(model, target), (CheckpointError,))
            return desc, lambda: expect(lambda: dd.create_model("t", weights=target), (CheckpointError,))
    elif kind in ("sidecar-bytes", "sidecar-struct"):
        standin, image = fx("standin"), fx("good_image")

        def prepare(rng, case_dir):
            target, desc = _sidecar_case(rng, case_dir, standin, kind == "sidecar-struct")
            return desc, lambda: predict_or_error(target, image)
    elif kind == "image-preprocess":
        images = fx("images")

        def prepare(rng, case_dir):
            from defmamba_deploy.data import preprocess

            target, desc = _image_case(rng, case_dir, images)

            def action():
                arr, ok = expect(lambda: preprocess(target), (UsageError,))
                if ok:
                    check_image_array(arr)

            return desc, action
    elif kind == "image-predict":
        images, pred = fx("images"), fx("predictor")

        def prepare(rng, case_dir):
            target, desc = _image_case(rng, case_dir, images)

            def action():
                top, ok = expect(lambda: pred.predict([str(target)], topk=5), (UsageError,))
                if ok:
                    check_probs(top)

            return desc, action
    elif kind == "cli":
        exported, standin, image = fx("exported"), fx("standin"), fx("good_image")
        data, _ = fx("checkpoint")
        images = fx("images")
        ckpt_regions = file_regions(len(data), 1 << 16, 1 << 16)
        runner = CliRunner()

        def prepare(rng, case_dir):
            from defmamba_deploy.cli import app

            which = ["onnx", "weights", "image", "sidecar"][int(rng.integers(4))]
            if which == "onnx":
                target, desc = _corrupt_onnx(rng, case_dir, exported)
                args = ["predict", "--json", "--onnx", str(target), str(image)]
            elif which == "weights":
                target, desc = _corrupt_file(rng, case_dir, data, "t.pth", ckpt_regions)
                args = ["predict", "--json", "-m", "t", "--weights", str(target), "--img-size", str(IMG[0]), str(image)]
            elif which == "image":
                target, desc = _image_case(rng, case_dir, images)
                args = ["predict", "--json", "--onnx", str(standin[0]), str(target)]
            else:
                structured = bool(rng.integers(2))
                target, desc = _sidecar_case(rng, case_dir, standin, structured)
                which += "-struct" if structured else "-bytes"
                args = ["predict", "--json", "--onnx", str(target), str(image)]
            return f"{which} ({desc})", lambda: check_cli(runner.invoke(app, args))
    else:
        raise AssertionError(kind)
    return prepare


@pytest.mark.parametrize("kind", list(SHARES))
def test_fuzz(kind, request, work):
    run_cases(kind, work, _prepare(kind, request))
