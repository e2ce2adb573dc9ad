"""ONNX Runtime custom ops (libdefmamba_ort_ops.so) against float64 NumPy references.

Every test builds a single-node ONNX model (domain ``defmamba``, opset 1), runs it on the CPU
execution provider with the library registered, and compares with a naive NumPy implementation of
the contract in ``plugins/<op>/README.md`` written here, independently of the C++ code.

Build the library first (the tests skip with that hint when it is missing)::

    bash scripts/fetch_ort_headers.sh
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

LIB = Path(__file__).resolve().parents[2] / "defmamba_deploy" / "lib" / "libdefmamba_ort_ops.so"
BUILD_HINT = (
    "bash scripts/fetch_ort_headers.sh && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "
    "&& cmake --build build -j2"
)

F32, F16, F64, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64
NP_OF = {F32: np.float32, F16: np.float16, F64: np.float64}


@pytest.fixture(scope="module", autouse=True)
def _require_library():
    if not LIB.is_file():
        pytest.skip(f"{LIB} is not built; build it with: {BUILD_HINT}")


# ---- model helpers -------------------------------------------------------------------------------
def make_session(op, inputs, outputs, threads=0, **attrs):
    """One-node model; inputs/outputs are (name, elem_type); all shapes are left unknown so that
    shape errors are raised by the op at run time."""
    node = helper.make_node(op, [n for n, _ in inputs], [n for n, _ in outputs], domain="defmamba", **attrs)
    graph = helper.make_graph(
        [node],
        f"{op}_test",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("defmamba", 1)]
    )
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(LIB))
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def scan_session(t=F32, threads=0, **attrs):
    ins = [("u", t), ("delta", t), ("A", F32), ("B", t), ("C", t), ("D", F32), ("delta_bias", F32)]
    return make_session("SelectiveScan", ins, [("y", t)], threads=threads, **attrs)


def gather_session(t=F32):
    return make_session("DeformGather", [("x", t), ("offset", t), ("rpe_table", t)], [("feat", t)])


def sort_session(t=F32):
    return make_session("TokenSort", [("token_offset", t)], [("perm", I64), ("inv_perm", I64)])


# ---- SelectiveScan -------------------------------------------------------------------------------
def ref_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """Per-token loop in float64 (contract: plugins/selective_scan/README.md)."""
    u, delta, A, B, C, D, bias = (np.asarray(a, np.float64) for a in (u, delta, A, B, C, D, delta_bias))
    bt, ch, L = u.shape
    g = B.shape[1]
    grp = np.arange(ch) // (ch // g)  # channel c uses group c / (Ch / G)
    Bc, Cc = B[:, grp], C[:, grp]  # (Bt, Ch, N, L)
    dt = delta + bias[None, :, None]
    if delta_softplus:
        with np.errstate(over="ignore"):
            dt = np.where(dt > 20.0, dt, np.log1p(np.exp(np.minimum(dt, 20.0))))
    h = np.zeros((bt, ch, A.shape[1]))
    y = np.empty_like(u)
    for t in range(L):
        d = dt[:, :, t, None]
        h = np.exp(d * A[None]) * h + d * Bc[..., t] * u[:, :, t, None]
        y[:, :, t] = np.einsum("bcn,bcn->bc", Cc[..., t], h) + D[None] * u[:, :, t]
    return y


def scan_inputs(rng, bt, ch, g, n, L, dtype=np.float32):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    delta = f(bt, ch, L) - 1.0
    if L >= 4:  # exercise both sides of the softplus threshold (dt > 20 is passed through)
        delta[..., 0] = 25.0
        delta[..., 1] = -30.0
    feeds = dict(
        u=f(bt, ch, L),
        delta=delta,
        A=-np.exp(f(ch, n)),  # A = -exp(A_logs) < 0
        B=f(bt, g, n, L),
        C=f(bt, g, n, L),
        D=f(ch),
        delta_bias=0.5 * f(ch),
    )
    for k in ("u", "delta", "B", "C"):
        feeds[k] = feeds[k].astype(dtype)
    return feeds


def assert_scan_close(y, ref, out_rel=0.0):
    # float32 recurrence vs float64: every step rounds at ~6e-8 relative, exp/log1p are <= 2 ulp, the
    # state decays (exp(dt*A) < 1) so rounding errors do not build up, and the 16-term dot product
    # adds a few ulp of the output scale. The observed error is ~1e-7 of the output scale; 1e-4 of the
    # scale leaves margin for long sequences, while any indexing/semantic bug gives O(1) errors.
    # out_rel: extra relative error of the output dtype (float16 rounding).
    ref = np.asarray(ref, np.float64)
    y = np.asarray(y, np.float64)
    assert np.all(np.isfinite(y))
    scale = max(1.0, float(np.max(np.abs(ref))))
    err = np.abs(y - ref)
    bound = 1e-4 * scale + out_rel * np.abs(ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"max excess at {worst}: |{y[worst]} - {ref[worst]}| > {bound[worst]}"


SCAN_SHAPES = [  # (Bt, Ch, G, N, L)
    (1, 6, 3, 16, 1),  # L = 1
    (2, 6, 3, 16, 37),  # batch > 1, G = 3
    (3, 4, 1, 16, 64),  # G = 1
    (2, 12, 3, 16, 100),
    (1, 6, 2, 5, 33),  # N != 16 (generic path)
    (2, 3, 3, 1, 20),  # one channel per group, N = 1
    (1, 6, 3, 16, 16384),  # long sequence (DefMamba at 512x512: L = 16384)
]


@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=lambda s: "Bt{}_Ch{}_G{}_N{}_L{}".format(*s))
def test_selective_scan_f32(shape):
    rng = np.random.default_rng(sum(shape))
    feeds = scan_inputs(rng, *shape)
    (y,) = scan_session().run(None, feeds)
    assert y.shape == feeds["u"].shape and y.dtype == np.float32
    assert_scan_close(y, ref_selective_scan(**feeds))


@pytest.mark.parametrize("softplus", [0, 1])
def test_selective_scan_attribute(softplus):
    rng = np.random.default_rng(7)
    feeds = scan_inputs(rng, 2, 6, 3, 16, 50)
    if not softplus:  # keep dt >= 0 so that the state stays bounded
        feeds["delta"] = np.abs(feeds["delta"]) * 0.1
        feeds["delta_bias"] = np.abs(feeds["delta_bias"]) * 0.1
    (y,) = scan_session(delta_softplus=softplus).run(None, feeds)
    assert_scan_close(y, ref_selective_scan(**feeds, delta_softplus=bool(softplus)))


def test_selective_scan_default_attribute_is_softplus():
    rng = np.random.default_rng(8)
    feeds = scan_inputs(rng, 1, 6, 3, 16, 40)
    (y_default,) = scan_session().run(None, feeds)
    (y_one,) = scan_session(delta_softplus=1).run(None, feeds)
    np.testing.assert_array_equal(y_default, y_one)


@pytest.mark.parametrize("shape", [(1, 6, 3, 16, 1), (2, 6, 3, 16, 77), (1, 4, 1, 16, 3000), (1, 3, 1, 7, 50)])
def test_selective_scan_f16(shape):
    rng = np.random.default_rng(11 + sum(shape))
    feeds = scan_inputs(rng, *shape, dtype=np.float16)
    (y,) = scan_session(F16).run(None, feeds)
    assert y.dtype == np.float16
    # The reference sees the same float16 inputs (upcast exactly). The kernel computes in float32 and
    # rounds y once to float16: at most half an ulp, 2^-11 relative (fp16 subnormals, |y| < 6e-5, are
    # covered by the absolute term). On top of that the float32 compute error bound of the f32 test.
    assert_scan_close(y, ref_selective_scan(**feeds), out_rel=2.0**-11)


def test_selective_scan_threads_deterministic():
    rng = np.random.default_rng(3)
    feeds = scan_inputs(rng, 2, 24, 3, 16, 300)
    (y1,) = scan_session(threads=1).run(None, feeds)
    (y2,) = scan_session(threads=2).run(None, feeds)
    np.testing.assert_array_equal(y1, y2)  # each channel is computed the same way on any thread


def test_selective_scan_empty_length():
    rng = np.random.default_rng(4)
    feeds = scan_inputs(rng, 1, 6, 3, 16, 0)
    (y,) = scan_session().run(None, feeds)
    assert y.shape == (1, 6, 0)


def _run_expect_error(sess, feeds, pattern):
    with pytest.raises(Exception, match=pattern):
        sess.run(None, feeds)


def test_selective_scan_errors():
    rng = np.random.default_rng(5)
    sess = scan_session()
    good = scan_inputs(rng, 1, 6, 3, 16, 10)
    # wrong rank
    _run_expect_error(sess, {**good, "u": good["u"][0]}, r"SelectiveScan: input 'u' must have shape \(Bt, Ch, L\)")
    _run_expect_error(sess, {**good, "A": good["A"][None]}, r"SelectiveScan: input 'A' must have shape \(Ch, N\)")
    # mismatched L
    _run_expect_error(sess, {**good, "B": good["B"][..., :9]}, r"SelectiveScan: input 'B' must have shape \(Bt, G, N, L\)")
    _run_expect_error(sess, {**good, "delta": good["delta"][..., :9]}, r"SelectiveScan: input 'delta' must have shape")
    _run_expect_error(sess, {**good, "C": good["C"][:, :, :8]}, r"SelectiveScan: input 'C' must have shape")
    # Ch not divisible by G
    bad = scan_inputs(rng, 1, 10, 3, 16, 10)
    _run_expect_error(sess, bad, r"SelectiveScan: Ch = 10 .* must be divisible by G = 3")
    _run_expect_error(sess, {**good, "D": good["D"][:5]}, r"SelectiveScan: input 'D' must have shape \(Ch,\)")


def test_selective_scan_bad_attribute():
    with pytest.raises(Exception, match=r"SelectiveScan: attribute 'delta_softplus' must be 0 or 1, got 2"):
        scan_session(delta_softplus=2)
    with pytest.raises(Exception, match=r"SelectiveScan: attribute 'reverse' must hold 0 or 1 per group, got 2"):
        scan_session(reverse=[0, 2, 0])
    with pytest.raises(Exception, match=r"SelectiveScan: attribute 'reverse' must be a list of ints, got an int"):
        scan_session(reverse=1)
    rng = np.random.default_rng(6)
    feeds = scan_inputs(rng, 1, 6, 3, 16, 10)
    _run_expect_error(scan_session(reverse=[0, 1]), feeds,
                      r"SelectiveScan: attribute 'reverse' has 2 entries but the inputs have G = 3 groups")


def test_selective_scan_reverse_matches_flipped_forward():
    """A reversed group is exactly (bit for bit) the flipped forward scan of flipped inputs."""
    rng = np.random.default_rng(9)
    feeds = scan_inputs(rng, 2, 48, 3, 16, 300)
    (y_rev,) = scan_session(reverse=[0, 1, 0]).run(None, feeds)
    flipped = dict(feeds)
    cg = 16
    for k in ("u", "delta"):
        flipped[k] = feeds[k].copy()
        flipped[k][:, cg:2 * cg] = feeds[k][:, cg:2 * cg, ::-1]
    for k in ("B", "C"):
        flipped[k] = feeds[k].copy()
        flipped[k][:, 1] = feeds[k][:, 1, :, ::-1]
    (y_fwd,) = scan_session().run(None, flipped)
    np.testing.assert_array_equal(y_rev[:, cg:2 * cg], y_fwd[:, cg:2 * cg, ::-1])
    np.testing.assert_array_equal(y_rev[:, :cg], y_fwd[:, :cg])
    np.testing.assert_array_equal(y_rev[:, 2 * cg:], y_fwd[:, 2 * cg:])


# ---- DeformGather --------------------------------------------------------------------------------
def ref_resize_bilinear(table, out_h, out_w):
    """F.interpolate(table[None], (out_h, out_w), mode='bilinear', align_corners=False), with the
    source index rule of the contract evaluated in float32."""

    def taps(n_out, n_in):
        scale = np.float32(n_in) / np.float32(n_out)
        src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
        src = np.maximum(src, np.float32(0.0))
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = (src - i0.astype(np.float32)).astype(np.float64)
        return i0, i1, lam

    t = np.asarray(table, np.float64)
    y0, y1, ly = taps(out_h, t.shape[1])
    x0, x1, lx = taps(out_w, t.shape[2])
    rows = t[:, y0] * (1 - ly)[None, :, None] + t[:, y1] * ly[None, :, None]
    return rows[:, :, x0] * (1 - lx)[None, None, :] + rows[:, :, x1] * lx[None, None, :]


def ref_bilinear_zero(img, py, px):
    """Bilinear sample, zero padding, positions in pixels (align_corners=True).
    img: (Bt, Ch, h, w); py, px: (Bt, H, W) -> (Bt, Ch, H, W)."""
    bt, ch, h, w = img.shape
    y0, x0 = np.floor(py), np.floor(px)
    out = np.zeros((bt, ch) + py.shape[1:])
    b = np.arange(bt)[:, None, None]
    for yy, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
        for xx, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            yi = np.where(valid, yy, 0).astype(np.int64)  # NaN positions: index 0, weight NaN
            xi = np.where(valid, xx, 0).astype(np.int64)
            vals = img[b, :, yi, xi]  # (Bt, H, W, Ch)
            out += np.moveaxis(vals * (wy * wx * valid)[..., None], -1, 1)
    return out


def ref_deform_gather(x, offset, rpe_table):
    """float64 reference of plugins/deform_gather/README.md (no grid_sample)."""
    x = np.asarray(x, np.float64)
    off = np.asarray(offset, np.float64)
    bt, ch, H, W = x.shape
    i = np.arange(H, dtype=np.float64)[None, :, None]
    j = np.arange(W, dtype=np.float64)[None, None, :]
    pos_y = (i + 0.5) / (H - 1) * 2 - 1 + np.tanh(off[:, 0]) / (H - 1)
    pos_x = (j + 0.5) / (W - 1) * 2 - 1 + np.tanh(off[:, 1]) / (W - 1)
    key_y = (i * H / (H - 1)) / (H - 1) * 2 - 1
    key_x = (j * W / (W - 1)) / (W - 1) * 2 - 1
    unnorm = lambda c, n: (c + 1) / 2 * (n - 1)  # noqa: E731  align_corners=True
    sampled = ref_bilinear_zero(x, unnorm(pos_y, H), unnorm(pos_x, W))
    table = ref_resize_bilinear(rpe_table, H, W)
    ty = unnorm((key_y - pos_y) * 0.5, H)
    tx = unnorm((key_x - pos_x) * 0.5, W)
    bias = ref_bilinear_zero(np.broadcast_to(table[None], (bt,) + table.shape), ty, tx)
    return sampled + bias


def gather_inputs(rng, bt, ch, H, W, K=3, th=7, tw=7, dtype=np.float32, off_scale=2.0):
    return dict(
        x=rng.standard_normal((bt, ch, H, W)).astype(dtype),
        offset=(off_scale * rng.standard_normal((bt, K, H, W))).astype(dtype),
        rpe_table=rng.standard_normal((ch, th, tw)).astype(dtype),
    )


def assert_gather_close(feat, ref, x, out_rel=0.0):
    # The kernel computes the sample positions in float32 like PyTorch does: pos in [-1, 1] carries
    # ~2^-24 relative rounding, i.e. ~size * 2^-24 px after unnormalising, so the sampled value is off
    # by up to (pixel-to-pixel slope of x) * size * 2^-23 (observed 1.9e-5 at 56x56 with N(0,1) data).
    # The tolerance is that bound (floor 1e-5): far below any semantic error (half a pixel, swapped
    # dy/dx, wrong resize rule), which moves values by O(slope).
    x = np.asarray(x, np.float64)
    slope = max(np.abs(np.diff(x, axis=-1)).max(initial=0.0), np.abs(np.diff(x, axis=-2)).max(initial=0.0))
    atol = max(1e-5, 2.0 * slope * max(x.shape[-2:]) * 2.0**-23)
    err = np.abs(np.asarray(feat, np.float64) - ref)
    assert np.all(err <= atol + out_rel * np.abs(ref)), f"max error {err.max():.3g} > {atol:.3g}"


GATHER_SHAPES = [  # (Bt, Ch, H, W, K, Th, Tw)
    (1, 4, 2, 2, 2, 7, 7),  # smallest map
    (2, 5, 7, 7, 3, 7, 7),  # odd, batch > 1 (stage 4 at 224)
    (1, 3, 14, 14, 3, 7, 7),
    (2, 3, 5, 9, 3, 7, 7),  # non-square, odd
    (1, 2, 10, 4, 3, 3, 5),  # non-square table, taller than wide
    (1, 2, 56, 56, 3, 7, 7),  # stage 1 at 224
    (1, 3, 6, 8, 4, 1, 1),  # 1x1 table, extra offset channel
    (1, 2, 128, 96, 3, 7, 7),  # large map (stage 1 at 512x384)
]


@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=lambda s: "Bt{}_Ch{}_H{}_W{}_K{}_T{}x{}".format(*s))
def test_deform_gather_f32(shape):
    bt, ch, H, W, K, th, tw = shape
    rng = np.random.default_rng(sum(shape))
    feeds = gather_inputs(rng, bt, ch, H, W, K, th, tw)
    (feat,) = gather_session().run(None, feeds)
    assert feat.shape == (bt, ch, H, W) and feat.dtype == np.float32
    assert_gather_close(feat, ref_deform_gather(**feeds), feeds["x"])


def test_deform_gather_saturated_offsets():
    # |offset| large -> tanh = +-1: sample positions exactly on pixel boundaries, incl. the border rows
    rng = np.random.default_rng(21)
    feeds = gather_inputs(rng, 2, 3, 6, 5, off_scale=50.0)
    (feat,) = gather_session().run(None, feeds)
    assert_gather_close(feat, ref_deform_gather(**feeds), feeds["x"])


def test_deform_gather_nan_offset():
    rng = np.random.default_rng(25)
    feeds = gather_inputs(rng, 1, 3, 5, 6)
    feeds["offset"][0, 0, 2, 3] = np.nan
    (feat,) = gather_session().run(None, feeds)
    ref = ref_deform_gather(**feeds)
    assert np.all(np.isnan(feat[0, :, 2, 3])) and np.all(np.isnan(ref[0, :, 2, 3]))  # like grid_sample
    feat[0, :, 2, 3] = ref[0, :, 2, 3] = 0.0
    assert_gather_close(feat, ref, feeds["x"])


def test_deform_gather_f16():
    rng = np.random.default_rng(22)
    feeds = gather_inputs(rng, 2, 3, 9, 7, dtype=np.float16)
    (feat,) = gather_session(F16).run(None, feeds)
    assert feat.dtype == np.float16
    # same float16 inputs (upcast); float32 compute as above + one float16 rounding of the output
    assert_gather_close(feat, ref_deform_gather(**feeds), feeds["x"], out_rel=2.0**-11)


def test_deform_gather_errors():
    rng = np.random.default_rng(23)
    sess = gather_session()
    good = gather_inputs(rng, 1, 3, 5, 6)
    _run_expect_error(sess, {**good, "x": good["x"][0]}, r"DeformGather: input 'x' must have shape \(Bt, Ch, H, W\)")
    _run_expect_error(sess, gather_inputs(rng, 1, 3, 1, 6), r"DeformGather: input 'x' must have H >= 2 and W >= 2")
    _run_expect_error(sess, {**good, "offset": good["offset"][:, :1]}, r"DeformGather: input 'offset' must have K >= 2")
    _run_expect_error(sess, {**good, "offset": good["offset"][..., :5]}, r"DeformGather: input 'offset' must have shape \(Bt, K, H, W\)")
    _run_expect_error(sess, {**good, "rpe_table": good["rpe_table"][:2]}, r"DeformGather: input 'rpe_table' must have shape \(Ch, Th, Tw\)")


def test_reference_matches_torch():
    """Cross-check of the NumPy references above against PyTorch's grid_sample / interpolate (the
    official DefMamba code path), so that the op tests rest on an independently checked reference."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(24)
    feeds = gather_inputs(rng, 2, 3, 9, 6)
    x = torch.from_numpy(feeds["x"]).double()
    off = torch.from_numpy(feeds["offset"]).double()
    tab = torch.from_numpy(feeds["rpe_table"]).float()
    bt, ch, H, W = x.shape
    ry = (torch.arange(H, dtype=torch.float64) + 0.5) / (H - 1) * 2 - 1
    rx = (torch.arange(W, dtype=torch.float64) + 0.5) / (W - 1) * 2 - 1
    pos_y = ry[None, :, None] + torch.tanh(off[:, 0]) / (H - 1)
    pos_x = rx[None, None, :] + torch.tanh(off[:, 1]) / (W - 1)
    sampled = F.grid_sample(x, torch.stack([pos_x, pos_y], -1), mode="bilinear", padding_mode="zeros", align_corners=True)
    resized = F.interpolate(tab[None], size=(H, W), mode="bilinear", align_corners=False)[0].double()
    np.testing.assert_allclose(ref_resize_bilinear(feeds["rpe_table"], H, W), resized.numpy(), rtol=1e-6, atol=1e-6)
    ky = torch.linspace(0, H, H, dtype=torch.float64) / (H - 1) * 2 - 1
    kx = torch.linspace(0, W, W, dtype=torch.float64) / (W - 1) * 2 - 1
    disp = torch.stack([(kx[None, None, :] - pos_x) * 0.5, (ky[None, :, None] - pos_y) * 0.5], -1)
    bias = F.grid_sample(resized[None].expand(bt, -1, -1, -1), disp, mode="bilinear", padding_mode="zeros", align_corners=True)
    np.testing.assert_allclose(ref_deform_gather(**feeds), (sampled + bias).numpy(), rtol=1e-6, atol=1e-6)


