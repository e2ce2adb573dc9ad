"""defmamba_deploy.ops against the independent naive versions in naive_ops.py."""
import numpy as np
import pytest
import torch

import naive_ops
from defmamba_deploy.ops import apply_permutation, deform_gather, selective_scan, token_sort
from defmamba_deploy.ops.token_sort import sort_key
import sys

ss_mod = sys.modules["defmamba_deploy.ops.selective_scan"]  # the module (the package re-exports the function)


def scan_inputs(bt, ch, g, n, length, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(u=r(bt, ch, length).to(dtype), delta=r(bt, ch, length).to(dtype) - 1,
                A=-torch.rand(ch, n, generator=gen) * 4, B=r(bt, g, n, length).to(dtype), C=r(bt, g, n, length).to(dtype),
                D=r(ch), delta_bias=r(ch) * 0.5)


SCAN_SHAPES = [  # (Bt, Ch, G, N, L)
    (1, 3, 3, 4, 1), (2, 6, 3, 16, 1), (1, 4, 1, 3, 2), (2, 6, 2, 5, 33), (3, 9, 3, 16, 50), (1, 12, 3, 8, 257), (2, 6, 3, 4, 1000),
]


@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=[f"B{s[0]}C{s[1]}G{s[2]}N{s[3]}L{s[4]}" for s in SCAN_SHAPES])
def test_selective_scan_matches_per_token_loop(shape):
    args = scan_inputs(*shape)
    ref = naive_ops.selective_scan(**{k: v.numpy() for k, v in args.items()})
    out64 = selective_scan(**{k: v.double() for k, v in args.items()})
    np.testing.assert_allclose(out64.numpy(), ref, rtol=1e-10, atol=1e-10)
    out = selective_scan(**args)
    assert out.dtype == torch.float32 and out.shape == args["u"].shape
    # float32 rounding accumulates over L steps; 2e-5 of the output scale is ~100 ulp
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))


def test_selective_scan_options():
    args = scan_inputs(2, 6, 3, 4, 40)
    del args["D"], args["delta_bias"]
    args["delta"] = args["delta"].abs()  # without softplus keep dt > 0 like a real model
    ref = naive_ops.selective_scan(**{k: v.numpy() for k, v in args.items()}, delta_softplus=False)
    out = selective_scan(**{k: v.double() for k, v in args.items()}, delta_softplus=False)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_selective_scan_half_io_computes_in_float32():
    args = scan_inputs(1, 6, 3, 16, 300)
    half = {k: (v.half() if k in ("u", "delta", "B", "C") else v) for k, v in args.items()}
    out = selective_scan(**half)
    assert out.dtype == torch.float16
    ref = naive_ops.selective_scan(**{k: v.float().numpy() for k, v in half.items()})
    # inputs are exactly the fp16 values, the only fp16 rounding is the output's (2^-11 relative)
    np.testing.assert_allclose(out.float().numpy(), ref, rtol=2e-3, atol=2e-3)


def test_selective_scan_work_splitting(monkeypatch):
    """Large problems are split over batch/channels; the result must not change."""
    args = scan_inputs(3, 12, 3, 4, 100)
    full = selective_scan(**args)
    monkeypatch.setattr(ss_mod, "_MAX_WORK_ELEMENTS", 12 * 100 * 4)  # one batch item at a time
    torch.testing.assert_close(selective_scan(**args), full, rtol=0, atol=0)
    monkeypatch.setattr(ss_mod, "_MAX_WORK_ELEMENTS", 3 * 100 * 4)  # one channel per group at a time
    torch.testing.assert_close(selective_scan(**args), full, rtol=0, atol=0)


@pytest.mark.parametrize("shape,reverse", [((2, 6, 3, 16, 33), (0, 1, 0)), ((1, 6, 3, 4, 1), (1, 1, 1)),
                                           ((2, 4, 2, 5, 50), (1, 0)), ((1, 3, 1, 8, 257), (1,))])
def test_selective_scan_reverse_groups(shape, reverse):
    """A flagged group runs t = L-1 .. 0 (the naive loop iterates backwards: no flips there)."""
    args = scan_inputs(*shape)
    ref = naive_ops.selective_scan(**{k: v.numpy() for k, v in args.items()}, reverse=reverse)
    out64 = selective_scan(**{k: v.double() for k, v in args.items()}, reverse=reverse)
    np.testing.assert_allclose(out64.numpy(), ref, rtol=1e-10, atol=1e-10)
    out = selective_scan(**args, reverse=reverse)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))
    if not all(reverse):  # the forward groups are unchanged by the flags of the others
        fwd = selective_scan(**args)
        cg = shape[1] // shape[2]
        for gi, r in enumerate(reverse):
            if not r:
                torch.testing.assert_close(out[:, gi * cg:(gi + 1) * cg], fwd[:, gi * cg:(gi + 1) * cg], rtol=0, atol=0)


def test_selective_scan_bad_reverse():
    args = scan_inputs(1, 6, 3, 4, 10)
    with pytest.raises(ValueError, match=r"one 0/1 flag per group \(G=3\), got 2"):
        selective_scan(**args, reverse=(0, 1))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        selective_scan(**args, reverse=(0, 2, 0))
    torch.testing.assert_close(selective_scan(**args, reverse=()), selective_scan(**args), rtol=0, atol=0)


def test_selective_scan_bad_shapes():
    args = scan_inputs(1, 6, 3, 4, 10)
    with pytest.raises(ValueError, match="G=4 must divide Ch=6"):
        selective_scan(**{**args, "B": torch.randn(1, 4, 4, 10), "C": torch.randn(1, 4, 4, 10)})
    with pytest.raises(ValueError, match="L=10"):
        selective_scan(**{**args, "B": torch.randn(1, 3, 4, 11)})
    with pytest.raises(ValueError, match="must both be"):
        selective_scan(**{**args, "u": torch.randn(6, 10)})


