"""Checkpoint loading: layouts, safety and strictness."""
import os
import pickle
import random
import subprocess
import sys
import textwrap
import types
import warnings

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


# ---- malformed checkpoints: each is one CheckpointError with one line naming the file and the problem

K = "layers.0.blocks.1.op.A_logs"


@pytest.fixture(scope="module")
def tiny_model():
    """A model for loads that are expected to fail (a failed load leaves it untouched)."""
    return dd.create_model("t")


@pytest.fixture(scope="module")
def scratch_model():
    """A model for loads that are expected to succeed: each strict load overwrites every weight."""
    return dd.create_model("t")


def load_error(path, model=None, **kw):
    """The CheckpointError of loading ``path``, checked to be one line that names the file."""
    with pytest.raises(dd.CheckpointError) as err:
        if model is None:
            dd.create_model("t", weights=path, **kw)
        else:
            dd.load_checkpoint(model, path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def replaced(sd, key, value):
    out = dict(sd)
    out[key] = value
    return out


class Payload:
    """An arbitrary class: its pickle needs a GLOBAL that the weights-only unpickler refuses."""

    def __init__(self):
        self.x = 1


def _quantized(t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized dtypes; files holding them still exist
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)


STRUCTURE = {
    "int_key": (lambda sd: {**sd, 0: torch.zeros(1)}, {}, "1 non-string key (0)"),
    "tuple_key": (lambda sd: {**sd, (1, 2): torch.zeros(1)}, {}, "non-string key ((1, 2))"),
    "none_key": (lambda sd: {**sd, None: torch.zeros(1)}, {}, "non-string key (None)"),
    "nested_dict_value": (lambda sd: replaced(sd, K, {"w": sd[K]}), {}, f"'{K}' holds a dict, not a tensor"),
    "list_value": (lambda sd: replaced(sd, K, sd[K].tolist()), {}, f"'{K}' holds a list, not a tensor"),
    "int_value": (lambda sd: replaced(sd, K, 5), {}, f"'{K}' holds an int, not a tensor"),
    "str_value": (lambda sd: replaced(sd, K, "w"), {}, f"'{K}' holds a str, not a tensor"),
    "two_bad_values": (lambda sd: {**replaced(sd, K, 5), "x": None}, {}, "(and 1 more entries that are not tensors)"),
    "bare_tensor_with_ema": (lambda sd: sd[K], {"ema": True}, "holds a Tensor, not a state_dict"),
    "model_is_tensor": (lambda sd: {"model": sd[K]}, {}, "its 'model' entry holds a Tensor, not a state_dict"),
    "model_ema_is_int": (lambda sd: {"model_ema": 5}, {"ema": True}, "its 'model_ema' entry holds an int"),
    "empty_dict": (lambda sd: {}, {}, "the file is an empty dict"),
    "empty_model_entry": (lambda sd: {"model": {}}, {}, "its 'model' entry is an empty dict"),
    "list_root": (lambda sd: list(sd.values()), {}, "holds a list, not a state_dict"),
    "none_root": (lambda sd: None, {}, "holds None, not a state_dict"),
    "int_root": (lambda sd: 5, {}, "holds an int, not a state_dict"),
    "training_file_without_model": (lambda sd: {"optimizer": {}, "epoch": 3}, {},
                                    "no 'model' or 'state_dict' entry and no tensors (it has: optimizer, epoch)"),
    "only_ema_without_flag": (lambda sd: {"model_ema": sd}, {}, "pass --ema (ema=True)"),
    "duplicate_after_prefix": (lambda sd: {**sd, f"module.{K}": sd[K]}, {}, f"'{K}' and 'module.{K}' both name '{K}'"),
    "sparse": (lambda sd: replaced(sd, K, sd[K].to_sparse()), {}, f"tensor '{K}' is a sparse tensor (torch.sparse_coo)"),
    "meta": (lambda sd: replaced(sd, K, torch.empty(sd[K].shape, device="meta")), {}, f"tensor '{K}' is a meta tensor"),
    "quantized": (lambda sd: replaced(sd, K, _quantized(sd[K])), {},
                  f"tensor '{K}' is a quantized tensor (torch.qint8)"),
    "complex": (lambda sd: replaced(sd, K, sd[K].to(torch.complex64)), {}, f"tensor '{K}' has dtype torch.complex64"),
    "int64": (lambda sd: replaced(sd, K, sd[K].long()), {}, f"tensor '{K}' has dtype torch.int64"),
    "bool": (lambda sd: replaced(sd, K, sd[K] > 0), {}, f"tensor '{K}' has dtype torch.bool"),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_malformed_structure(tmp_path, tiny_sd, tiny_model, case):
    build, kw, expected = STRUCTURE[case]
    path = tmp_path / f"{case}.pth"
    torch.save(build(tiny_sd), path)
    msg = load_error(path, tiny_model, **kw)
    assert expected in msg and "--unsafe-pickle" not in msg, msg


def test_read_state_dict_refuses_the_same(tmp_path, tiny_sd):
    path = tmp_path / "bad.pth"
    torch.save({**tiny_sd, 0: torch.zeros(1)}, path)
    with pytest.raises(dd.CheckpointError, match="non-string key"):
        dd.model.read_state_dict(path)


def contiguous_transposed(v):
    return v.t().contiguous().t() if v.dim() == 2 else v


@pytest.mark.parametrize("variant", ["requires_grad", "non_contiguous", "float16", "bfloat16", "float64"])
def test_unusual_but_valid_tensors_load(tmp_path, tiny_sd, scratch_model, variant):
    change = {
        "requires_grad": lambda v: v.clone().requires_grad_(True),
        "non_contiguous": contiguous_transposed,
        "float16": torch.Tensor.half,
        "bfloat16": torch.Tensor.bfloat16,
        "float64": torch.Tensor.double,
    }[variant]
    sd = {k: change(v) for k, v in tiny_sd.items()}
    assert variant != "non_contiguous" or not all(v.is_contiguous() for v in sd.values())
    path = tmp_path / f"{variant}.pth"
    torch.save(sd, path)
    report = dd.load_checkpoint(scratch_model, path)
    assert_loaded(scratch_model, {k: v.detach().float() for k, v in sd.items()})  # cast to the model's float32
    assert report.cast_from == ([variant] if variant.startswith(("float", "bfloat")) else [])


def with_nonfinite(t, n, value=float("nan")):
    t = t.clone()
    t.view(-1)[:n] = value
    return t


def test_nonfinite_is_refused_naming_tensor_and_count(tmp_path, tiny_sd, tiny_model):
    path = tmp_path / "defmamba_t.pth"
    torch.save(replaced(tiny_sd, K, with_nonfinite(tiny_sd[K], 3)), path)
    msg = load_error(path, tiny_model)
    assert msg == (f"checkpoint {path}: tensor '{K}' holds 3 NaN/inf values; the checkpoint is damaged "
                   "(pass allow_nonfinite=True / --allow-nonfinite to load it anyway)")


NONFINITE = {
    "inf_in_float16": (lambda sd: {k: v.half() for k, v in replaced(sd, K, with_nonfinite(sd[K], 2, float("inf"))).items()},
                       {}, f"tensor '{K}' holds 2 NaN/inf values"),
    "minus_inf_in_ema": (lambda sd: {"model": sd, "model_ema": replaced(sd, K, with_nonfinite(sd[K], 1, -float("inf")))},
                         {"ema": True}, f"tensor '{K}' holds 1 NaN/inf values"),
    "two_tensors": (lambda sd: {**replaced(sd, K, with_nonfinite(sd[K], 1)),
                                "patch_embed.0.weight": with_nonfinite(sd["patch_embed.0.weight"], 4)},
                    {}, "holds 4 NaN/inf values (and 1 more tensor)"),
    "float64_beyond_float32": (lambda sd: replaced(sd, K, with_nonfinite(sd[K].double(), 5, 1e300)), {},
                               f"tensor '{K}' holds 5 values beyond the range of torch.float32 (inf once cast)"),
}


@pytest.mark.parametrize("case", list(NONFINITE))
def test_nonfinite_variants(tmp_path, tiny_sd, tiny_model, scratch_model, case):
    build, kw, expected = NONFINITE[case]
    path = tmp_path / f"{case}.pth"
    torch.save(build(tiny_sd), path)
    msg = load_error(path, tiny_model, **kw)
    assert expected in msg and "allow_nonfinite=True / --allow-nonfinite" in msg, msg
    report = dd.load_checkpoint(scratch_model, path, allow_nonfinite=True, **kw)  # the opt-out loads it
    assert not torch.isfinite(scratch_model.state_dict()[K]).all()
    expected_keys = {"float64_beyond_float32": [], "two_tensors": ["patch_embed.0.weight", K]}.get(case, [K])
    assert report.nonfinite == expected_keys  # in the file's order


def test_allow_nonfinite_reports_the_tensors(tmp_path, tiny_sd):
    path = tmp_path / "nan.pth"
    torch.save(replaced(tiny_sd, K, with_nonfinite(tiny_sd[K], 3)), path)
    model = dd.create_model("t", weights=path, allow_nonfinite=True)
    assert model.load_report.nonfinite == [K] and "1 tensors hold NaN/inf" in model.load_report.summary()
    sd, _ = dd.model.read_state_dict(path, allow_nonfinite=True)
    assert int(torch.isnan(sd[K]).sum()) == 3


@pytest.mark.parametrize("backbone", [False, True])
def test_fresh_model_holds_no_nonfinite_tensor(tiny_sd, backbone):
    """The default refusal relies on this: no DefMamba parameter or buffer is NaN/inf by design."""
    sd = dd.create_model("t", backbone=True).state_dict() if backbone else tiny_sd
    assert all(bool(torch.isfinite(v).all()) for v in sd.values())


def _torchscript_bytes(tmp_path):
    p = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated; its archives remain around
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p)
    return p.read_bytes()


def _foreign_zip(tmp_path):
    import zipfile

    p = tmp_path / "other.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")
    return p.read_bytes()


