"""CUDA kernels of the defmamba ops against the PyTorch reference, on a GPU.

The kernels are reached through their C test ABI, ``libdefmamba_cuda_kernels.so``
(``plugins/tests/cuda_test_abi.cu``, built when CMake finds nvcc), loaded with ctypes: every call takes raw
device pointers of ``torch.cuda`` tensors, sizes, dtype codes and torch's current stream. The
references are ``defmamba_deploy.ops`` evaluated in float64 on the same GPU (TokenSort: its exact
stable order). Everything skips, with the reason, without a CUDA device or without the library.

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j
    python -m pytest -m gpu tests/plugins/test_cuda_kernels.py
    python tests/plugins/test_cuda_kernels.py bench --out results.json   # timings (see benchmark())
    python tests/plugins/test_cuda_kernels.py selftest                   # the tests without pytest

The library is looked up in $DEFMAMBA_CUDA_KERNELS_LIB, then build*/plugins/. The ORT CUDA-EP test
also needs onnxruntime-gpu and a CUDA build of libdefmamba_ort_ops.so ($DEFMAMBA_ORT_LIB, else
build*/plugins/, else defmamba_deploy/lib/). benchmarks/gpu_check.sh runs all of this on a GPU box.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make defmamba_deploy importable
    sys.path.insert(0, str(ROOT))

from defmamba_deploy.ops.deform_gather import deform_gather as ref_deform_gather  # noqa: E402
from defmamba_deploy.ops.selective_scan import selective_scan as ref_selective_scan  # noqa: E402
from defmamba_deploy.ops.token_sort import token_sort as ref_token_sort  # noqa: E402

try:
    import pytest
except ImportError:  # the GPU check box may lack pytest: `python tests/plugins/test_cuda_kernels.py selftest`
    pytest = None


DEVICE = "cuda"  # a CPU dry run of the test logic may swap it (and the cuda_* wrappers)
_SELFTEST = False


class Skipped(Exception):
    pass


def skip(reason: str):
    if pytest is not None and not _SELFTEST:
        pytest.skip(reason)
    raise Skipped(reason)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def parametrize(name, values, ids=None):
    """pytest.mark.parametrize when pytest is there; the values are also kept for selftest."""

    def deco(fn):
        fn._dm_params = (name, list(values))
        return pytest.mark.parametrize(name, values, ids=ids)(fn) if pytest is not None else fn

    return deco


if pytest is not None:
    pytestmark = pytest.mark.gpu

# ---- library ---------------------------------------------------------------------------------------
F32, F16 = torch.float32, torch.float16
DTYPE_CODE = {F32: 0, F16: 1}
INDEX_CODE = {torch.int32: 0, torch.int64: 1}
_LIB = None


def find_library(name: str, env: str, extra=()) -> Path | None:
    if os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.is_file() else None
    candidates = sorted(ROOT.glob(f"build*/plugins/{name}"), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates += [p for p in extra if p.is_file()]
    return candidates[0] if candidates else None


def lib():
    """The ctypes handle of libdefmamba_cuda_kernels.so (skips without a GPU or the library)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    if not torch.cuda.is_available():
        skip("no CUDA device (torch.cuda.is_available() is False)")
    path = find_library("libdefmamba_cuda_kernels.so", "DEFMAMBA_CUDA_KERNELS_LIB")
    if path is None:
        skip("libdefmamba_cuda_kernels.so not built (configure with CUDA: cmake -S . -B build && "
             "cmake --build build; or set DEFMAMBA_CUDA_KERNELS_LIB)")
    h = ctypes.CDLL(str(path))
    P, I64, I, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
    h.dm_cuda_abi_version.restype = I
    h.dm_cuda_error_string.argtypes, h.dm_cuda_error_string.restype = [I], ctypes.c_char_p
    h.dm_selective_scan.argtypes = [P] * 8 + [I64] * 5 + [I, I, P, ctypes.c_uint64]
    h.dm_deform_gather.argtypes = [P] * 4 + [I64] * 7 + [I, P]
    h.dm_token_sort_workspace_size.argtypes = [I64, I64, ctypes.POINTER(SZ)]
    h.dm_token_sort.argtypes = [P, P, P, I64, I64, I, I, P, SZ, P]
    h.dm_token_sort_keys.argtypes = [P, P, I64, I64, I, P]
    for f in ("dm_selective_scan", "dm_deform_gather", "dm_token_sort_workspace_size", "dm_token_sort",
              "dm_token_sort_keys"):
        getattr(h, f).restype = I
    assert h.dm_cuda_abi_version() == 2, "libdefmamba_cuda_kernels.so is outdated: rebuild it"
    h.path = path
    _LIB = h
    return h


