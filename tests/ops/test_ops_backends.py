"""Each op through every ONNX Runtime form (custom-op library, portable expansion) vs the PyTorch reference.

Uses the same one-node models as the op benchmark (``defmamba_deploy.onnx.single_op``), with all
dims symbolic, so one model per op serves every shape here.
"""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from defmamba_deploy.onnx.portable import expand_custom_ops
from defmamba_deploy.onnx.single_op import single_op_model
from defmamba_deploy.ops import REFERENCE
from defmamba_deploy.ops.token_sort import sort_key
from defmamba_deploy.libs import find_library

BACKENDS = ["ort", "ort-portable"]


def session(op, arrays, backend, **attrs):
    model = single_op_model(op, arrays, **attrs)
    so = ort.SessionOptions()
    if backend == "ort":
        lib = find_library("ort", required=False)
        if lib is None:
            pytest.skip("libdefmamba_ort_ops.so is not built (bash scripts/build_plugins.sh)")
        so.register_custom_ops_library(str(lib))
    else:
        model = expand_custom_ops(model, 17)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def rnd(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


SCAN = [(1, 3, 3, 16, 1), (2, 6, 3, 4, 2), (1, 6, 1, 5, 37), (3, 9, 3, 16, 200), (1, 48, 3, 16, 3136), (1, 6, 3, 16, 16384)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bt,ch,g,n,length", SCAN)
def test_selective_scan(backend, bt, ch, g, n, length):
    rng = np.random.default_rng(length)
    a = {"u": rnd(rng, bt, ch, length), "delta": rnd(rng, bt, ch, length) - 1, "A": -np.exp(rnd(rng, ch, n) * 0.5),
         "B": rnd(rng, bt, g, n, length), "C": rnd(rng, bt, g, n, length), "D": rnd(rng, ch), "delta_bias": rnd(rng, ch) * 0.3}
    out = session("SelectiveScan", a, backend, delta_softplus=1).run(None, a)[0]
    t = {k: torch.from_numpy(v).double() for k, v in a.items()}
    ref = REFERENCE["selective_scan"](t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True).numpy()
    # float32 recurrence vs float64 reference: rounding grows with L; 5e-5 of the output scale is ~400 ulp
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-5 * np.abs(ref).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bt,ch,g,n,length,reverse", [(1, 3, 3, 16, 1, (0, 1, 0)), (2, 6, 3, 4, 37, (0, 1, 1)),
                                                      (1, 6, 1, 5, 65, (1,)), (2, 9, 3, 16, 200, (1, 0, 1)),
                                                      (1, 48, 3, 16, 3136, (0, 1, 0))])
def test_selective_scan_reverse(backend, bt, ch, g, n, length, reverse):
    rng = np.random.default_rng(length + 1)
    a = {"u": rnd(rng, bt, ch, length), "delta": rnd(rng, bt, ch, length) - 1, "A": -np.exp(rnd(rng, ch, n) * 0.5),
         "B": rnd(rng, bt, g, n, length), "C": rnd(rng, bt, g, n, length), "D": rnd(rng, ch), "delta_bias": rnd(rng, ch) * 0.3}
    out = session("SelectiveScan", a, backend, delta_softplus=1, reverse=list(reverse)).run(None, a)[0]
    t = {k: torch.from_numpy(v).double() for k, v in a.items()}
    ref = REFERENCE["selective_scan"](t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True,
                                      reverse).numpy()
    # as test_selective_scan; a group scanned in the wrong direction is off by O(1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-5 * np.abs(ref).max())


GATHER = [(1, 1, 2, 2), (2, 3, 5, 7), (1, 4, 7, 3), (2, 8, 14, 14), (1, 96, 56, 56)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bt,ch,h,w", GATHER)
def test_deform_gather(backend, bt, ch, h, w):
    rng = np.random.default_rng(h * w)
    a = {"x": rnd(rng, bt, ch, h, w), "offset": rnd(rng, bt, 3, h, w) * 2, "rpe_table": rnd(rng, ch, 7, 7)}
    out = session("DeformGather", a, backend).run(None, a)[0]
    t = {k: torch.from_numpy(v).double() for k, v in a.items()}
    ref = REFERENCE["deform_gather"](t["x"], t["offset"], t["rpe_table"]).numpy()
    # sample positions are float32 in every backend: an ulp of position (~2^-23 * size) times the
    # image slope (|x| <~ 4 per pixel) bounds the error at 56 px to a few 1e-5
    np.testing.assert_allclose(out, ref, rtol=0, atol=max(1e-5, 4 * 2.0**-23 * max(h, w) * 8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bt,length,scale", [(1, 1, 1.0), (2, 2, 1.0), (3, 49, 1.0), (2, 3136, 1.0), (4, 16384, 1e-3)])
def test_token_sort(backend, bt, length, scale):
    rng = np.random.default_rng(length)
    a = {"token_offset": rnd(rng, bt, length) * np.float32(scale)}
    perm, inv = session("TokenSort", a, backend).run(None, a)
    assert perm.dtype == np.int64 and inv.dtype == np.int64
    ref_perm, _ = REFERENCE["token_sort"](torch.from_numpy(a["token_offset"]))
    key = sort_key(torch.from_numpy(a["token_offset"])).numpy()
    np.testing.assert_array_equal(np.take_along_axis(inv, perm, -1), np.broadcast_to(np.arange(length), perm.shape))
    # equal to the reference except where tanh's last bit differs between libraries and swaps
    # two keys within 2 ulp (docs/model.md, Token sort: such near-ties occur); those keys must still be in order
    sorted_key = np.take_along_axis(key, perm, -1)
    assert (np.diff(sorted_key, axis=-1) >= -2.5e-7).all()
    mismatch = perm != ref_perm.numpy()
    assert mismatch.mean() < 1e-3, f"{mismatch.sum()} positions differ from the reference"