# ---- TokenSort -----------------------------------------------------------------------------------
def ref_token_sort_keys(t):
    """Sort key of the contract, in float32 for float32/float16 input, float64 for float64 input."""
    t = np.asarray(t)
    kt = np.float64 if t.dtype == np.float64 else np.float32
    L = t.shape[-1]
    ref = ((np.arange(L, dtype=kt) + kt(0.5)) / kt(max(L - 1, 1)) * kt(2) - kt(1)).astype(kt)
    return (np.tanh(t.astype(kt)) + ref).astype(kt)


def ref_token_sort(t):
    keys = ref_token_sort_keys(t)
    perm = np.argsort(keys, axis=-1, kind="stable")
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.arange(perm.shape[-1])[None].repeat(perm.shape[0], 0), axis=-1)
    return keys, perm, inv


def check_sort(t, perm, inv, exact):
    keys, perm_ref, _ = ref_token_sort(t)
    bt, L = t.shape
    assert perm.dtype == np.int64 and inv.dtype == np.int64 and perm.shape == inv.shape == (bt, L)
    for b in range(bt):
        assert sorted(perm[b].tolist()) == list(range(L)), "perm is not a permutation"
        np.testing.assert_array_equal(inv[b][perm[b]], np.arange(L))  # inv_perm[perm[j]] = j
    if exact:
        np.testing.assert_array_equal(perm, perm_ref)
        return
    # tanh in libm and in NumPy may differ by 1 ulp, which can swap two keys that are within an ulp or
    # two of each other (this happens a few times per 10^4 tokens). Elsewhere the order must match.
    k = keys.astype(np.float64)
    got = np.take_along_axis(k, perm, -1)
    want = np.take_along_axis(k, perm_ref, -1)
    ulp2 = 2 * np.spacing(np.abs(want).astype(keys.dtype)).astype(np.float64)
    assert np.all(np.abs(got - want) <= ulp2), "order differs beyond near-ties"
    assert np.all(np.diff(got, axis=-1) >= -ulp2[:, 1:]), "keys not ascending"
    differ = perm != perm_ref
    assert differ.mean() < 1e-3, f"{differ.sum()} positions differ"


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 17), (2, 49), (1, 196), (4, 3136), (2, 16384)])
def test_token_sort_f32(shape):
    rng = np.random.default_rng(shape[1])
    t = (2.0 * rng.standard_normal(shape)).astype(np.float32)
    perm, inv = sort_session().run(None, {"token_offset": t})
    check_sort(t, perm, inv, exact=shape[1] <= 196)