def _ptr(t):
    if t is None:
        return None
    assert t.is_cuda and t.is_contiguous(), "the ABI takes contiguous CUDA tensors"
    return ctypes.c_void_p(t.data_ptr())


def _stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def _check(err: int, what: str):
    if err != 0:
        raise RuntimeError(f"{what}: CUDA error {err}: {lib().dm_cuda_error_string(err).decode()}")


# ---- kernel wrappers -------------------------------------------------------------------------------
def cuda_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out=None, reverse=None):
    bt, ch, L = u.shape
    g, n = B.shape[1], B.shape[2]
    y = torch.empty_like(u) if out is None else out
    mask = sum(1 << i for i, r in enumerate(reverse or ()) if r)  # reverse: one 0/1 flag per group
    err = lib().dm_selective_scan(_ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), _ptr(y),
                                  bt, ch, g, n, L, int(bool(delta_softplus)), DTYPE_CODE[u.dtype], _stream(), mask)
    _check(err, "dm_selective_scan")
    return y


def cuda_deform_gather(x, offset, rpe_table, out=None):
    bt, ch, h, w = x.shape
    feat = torch.empty_like(x) if out is None else out
    err = lib().dm_deform_gather(_ptr(x), _ptr(offset), _ptr(rpe_table), _ptr(feat), bt, ch, h, w, offset.shape[1],
                                 rpe_table.shape[1], rpe_table.shape[2], DTYPE_CODE[x.dtype], _stream())
    _check(err, "dm_deform_gather")
    return feat


def token_sort_workspace(bt: int, L: int) -> torch.Tensor:
    size = ctypes.c_size_t(0)
    _check(lib().dm_token_sort_workspace_size(bt, L, ctypes.byref(size)), "dm_token_sort_workspace_size")
    return torch.empty(max(size.value, 1), dtype=torch.uint8, device=DEVICE)


def cuda_token_sort(t, index_dtype=torch.int64, workspace=None):
    bt, L = t.shape
    ws = token_sort_workspace(bt, L) if workspace is None else workspace
    perm = torch.empty((bt, L), dtype=index_dtype, device=t.device)
    inv = torch.empty_like(perm)
    err = lib().dm_token_sort(_ptr(t), _ptr(perm), _ptr(inv), bt, L, DTYPE_CODE[t.dtype], INDEX_CODE[index_dtype],
                              _ptr(ws), ws.numel(), _stream())
    _check(err, "dm_token_sort")
    return perm, inv


def cuda_token_sort_keys(t):
    keys = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    _check(lib().dm_token_sort_keys(_ptr(t), _ptr(keys), t.shape[0], t.shape[1], DTYPE_CODE[t.dtype], _stream()),
           "dm_token_sort_keys")
    return keys


def team_size(rows: int, L: int) -> int:
    """Threads per channel row that launchSelectiveScan picks (mirror of kernel.cu's team_size)."""
    t = 32
    while t < 256 and t * 8 < L and rows * t * 2 <= (1 << 18) and (t < 128 or rows <= 64):
        t *= 2
    return t


