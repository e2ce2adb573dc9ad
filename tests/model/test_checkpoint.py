"""Checkpoint loading: layouts, safety and strictness."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import defmamba_deploy as dd
from defmamba_deploy.model import guess_variant


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(1)
    return dd.create_model("t").state_dict()


def assert_loaded(model, sd):
    own = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("layout", ["bare", "model", "state_dict", "module_prefix", "backbone_prefix"])
def test_layouts(tmp_path, tiny_sd, layout):
    obj = {
        "bare": tiny_sd,
        "model": {"model": tiny_sd, "epoch": 3, "max_accuracy": 1.0},
        "state_dict": {"state_dict": tiny_sd},
        "module_prefix": {"model": {f"module.{k}": v for k, v in tiny_sd.items()}},
        "backbone_prefix": {"state_dict": {f"backbone.{k}": v for k, v in tiny_sd.items()}},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = dd.create_model("t", weights=path)
    assert_loaded(model, tiny_sd)
    assert not model.training
    assert model.load_report.sha256 and model.load_report.source in ("root", "model", "state_dict")


def test_ema_choice(tmp_path, tiny_sd):
    ema = {k: v + 1 for k, v in tiny_sd.items()}
    path = tmp_path / "train.pth"
    torch.save({"model": tiny_sd, "model_ema": ema}, path)
    assert_loaded(dd.create_model("t", weights=path), tiny_sd)
    assert_loaded(dd.create_model("t", weights=path, ema=True), ema)
    torch.save({"model": tiny_sd}, path)
    with pytest.raises(dd.CheckpointError, match="no 'model_ema'"):
        dd.create_model("t", weights=path, ema=True)


def test_legacy_names(tmp_path, tiny_sd):
    legacy = {}
    for k, v in tiny_sd.items():
        k2 = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k2 = k2.replace(".op.", ".self_attention.")
        k2 = k2.replace(".norm.", ".ln_1.") if ".blocks." in k2 else k2
        k2 = k2.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        legacy[k2] = v
    assert "norm.weight" in legacy and "layers.0.blocks.0.ln_1.weight" in legacy
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = dd.create_model("t", weights=path)
    assert_loaded(model, tiny_sd)
    assert model.load_report.renamed > 0


def test_wrong_variant_names_the_right_one(tmp_path, tiny_sd):
    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny_sd}, path)
    with pytest.raises(dd.CheckpointError) as err:
        dd.create_model("s", weights=path)
    msg = str(err.value)
    assert "mis-shaped" in msg and "DefMamba-tiny" in msg and "--model t" in msg and "\n" not in msg
    assert guess_variant(tiny_sd) == "tiny"


def test_truncated_state_dict_lists_missing(tmp_path, tiny_sd):
    partial = dict(list(tiny_sd.items())[:100])
    partial["foo.bar"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(dd.CheckpointError) as err:
        dd.create_model("t", weights=path)
    assert "missing keys" in str(err.value) and "unexpected keys (foo.bar)" in str(err.value)
    assert len(err.value.missing) == len(tiny_sd) - 100


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file(tmp_path, tiny_sd, damage):
    path = tmp_path / "bad.pth"
    torch.save(tiny_sd, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(5000), "empty": b""}[damage])
    with pytest.raises(dd.CheckpointError, match="truncated|corrupt|empty"):
        dd.create_model("t", weights=path)


def test_missing_file(tmp_path):
    with pytest.raises(dd.CheckpointError, match="does not exist"):
        dd.create_model("t", weights=tmp_path / "nope.pth")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_foreign_pickle_is_refused(tmp_path, tiny_sd):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_sd, "payload": Evil()}, path)
    with pytest.raises(dd.CheckpointError, match="refusing.*--unsafe-pickle"):
        dd.create_model("t", weights=path)
    # the explicit opt-in loads it (the payload is harmless here)
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        model = dd.create_model("t", weights=path, unsafe_pickle=True)
    assert_loaded(model, tiny_sd)


def test_authors_training_file_with_yacs_config(tmp_path, tiny_sd):
    """The authors' file pickles a yacs CfgNode; it loads safely without yacs installed."""
    sd_path, ckpt = tmp_path / "sd.pt", tmp_path / "ckpt_epoch_300.pth"
    torch.save(tiny_sd, sd_path)
    # write the file in a separate interpreter that has a (fake) yacs.config.CfgNode, as the
    # authors' training script has, so that this process never imports it
    script = textwrap.dedent(f"""
        import sys, types, torch
        mod = types.ModuleType("yacs.config"); pkg = types.ModuleType("yacs"); pkg.config = mod
        class CfgNode(dict):
            def __init__(self, init=None):
                super().__init__(init or {{}})
                self.__dict__["__immutable__"] = False
                self.__dict__["__new_allowed__"] = False
        CfgNode.__module__ = "yacs.config"; mod.CfgNode = CfgNode
        sys.modules["yacs"] = pkg; sys.modules["yacs.config"] = mod
        cfg = CfgNode({{"MODEL": CfgNode({{"TYPE": "defmamba", "NAME": "tiny"}}), "SEED": 0}})
        sd = torch.load({str(sd_path)!r})
        torch.save({{"model": sd, "model_ema": sd, "optimizer": {{}}, "lr_scheduler": {{}}, "max_accuracy": 0.0,
                    "scaler": {{}}, "epoch": 299, "config": cfg, "max_accuray_ema": 0.0}}, {str(ckpt)!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert "yacs" not in sys.modules
    model = dd.create_model("t", weights=ckpt)
    assert_loaded(model, tiny_sd)
    assert "yacs" not in sys.modules  # nothing of yacs was imported or executed


def test_backbone_from_classification_checkpoint(tmp_path, tiny_sd):
    path = tmp_path / "cls.pth"
    torch.save({"model": tiny_sd}, path)
    bb = dd.create_model("t", weights=path, backbone=True)
    assert bb.load_report.ignored and all(k.startswith("classifier.") for k in bb.load_report.ignored)
    assert sorted({k.split(".")[0] for k in bb.load_report.initialised}) == ["outnorm0", "outnorm1", "outnorm2", "outnorm3"]
    assert torch.equal(bb.state_dict()["layers.0.blocks.0.op.A_logs"], tiny_sd["layers.0.blocks.0.op.A_logs"])


def test_yacs_file_with_foreign_payload_is_refused(tmp_path, tiny_sd):
    """The restricted fallback for the yacs config still refuses anything else."""
    ckpt = tmp_path / "evil_train.pth"
    script = textwrap.dedent(f"""
        import os, sys, types, torch
        mod = types.ModuleType("yacs.config"); pkg = types.ModuleType("yacs"); pkg.config = mod
        class CfgNode(dict):
            pass
        CfgNode.__module__ = "yacs.config"; mod.CfgNode = CfgNode
        sys.modules["yacs"] = pkg; sys.modules["yacs.config"] = mod
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > {tmp_path}/pwned",))
        torch.save({{"model": {{}}, "config": CfgNode({{"A": 1}}), "x": Evil()}}, {str(ckpt)!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(dd.CheckpointError, match="refusing"):
        dd.create_model("t", weights=ckpt)
    assert not (tmp_path / "pwned").exists()