@pytest.mark.parametrize("L", [5, 17, 257, 16385])
def test_token_sort_exact_ties(L):
    # L - 1 a power of two makes the reference term (l + 0.5)/(L - 1)*2 - 1 exact in float32, and
    # offsets 0 / +-20 make tanh exactly 0 / +-1 in any libm, so many keys are exactly equal
    # (r[l] + 1 == r[l + (L-1)/2] == r[l + L - 1] - 1): the stable order is the only right answer.
    rng = np.random.default_rng(L)
    t = rng.choice(np.array([-20.0, 0.0, 20.0], np.float32), size=(3, L))
    half = (L - 1) // 2
    t[0, :half], t[0, half:] = 20.0, 0.0  # keys of l and l + (L-1)/2 tie for every l < (L-1)/2
    keys = ref_token_sort_keys(t)
    assert len(np.unique(keys[0])) <= L - half  # really many exact ties
    perm, inv = sort_session().run(None, {"token_offset": t})
    check_sort(t, perm, inv, exact=True)


def test_token_sort_f16_f64():
    rng = np.random.default_rng(31)
    t32 = (2.0 * rng.standard_normal((2, 300))).astype(np.float32)
    t16 = t32.astype(np.float16)  # key still computed in float32 from the float16 values
    perm, inv = sort_session(F16).run(None, {"token_offset": t16})
    check_sort(t16, perm, inv, exact=False)
    t64 = t32.astype(np.float64) + 1e-9 * rng.standard_normal((2, 300))
    perm, inv = sort_session(F64).run(None, {"token_offset": t64})
    check_sort(t64, perm, inv, exact=False)


def test_token_sort_errors():
    sess = sort_session()
    with pytest.raises(Exception, match=r"TokenSort: input 'token_offset' must have shape \(Bt, L\)"):
        sess.run(None, {"token_offset": np.zeros((2, 3, 4), np.float32)})
    with pytest.raises(Exception, match=r"TokenSort: input 'token_offset' must have shape \(Bt, L\)"):
        sess.run(None, {"token_offset": np.zeros((5,), np.float32)})