# ---- SelectiveScan ---------------------------------------------------------------------------------
def scan_inputs(bt, ch, g, n, L, dtype, softplus=True, with_d_bias=True, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    f = lambda *s: torch.randn(*s, generator=gen, device=DEVICE, dtype=torch.float32)  # noqa: E731
    delta = f(bt, ch, L) - 1.0
    if L >= 4:  # both sides of the softplus threshold
        delta[..., 0] = 25.0
        delta[..., 1] = -30.0
    bias = 0.5 * f(ch)
    if not softplus:  # dt >= 0 keeps the state bounded
        delta, bias = delta.abs() * 0.1, bias.abs() * 0.1
    return dict(u=f(bt, ch, L).to(dtype), delta=delta.to(dtype), A=-torch.exp(f(ch, n)), B=f(bt, g, n, L).to(dtype),
                C=f(bt, g, n, L).to(dtype), D=f(ch) if with_d_bias else None,
                delta_bias=bias if with_d_bias else None)


def scan_reference(inp, softplus=True, reverse=None):
    d = {k: (v.double() if v is not None else None) for k, v in inp.items()}
    return ref_selective_scan(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["delta_bias"], softplus, reverse)


def assert_scan_close(y, ref, out_rel=0.0):
    # Same bound as tests/plugins/test_ort_ops.py (float32 recurrence vs float64: ~1e-7 of the output scale
    # observed; 1e-4 leaves margin for L = 65536, while an indexing/carry bug gives O(1) errors), plus
    # the rounding of a float16 output.
    y = y.double()
    assert torch.isfinite(y).all(), "non-finite output"
    scale = max(1.0, ref.abs().max().item())
    err = (y - ref).abs()
    bound = 1e-4 * scale + out_rel * ref.abs()
    excess = (err - bound).max().item()
    assert excess <= 0, f"max error {err.max().item():.3g} exceeds the bound (scale {scale:.3g}) by {excess:.3g}"


SCAN_CASES = [  # (Bt, Ch, G, N, L, dtype, softplus, D and delta_bias given)
    (1, 288, 3, 16, 3136, F16, True, True),  # DefMamba-S stage 1 at 224, batch 1 (team 128)
    (1, 288, 3, 16, 3136, F32, True, True),
    (32, 288, 3, 16, 3136, F16, True, True),  # batch 32 (team 32)
    (1, 1152, 3, 16, 196, F16, True, True),  # stage 3, batch 1
    (1, 1152, 3, 16, 196, F32, True, True),
    (32, 1152, 3, 16, 196, F16, True, True),
    (2, 6, 3, 16, 1, F32, True, True),  # L = 1
    (3, 6, 3, 16, 1, F16, True, True),
    (1, 16, 2, 16, 500, F32, True, True),  # team 64
    (1, 8, 2, 16, 1000, F32, True, True),  # team 128
    (1, 70, 2, 16, 5000, F32, True, True),  # team 128 (more than 64 rows), 5 chunks
    (1, 12, 3, 16, 16384, F16, True, True),  # 512x512 stage 1 (team 256)
    (1, 6, 3, 16, 65536, F16, True, True),  # L = 65536
    (2, 3, 1, 16, 65536, F32, True, True),
    (3, 10, 2, 5, 257, F32, False, False),  # N % 4 != 0, no softplus, D = delta_bias = None
    (2, 4, 4, 1, 33, F16, True, False),  # N = 1
    (1, 2, 1, 1024, 300, F32, True, True),  # largest N the kernel takes
    (5, 7, 7, 16, 77, F16, True, True),  # odd everything (unaligned rows)
]


def _scan_id(c):
    return "Bt{}_Ch{}_G{}_N{}_L{}_{}_sp{}_{}".format(*c[:5], str(c[5]).split(".")[-1], int(c[6]), "D" if c[7] else "noD")


@parametrize("case", SCAN_CASES, ids=_scan_id)
def test_selective_scan(case):
    lib()
    bt, ch, g, n, L, dtype, sp, with_d = case
    inp = scan_inputs(bt, ch, g, n, L, dtype, sp, with_d, seed=bt * 7 + L)
    y = cuda_selective_scan(**inp, delta_softplus=sp)
    _sync()
    assert y.shape == (bt, ch, L) and y.dtype == dtype
    assert_scan_close(y, scan_reference(inp, sp), out_rel=2.0**-11 if dtype == F16 else 0.0)
    y2 = cuda_selective_scan(**inp, delta_softplus=sp)
    assert torch.equal(y, y2), "not deterministic"


SCAN_REVERSE_CASES = [  # (Bt, Ch, G, N, L, dtype, reverse: one 0/1 flag per group)
    (1, 288, 3, 16, 3136, F16, (0, 1, 0)),  # DefMamba-S stage 1: the reversed-raster branch (team 128)
    (2, 6, 3, 16, 1001, F32, (1, 0, 1)),  # partial last run (L % 8 != 0), unaligned reversed runs
    (5, 7, 7, 16, 77, F16, (1, 0, 0, 1, 1, 0, 1)),  # team 32: blocks of 4 rows mixing both directions
]


@parametrize("case", SCAN_REVERSE_CASES, ids=lambda c: "Bt{}_Ch{}_G{}_N{}_L{}_{}_rev{}".format(
    *c[:5], str(c[5]).split(".")[-1], "".join(map(str, c[6]))))
def test_selective_scan_reverse(case):
    # reversed groups scan t = L-1 .. 0: the reference computes them as flip(scan(flip(inputs)))
    lib()
    bt, ch, g, n, L, dtype, reverse = case
    inp = scan_inputs(bt, ch, g, n, L, dtype, seed=L + g)
    y = cuda_selective_scan(**inp, reverse=reverse)
    _sync()
    assert_scan_close(y, scan_reference(inp, reverse=reverse), out_rel=2.0**-11 if dtype == F16 else 0.0)


def test_selective_scan_unaligned_pointers():
    # rows whose length is a multiple of 8 take the 16-byte vector path when aligned; offset every
    # tensor by one element so that every load/store falls back to the scalar path
    lib()
    bt, ch, g, n, L = 2, 6, 3, 16, 512
    inp = scan_inputs(bt, ch, g, n, L, F16, seed=5)
    shifted = {}
    for k, v in inp.items():
        if v is not None and v.dtype == F16:
            buf = torch.empty(v.numel() + 1, dtype=v.dtype, device=DEVICE)
            buf[1:].copy_(v.reshape(-1))
            shifted[k] = buf[1:].view(v.shape)
        else:
            shifted[k] = v
    y = cuda_selective_scan(**shifted)
    y_aligned = cuda_selective_scan(**inp)
    _sync()
    assert torch.equal(y, y_aligned)
    assert_scan_close(y, scan_reference(inp), out_rel=2.0**-11)


# ---- DeformGather ----------------------------------------------------------------------------------
def gather_inputs(bt, ch, h, w, k=3, th=7, tw=7, dtype=F32, off_scale=2.0, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    f = lambda *s: torch.randn(*s, generator=gen, device=DEVICE)  # noqa: E731
    return dict(x=f(bt, ch, h, w).to(dtype), offset=(off_scale * f(bt, k, h, w)).to(dtype),
                rpe_table=f(ch, th, tw).to(dtype))


def assert_gather_close(feat, ref, x, out_rel=0.0):
    # tests/plugins/test_ort_ops.py's bound: float32 sample positions are off by ~size * 2^-24 px, so values
    # differ from float64 by up to (pixel-to-pixel slope of x) * size * 2^-23 (floor 1e-5).
    xd = x.double()
    slope = max(xd.diff(dim=-1).abs().max().item(), xd.diff(dim=-2).abs().max().item())
    atol = max(1e-5, 2.0 * slope * max(x.shape[-2:]) * 2.0**-23)
    err = (feat.double() - ref).abs()
    excess = (err - atol - out_rel * ref.abs()).max().item()
    assert excess <= 0, f"max error {err.max().item():.3g} > {atol:.3g} (+{out_rel:.3g} relative)"


GATHER_CASES = [  # (Bt, Ch, H, W, K, Th, Tw, dtype)
    (1, 96, 56, 56, 3, 7, 7, F32),  # DefMamba-S stage 1 at 224
    (1, 96, 56, 56, 3, 7, 7, F16),
    (32, 96, 56, 56, 3, 7, 7, F16),
    (1, 384, 14, 14, 3, 7, 7, F32),  # stage 3
    (1, 4, 2, 2, 2, 7, 7, F32),  # smallest map
    (2, 5, 7, 9, 3, 3, 5, F32),  # odd, non-square table
    (1, 3, 6, 8, 4, 1, 1, F16),  # 1x1 table, extra offset channel
    (1, 13, 128, 96, 3, 7, 7, F32),  # large map, Ch not a multiple of 8
]


@parametrize("case", GATHER_CASES, ids=lambda c: "Bt{}_Ch{}_{}x{}_K{}_T{}x{}_{}".format(*c[:7], str(c[7]).split(".")[-1]))
def test_deform_gather(case):
    lib()
    bt, ch, h, w, k, th, tw, dtype = case
    inp = gather_inputs(bt, ch, h, w, k, th, tw, dtype, seed=h * w + ch)
    feat = cuda_deform_gather(**inp)
    _sync()
    ref = ref_deform_gather(inp["x"].double(), inp["offset"].double(), inp["rpe_table"].double())
    assert_gather_close(feat, ref, inp["x"], out_rel=2.0**-11 if dtype == F16 else 0.0)


def test_deform_gather_saturated_and_nan_offsets():
    lib()
    inp = gather_inputs(2, 9, 12, 10, seed=3)
    inp["offset"][0] = 30.0 * torch.sign(inp["offset"][0])  # tanh = +-1: points on pixel boundaries
    inp["offset"][1, 0, 4, 5] = float("nan")
    feat = cuda_deform_gather(**inp)
    _sync()
    assert torch.isnan(feat[1, :, 4, 5]).all(), "a NaN offset makes that pixel NaN in every channel"
    mask = torch.ones_like(feat, dtype=torch.bool)
    mask[1, :, 4, 5] = False
    ref = ref_deform_gather(inp["x"].double(), inp["offset"].double(), inp["rpe_table"].double())
    assert_gather_close(torch.where(mask, feat, 0), torch.where(mask, ref, 0), inp["x"])


# ---- TokenSort -------------------------------------------------------------------------------------
def sort_key_f32(t: torch.Tensor) -> torch.Tensor:
    """The contract's float32 key with torch's tanh (the kernel's tanh may differ by an ulp)."""
    L = t.shape[-1]
    l = torch.arange(L, device=t.device, dtype=torch.float32)
    ref = (l + 0.5) / float(max(L - 1, 1)) * 2.0 - 1.0
    return torch.tanh(t.float()) + ref


def check_perm(perm, inv):
    bt, L = perm.shape
    ar = torch.arange(L, device=perm.device).expand(bt, L)
    assert torch.equal(torch.sort(perm.long(), dim=-1).values, ar), "perm is not a permutation"
    assert torch.equal(torch.gather(inv.long(), 1, perm.long()), ar), "inv_perm[perm[j]] != j"


SORT_CASES = [  # (Bt, L, dtype, index dtype)
    (1, 1, F32, torch.int64),
    (3, 1, F16, torch.int32),
    (2, 2, F32, torch.int64),
    (1, 196, F32, torch.int32),
    (1, 3136, F32, torch.int64),
    (32, 3136, F16, torch.int64),
    (1, 16384, F32, torch.int64),
    (4, 16384, F16, torch.int32),
    (1, 65536, F32, torch.int64),
    (3, 65536, F32, torch.int32),
]


@parametrize("case", SORT_CASES, ids=lambda c: "Bt{}_L{}_{}_{}".format(c[0], c[1], str(c[2]).split(".")[-1], str(c[3]).split(".")[-1]))
def test_token_sort(case):
    lib()
    bt, L, dtype, index_dtype = case
    gen = torch.Generator(device=DEVICE).manual_seed(L + bt)
    t = (2.0 * torch.randn(bt, L, generator=gen, device=DEVICE)).to(dtype)
    perm, inv = cuda_token_sort(t, index_dtype)
    keys = cuda_token_sort_keys(t)
    _sync()
    assert perm.dtype == index_dtype and perm.shape == (bt, L)
    check_perm(perm, inv)
    if L == 1:
        return
    # 1. the kernel's keys are the contract's float32 keys (up to the tanh implementation: <= 2 ulp)
    # (tolerance: 2 ulp of max(|key|, 1): an ulp of tanh in [-1, 1] plus the rounding of the sum)
    want = sort_key_f32(t)
    ulp2 = 2 * torch.finfo(torch.float32).eps * want.abs().clamp_min(1.0)
    assert ((keys - want).abs() <= ulp2).all(), "keys differ from the contract by more than 2 ulp"
    # 2. perm is exactly the stable ascending order of those keys
    assert torch.equal(perm.long(), torch.sort(keys, dim=-1, stable=True).indices), "not the stable order of the keys"
    # 3. against the PyTorch reference: identical except for near-ties that the tanh ulp can swap
    perm_ref, inv_ref = ref_token_sort(t)
    kd = want.double()
    got = torch.gather(kd, 1, perm.long())
    exp = torch.gather(kd, 1, perm_ref)
    assert ((got - exp).abs() <= torch.gather(ulp2.double(), 1, perm_ref)).all(), "order differs beyond near-ties"
    assert (perm.long() != perm_ref).float().mean().item() < 1e-2


@parametrize("L", [5, 257, 16385, 65537])
def test_token_sort_exact_ties(L):
    # as in tests/plugins/test_ort_ops.py: L - 1 a power of two makes (l + 0.5)/(L - 1)*2 - 1 exact in float32
    # and offsets 0 / +-20 make tanh exactly 0 / +-1, so many keys are exactly equal: the stable order
    # (index order among equal keys) is the only right answer, and it is known exactly.
    lib()
    gen = torch.Generator(device=DEVICE).manual_seed(L)
    choice = torch.tensor([-20.0, 0.0, 20.0], device=DEVICE)
    t = choice[torch.randint(0, 3, (3, L), generator=gen, device=DEVICE)]
    half = (L - 1) // 2
    t[0, :half], t[0, half:] = 20.0, 0.0
    keys = sort_key_f32(t)
    assert torch.unique(keys[0]).numel() <= L - half  # really many exact ties
    want = torch.sort(keys, dim=-1, stable=True).indices
    for dtype, index_dtype in ((F32, torch.int64), (F16, torch.int32)):
        perm, inv = cuda_token_sort(t.to(dtype), index_dtype)
        _sync()
        check_perm(perm, inv)
        assert torch.equal(perm.long(), want)
        assert torch.equal(cuda_token_sort_keys(t.to(dtype)), keys)


def test_token_sort_workspace_too_small():
    lib()
    t = torch.randn(2, 300, device=DEVICE)
    ws = token_sort_workspace(2, 300)
    perm = torch.empty((2, 300), dtype=torch.int64, device=DEVICE)
    err = lib().dm_token_sort(_ptr(t), _ptr(perm), _ptr(torch.empty_like(perm)), 2, 300, 0, 1, _ptr(ws),
                              ws.numel() - 300, _stream())
    assert err != 0, "a too small workspace must be rejected (cudaErrorInvalidValue)"


# ---- CUDA graphs: no allocation, no synchronisation inside the launchers ----------------------------
def test_cuda_graph_capture():
    lib()
    inp = scan_inputs(1, 288, 3, 16, 3136, F16, seed=9)
    gin = gather_inputs(1, 96, 56, 56, dtype=F16, seed=9)
    t = torch.randn(2, 3136, device=DEVICE)
    ws = token_sort_workspace(2, 3136)
    y = torch.empty_like(inp["u"])
    feat = torch.empty_like(gin["x"])
    perm = torch.empty((2, 3136), dtype=torch.int64, device=DEVICE)
    inv = torch.empty_like(perm)

    def launch_all():
        cuda_selective_scan(**inp, out=y)
        cuda_deform_gather(**gin, out=feat)
        err = lib().dm_token_sort(_ptr(t), _ptr(perm), _ptr(inv), 2, 3136, 0, 1, _ptr(ws), ws.numel(), _stream())
        _check(err, "dm_token_sort")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (CUB caches device properties)
        launch_all()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    y0, f0, p0 = y.clone(), feat.clone(), perm.clone()
    y.zero_(), feat.zero_(), perm.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch_all()
    graph.replay()
    _sync()
    assert torch.equal(y, y0) and torch.equal(feat, f0) and torch.equal(perm, p0)


# ---- ORT CUDA execution provider -------------------------------------------------------------------
def test_ort_cuda_execution_provider():
    if not torch.cuda.is_available():
        skip("no CUDA device")
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as e:
        skip(f"onnx/onnxruntime not installed ({e})")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (needs onnxruntime-gpu)")
    path = find_library("libdefmamba_ort_ops.so", "DEFMAMBA_ORT_LIB", [ROOT / "defmamba_deploy/lib/libdefmamba_ort_ops.so"])
    if path is None or b"CUDAExecutionProvider" not in path.read_bytes():
        skip(f"no CUDA build of libdefmamba_ort_ops.so (looked at {path})")
    F = TensorProto.FLOAT
    node_specs = [
        ("SelectiveScan", [("u", F), ("delta", F), ("A", F), ("B", F), ("C", F), ("D", F), ("delta_bias", F)], [("y", F)]),
        ("DeformGather", [("x", F), ("offset", F), ("rpe_table", F)], [("feat", F)]),
        ("TokenSort", [("token_offset", F)], [("perm", TensorProto.INT64), ("inv_perm", TensorProto.INT64)]),
    ]
    inp = {k: v.cpu().numpy() for k, v in scan_inputs(2, 12, 3, 16, 300, F32, seed=1).items()}
    gin = {k: v.cpu().numpy() for k, v in gather_inputs(2, 8, 14, 14, seed=1).items()}
    feeds_all = {**inp, **gin, "token_offset": (2 * np.random.default_rng(1).standard_normal((2, 3136))).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        for op, ins, outs in node_specs:
            node = helper.make_node(op, [n for n, _ in ins], [n for n, _ in outs], domain="defmamba")
            graph = helper.make_graph([node], op, [helper.make_tensor_value_info(n, t, None) for n, t in ins],
                                      [helper.make_tensor_value_info(n, t, None) for n, t in outs])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("defmamba", 1)])
            feeds = {n: feeds_all[n] for n, _ in ins}
            results = {}
            for ep in ("CPUExecutionProvider", "CUDAExecutionProvider"):
                so = ort.SessionOptions()
                so.register_custom_ops_library(str(path))
                so.enable_profiling = True
                so.profile_file_prefix = str(Path(tmp) / f"{op}_{ep}")
                sess = ort.InferenceSession(model.SerializeToString(), so, providers=[ep])
                if ep not in sess.get_providers():
                    skip(f"{ep} could not be created ({sess.get_providers()})")
                results[ep] = sess.run(None, feeds)
                events = json.loads(Path(sess.end_profiling()).read_text())
                providers = {e["args"]["provider"] for e in events
                             if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == op
                             and "provider" in e["args"]}
                assert providers == {ep}, f"{op} ran on {providers}, expected {ep}"
            for a, b in zip(results["CPUExecutionProvider"], results["CUDAExecutionProvider"]):
                if a.dtype == np.int64:
                    assert (a != b).mean() < 1e-2  # TokenSort: tanh ulp may swap near-ties
                else:
                    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(a).max()))