def _legacy_truncated(tmp_path, sd):
    p = tmp_path / "legacy.pth"
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    return data[: len(data) // 2]


CORRUPT = {
    "random_bytes": (lambda tmp, sd, full: random.Random(0).randbytes(5000), "neither a zip archive nor a pickle"),
    "truncated_zip": (lambda tmp, sd, full: full[: len(full) // 2], "a truncated or damaged zip archive"),
    "zip_not_torch": (lambda tmp, sd, full: _foreign_zip(tmp), "a zip archive without torch.save's layout"),
    "text": (lambda tmp, sd, full: b"model: defmamba-t\nweights: see the release page\n", "a text file"),
    "plain_pickle_of_int": (lambda tmp, sd, full: pickle.dumps(5), "a plain pickle, not a torch.save file"),
    "safetensors": (lambda tmp, sd, full: (20).to_bytes(8, "little") + b'{"__metadata__":{}}   ', "a safetensors file"),
    "truncated_legacy": (lambda tmp, sd, full: _legacy_truncated(tmp, sd), "unexpected EOF"),
}


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe_pickle"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_or_foreign_file(tmp_path, tiny_sd, tiny_model, case, unsafe):
    build, expected = CORRUPT[case]
    good = tmp_path / "good.pth"
    torch.save(tiny_sd, good)
    path = tmp_path / f"{case}.pth"
    path.write_bytes(build(tmp_path, tiny_sd, good.read_bytes()))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="--unsafe-pickle")
        msg = load_error(path, tiny_model, unsafe_pickle=unsafe)
    assert msg.startswith(f"{path} is not a PyTorch checkpoint (corrupt or another format: "), msg
    assert expected in msg and "--unsafe-pickle" not in msg, msg


def test_torchscript_archive(tmp_path, tiny_model):
    path = tmp_path / "scripted.pth"
    path.write_bytes(_torchscript_bytes(tmp_path))
    assert "a TorchScript archive; save the model's state_dict() instead" in load_error(path, tiny_model)


def test_directory_and_empty_file(tmp_path, tiny_model):
    (tmp_path / "ckpt_dir").mkdir()
    assert "is a directory, not a checkpoint file" in load_error(tmp_path / "ckpt_dir", tiny_model)
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "is empty" in load_error(tmp_path / "empty.pth", tiny_model)


CODE_BEARING = {
    "os_system": (lambda sd: {"model": sd, "x": Evil()}, "posix.system"),
    "class_from_the_test": (lambda sd: {"model": sd, "x": Payload()}, "Payload"),
    "numpy_array": (lambda sd: replaced(sd, K, sd[K].numpy()), "numpy"),
}


@pytest.mark.parametrize("case", list(CODE_BEARING))
def test_code_bearing_pickle_gets_the_unsafe_advice(tmp_path, tiny_sd, tiny_model, case):
    build, name = CODE_BEARING[case]
    path = tmp_path / f"{case}.pth"
    torch.save(build(tiny_sd), path)
    msg = load_error(path, tiny_model)  # loaded safely only: the payload is never executed
    assert msg.startswith(f"refusing to load {path}: its pickle contains ") and name in msg, msg
    assert msg.endswith("which could run code; if you trust the file, pass --unsafe-pickle (unsafe_pickle=True)")


def test_unsafe_numpy_values_are_not_tensors(tmp_path, tiny_sd, tiny_model):
    path = tmp_path / "numpy.pth"
    torch.save(replaced(tiny_sd, K, tiny_sd[K].numpy()), path)
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        msg = load_error(path, tiny_model, unsafe_pickle=True)
    assert f"'{K}' holds a numpy.ndarray, not a tensor" in msg


@pytest.mark.parametrize("missing", ["module", "attribute"])
def test_unsafe_pickle_of_unavailable_code(tmp_path, tiny_model, monkeypatch, missing):
    """With --unsafe-pickle, a pickle naming a class that cannot be imported is a CheckpointError too."""
    mod = types.ModuleType("defmamba_test_vanished")

    class Gone:
        pass

    Gone.__module__, Gone.__qualname__ = mod.__name__, "Gone"
    mod.Gone = Gone
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    path = tmp_path / f"needs_{missing}.pth"
    torch.save({"model": {}, "x": Gone()}, path)
    if missing == "module":
        monkeypatch.delitem(sys.modules, mod.__name__)
    else:
        del mod.Gone
    assert "--unsafe-pickle" in load_error(path, tiny_model)  # refused safely, as any GLOBAL is
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        msg = load_error(path, tiny_model, unsafe_pickle=True)
    assert "cannot be unpickled even with --unsafe-pickle: it refers to code that is not available here" in msg


def test_pickled_module_under_unsafe_pickle(tmp_path, tiny_model):
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    assert "torch.nn.modules.linear.Linear" in load_error(path, tiny_model)
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        msg = load_error(path, tiny_model, unsafe_pickle=True)
    assert msg.endswith("holds a pickled Linear module, not a state_dict or a dict of them; save the model's state_dict() instead")
