"""The reference model against the authors' golden outputs and official state_dict keys."""
import pytest
import torch

import defmamba_deploy as dd
from defmamba_deploy.model import DefMambaBackbone, get_config, resolve_name


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_state_dict_matches_official_keys(name, reference_dir):
    model = dd.create_model(name)
    rows = [line.split("\t") for line in (reference_dir / f"keys_{name}.txt").read_text().splitlines() if line.strip()]
    sd = model.state_dict()
    assert [r[0] for r in rows] == list(sd), "key order or names differ from the official state_dict"
    for key, shape, dtype in rows:
        assert tuple(sd[key].shape) == tuple(eval(shape)), key  # shapes are written as Python tuples
        assert str(sd[key].dtype) == f"torch.{dtype}", key
    assert sum(p.numel() for p in model.parameters()) == get_config(name).params


@pytest.mark.parametrize("size", ["2x224x224", "1x160x256"])
def test_golden_logits_float32(golden, size):
    model = dd.create_model("t")
    model.load_state_dict(golden["state_dict"], strict=True)
    with torch.inference_mode():
        out = model(golden[f"input_{size}"])
    assert out.dtype == torch.float32
    assert (out.double() - golden[f"logits64_{size}"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("size", ["2x224x224", "1x160x256"])
def test_golden_logits_float64(golden, size):
    model = dd.create_model("t").double()
    model.load_state_dict(golden["state_dict"], strict=True)
    with torch.inference_mode():
        out = model(golden[f"input_{size}"].double())
    assert (out - golden[f"logits64_{size}"]).abs().max().item() < 1e-9


def test_registry_aliases():
    for alias in ("t", "T", "tiny", "defmamba_t", "DefMamba-T"):
        assert resolve_name(alias) == "tiny"
    with pytest.raises(dd.UsageError, match="unknown model"):
        resolve_name("xl")


def test_backbone_outputs_and_keys(golden):
    bb = dd.create_model("t", backbone=True)
    assert isinstance(bb, DefMambaBackbone)
    keys = set(bb.state_dict())
    assert {f"outnorm{i}.weight" for i in range(4)} <= keys and not any(k.startswith("classifier") for k in keys)
    # the backbone's trunk equals the classifier's: load the golden weights (classifier ignored)
    bb.load_state_dict({k: v for k, v in golden["state_dict"].items() if not k.startswith("classifier")}, strict=False)
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        feats = bb(x)
    assert [tuple(f.shape) for f in feats] == [(1, 48, 24, 32), (1, 96, 12, 16), (1, 192, 6, 8), (1, 384, 3, 4)]
    # stage-4 features, re-normalised by the classifier's own norm, give the classifier's logits
    clf = dd.create_model("t")
    clf.load_state_dict(golden["state_dict"])
    with torch.inference_mode():
        last = clf.forward_features(x)
        ref = bb.outnorm3(last).permute(0, 3, 1, 2)
    torch.testing.assert_close(feats[3], ref, atol=1e-5, rtol=1e-5)


def test_too_small_input_is_refused():
    model = dd.create_model("t")
    with pytest.raises(dd.UsageError, match=">= 33"):
        model(torch.randn(1, 3, 32, 64))
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 33, 40)).shape == (1, 1000)  # the minimum works, non-square too


def test_batch_independence():
    model = dd.create_model("t")
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-4)