# ---- benchmark -------------------------------------------------------------------------------------
def _time_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps


def copy_bandwidth_gbps(nbytes=1 << 30):
    """Device-to-device copy bandwidth (bytes read + written per second), the memory-bound yardstick."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
    b = torch.empty_like(a)
    ms = _time_ms(lambda: b.copy_(a), warmup=2, reps=10)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


def benchmark(torch_reference=True, scan_reps=20):
    """Kernel timings (CUDA events, after warm-up) for DefMamba-S shapes at batch 1 and 32.

    Scan: the memory-bandwidth bound is bytes moved (u, delta read, y written, B, C read once, A, D,
    delta_bias) / the measured D2D copy bandwidth; the PyTorch reference (defmamba_deploy.ops,
    float32 compute from the same float16 inputs) runs on the same GPU.
    """
    lib()
    bw = copy_bandwidth_gbps()
    res = {"copy_bandwidth_GBps": bw, "scan": [], "gather": [], "sort": []}
    for stage, (ch, L) in (("stage1", (288, 3136)), ("stage3", (1152, 196))):
        for bt in (1, 32):
            for dtype in (F16, F32):
                inp = scan_inputs(bt, ch, 3, 16, L, dtype, seed=1)
                y = torch.empty_like(inp["u"])
                ms = _time_ms(lambda: cuda_selective_scan(**inp, out=y), reps=scan_reps)
                es = inp["u"].element_size()
                nbytes = es * (3 * bt * ch * L + 2 * bt * 3 * 16 * L) + 4 * (ch * 16 + 2 * ch)
                bound_ms = nbytes / (bw * 1e9) * 1e3
                row = dict(stage=stage, shape=[bt, ch, 3, 16, L], dtype=str(dtype).split(".")[-1],
                           team=team_size(bt * ch, L), kernel_ms=ms, bytes=nbytes, bound_ms=bound_ms,
                           fraction_of_bandwidth=bound_ms / ms,
                           state_updates_per_ns=bt * ch * 16 * L / (ms * 1e6))
                if torch_reference and dtype == F16:
                    row["torch_reference_ms"] = _time_ms(lambda: ref_selective_scan(*inp.values()), warmup=1, reps=3)
                    row["speedup_vs_torch"] = row["torch_reference_ms"] / ms
                res["scan"].append(row)
                print(json.dumps(row), flush=True)
    for bt in (1, 32):
        for ch, h in ((96, 56), (384, 14)):
            gin = gather_inputs(bt, ch, h, h, dtype=F16, seed=1)
            feat = torch.empty_like(gin["x"])
            ms = _time_ms(lambda: cuda_deform_gather(**gin, out=feat))
            nbytes = 2 * (2 * bt * ch * h * h + 2 * bt * h * h + ch * 49)
            row = dict(shape=[bt, ch, h, h], dtype="float16", kernel_ms=ms, bound_ms=nbytes / (bw * 1e9) * 1e3)
            if torch_reference:
                row["torch_reference_ms"] = _time_ms(lambda: ref_deform_gather(*gin.values()), warmup=1, reps=5)
            res["gather"].append(row)
            print(json.dumps(row), flush=True)
    for bt, L in ((1, 3136), (32, 3136), (1, 16384), (1, 65536), (32, 65536)):
        t = torch.randn(bt, L, device=DEVICE)
        ws = token_sort_workspace(bt, L)
        ms = _time_ms(lambda: cuda_token_sort(t, torch.int64, ws))
        row = dict(shape=[bt, L], dtype="float32", kernel_ms=ms, workspace_bytes=ws.numel())
        if torch_reference:
            row["torch_reference_ms"] = _time_ms(lambda: ref_token_sort(t), warmup=1, reps=5)
        res["sort"].append(row)
        print(json.dumps(row), flush=True)
    return res


def device_info():
    props = torch.cuda.get_device_properties(0)
    info = dict(name=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                memory_GiB=round(props.total_memory / 2**30, 1), torch=torch.__version__, torch_cuda=torch.version.cuda)
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else q.stderr.strip()
    except Exception as e:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable: {e}"
    return info


def selftest():
    """Runs the tests without pytest; returns (passed, failed, skipped) lists."""
    global _SELFTEST
    _SELFTEST = True
    passed, failed, skipped = [], [], []
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    for name, fn in tests:
        params = getattr(fn, "_dm_params", None)
        calls = [(f"{name}[{i}]", {params[0]: v}) for i, v in enumerate(params[1])] if params else [(name, {})]
        for label, kwargs in calls:
            try:
                fn(**kwargs)
                passed.append(label)
                print("PASS", label, flush=True)
            except Skipped as e:
                skipped.append(f"{label}: {e}")
                print("SKIP", label, e, flush=True)
            except Exception as e:  # noqa: BLE001
                failed.append(f"{label}: {type(e).__name__}: {e}")
                print("FAIL", label, type(e).__name__, e, flush=True)
    return passed, failed, skipped


def main(argv):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["bench", "selftest"])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--no-torch-reference", action="store_true", help="bench: skip timing the PyTorch reference")
    ap.add_argument("--extra", action="append", default=[], help="KEY=FILE: embed a text file in the JSON")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE: add a string to the JSON")
    args = ap.parse_args(argv)
    global _SELFTEST
    _SELFTEST = True  # skips raise Skipped (not pytest's outcome exception)
    out = {"device": device_info() if torch.cuda.is_available() else None}
    for kv in args.set:
        k, _, v = kv.partition("=")
        out[k] = v
    rc = 0
    if args.command == "selftest":
        p, f, s = selftest()
        out["selftest"] = dict(passed=len(p), failed=f, skipped=s)
        rc = 1 if f else 0
    else:
        t0 = time.time()
        try:
            out["bench"] = benchmark(torch_reference=not args.no_torch_reference)
        except Skipped as e:
            out["bench_skipped"] = str(e)
            rc = 1
        out["bench_seconds"] = round(time.time() - t0, 1)
    for kv in args.extra:
        k, _, f = kv.partition("=")
        out[k] = Path(f).read_text(errors="replace")[-20000:] if Path(f).is_file() else None
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out if args.command == "selftest" else {"device": out["device"]}, indent=2, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