GATHER_SHAPES = [(1, 2, 2, 2), (2, 3, 5, 7), (1, 4, 7, 4), (2, 2, 9, 9), (1, 3, 3, 16)]


@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=[f"B{s[0]}C{s[1]}H{s[2]}W{s[3]}" for s in GATHER_SHAPES])
def test_deform_gather_matches_naive_bilinear(shape):
    bt, ch, h, w = shape
    x = torch.randn(bt, ch, h, w, dtype=torch.float64)
    off = torch.randn(bt, 3, h, w, dtype=torch.float64) * 2  # tanh saturates: points reach the borders
    table = torch.randn(ch, 7, 7, dtype=torch.float64)
    ref = naive_ops.deform_gather(x.numpy(), off.numpy(), table.numpy())
    np.testing.assert_allclose(deform_gather(x, off, table).numpy(), ref, rtol=1e-9, atol=1e-9)
    out32 = deform_gather(x.float(), off.float(), table.float())
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_deform_gather_uses_only_first_two_offset_channels():
    x, table = torch.randn(1, 2, 5, 6), torch.randn(2, 7, 7)
    off = torch.randn(1, 3, 5, 6)
    off2 = off.clone()
    off2[:, 2] = 99
    torch.testing.assert_close(deform_gather(x, off, table), deform_gather(x, off2[:, :], table))
    torch.testing.assert_close(deform_gather(x, off, table), deform_gather(x, off[:, :2], table))


def test_deform_gather_bad_shapes():
    with pytest.raises(ValueError, match="H and W must be >= 2"):
        deform_gather(torch.randn(1, 2, 1, 5), torch.randn(1, 3, 1, 5), torch.randn(2, 7, 7))
    with pytest.raises(ValueError, match="rpe_table"):
        deform_gather(torch.randn(1, 2, 4, 5), torch.randn(1, 3, 4, 5), torch.randn(3, 7, 7))


def assert_valid_order(perm, key, tol=1e-6):
    """perm is a permutation that sorts ``key`` ascending, up to swaps of keys within ``tol``.

    Two correct implementations may differ by an ulp in tanh, which can swap near-tied neighbours
    (docs/model.md, Token sort: ~1e-7 near-ties occur several times per image); exact agreement is checked
    separately against the implementation's own key.
    """
    perm = np.asarray(perm)
    for row, k in zip(perm, key):
        assert np.array_equal(np.sort(row), np.arange(len(row))), "not a permutation"
        sk = k[row]
        assert (np.diff(sk) >= -tol).all(), "keys not ascending"


@pytest.mark.parametrize("bt,length", [(1, 1), (2, 2), (3, 49), (2, 3136), (1, 16384)])
def test_token_sort_matches_stable_argsort(bt, length):
    off = torch.randn(bt, length)
    perm, inv = token_sort(off)
    assert perm.dtype == torch.int64 and inv.dtype == torch.int64
    # exactly the stable argsort of its own float32 key ...
    own_key = sort_key(off)
    assert own_key.dtype == torch.float32
    np.testing.assert_array_equal(perm.numpy(), np.argsort(own_key.numpy(), axis=-1, kind="stable"))
    # ... which is the contract's key up to tanh's last bit
    ref_key = naive_ops.sort_key_f32(off.numpy())
    np.testing.assert_allclose(own_key.numpy(), ref_key, rtol=0, atol=2.5e-7)
    assert_valid_order(perm.numpy(), ref_key)
    ref_inv = np.empty_like(perm.numpy())
    np.put_along_axis(ref_inv, perm.numpy(), np.arange(length)[None].repeat(bt, 0), axis=-1)
    np.testing.assert_array_equal(inv.numpy(), ref_inv)


def test_token_sort_exact_ties_keep_index_order():
    # tiny offsets around a dense grid: float32 keys collide exactly for some neighbours
    gen = torch.Generator().manual_seed(3)
    off = torch.randn(4, 16384, generator=gen) * 1e-3
    key = sort_key(off).numpy()
    ties = sum(len(k) - len(np.unique(k)) for k in key)
    assert ties > 0, "test data must contain exact float32 ties"
    perm, _ = token_sort(off)
    np.testing.assert_array_equal(perm.numpy(), np.argsort(key, axis=-1, kind="stable"))
    # and where keys tie, the lower index comes first
    sk = np.take_along_axis(key, perm.numpy(), -1)
    same = sk[:, 1:] == sk[:, :-1]
    assert (perm.numpy()[:, 1:][same] > perm.numpy()[:, :-1][same]).all()


def test_token_sort_key_is_float32_for_half_input():
    off = (torch.randn(2, 3136) * 0.01).half()
    perm, _ = token_sort(off)
    np.testing.assert_array_equal(perm.numpy(), token_sort(off.float())[0].numpy())
    assert_valid_order(perm.numpy(), naive_ops.sort_key_f32(off.float().numpy()))


def test_apply_permutation_round_trip():
    x = torch.randn(2, 5, 30)
    perm, inv = token_sort(torch.randn(2, 30))
    s = apply_permutation(x, perm)
    assert torch.equal(s[0, :, 0], x[0, :, perm[0, 0]])
    back = apply_permutation(s, inv)
    assert torch.equal(back, x)
    out = torch.empty_like(s)
    out.scatter_(-1, perm[:, None].expand_as(s), s)  # out[..., perm[j]] = s[..., j]
    assert torch.equal(out, back)
