"""libs.find_library: an explicit path or a set environment variable that names no usable library is one
line naming it, never a silent fall-through; a found file must be a shared library; ORT's failure to load
one is one line too."""
import shutil
import sys

import pytest

import defmamba_deploy as dd
from defmamba_deploy import libs

ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 57
pytestmark = pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="the fake libraries are ELF files")


@pytest.fixture()
def search(tmp_path, monkeypatch):
    """An empty package lib/ folder, no build/ folder and no environment variables."""
    (tmp_path / "pkg").mkdir()
    monkeypatch.setattr(libs, "PACKAGE_LIB_DIR", tmp_path / "pkg")
    monkeypatch.setattr(libs, "_CHECKOUT_BUILD", tmp_path / "nobuild")
    for _, env, _ in libs.LIBRARIES.values():
        monkeypatch.delenv(env, raising=False)
    return tmp_path


@pytest.mark.parametrize("kind,content,match", [
    ("folder", None, "is a folder, not a file"),
    ("missing", None, "does not exist"),
    ("empty", b"", "is empty"),
    ("text", b"not a library\n", r"is not a shared library \(no ELF header"),
    ("archive", b"!<arch>\n" + b"\0" * 60, "is not a shared library"),
])
def test_an_explicit_path_that_is_no_library(search, kind, content, match):
    p = search / "libdefmamba_trt_plugins.so"
    if kind == "folder":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(dd.MissingDependencyError, match=rf"^TensorRT plugins library \S+libdefmamba_trt_plugins\.so {match}"
                                                         rf".*build it with: bash scripts/build_plugins\.sh"):
        libs.find_library("trt", p)


def test_an_elf_file_passes(search):
    p = search / "lib.so"
    p.write_bytes(ELF)
    assert libs.find_library("trt", p) == p.resolve()


@pytest.mark.parametrize("kind", ["missing", "folder", "text"])
def test_a_set_variable_must_name_a_library(search, monkeypatch, kind):
    (search / "pkg" / "libdefmamba_ort_ops.so").write_bytes(ELF)  # a good copy the search would find
    target = search / "wrong.so"
    if kind == "folder":
        target.mkdir()
    elif kind == "text":
        target.write_text("hello")
    monkeypatch.setenv("DEFMAMBA_ORT_LIB", str(target))
    with pytest.raises(dd.MissingDependencyError, match=r"^\$DEFMAMBA_ORT_LIB=\S+wrong\.so (does not exist|is a folder, "
                                                         r"not a file|is not a shared library).*: unset it or point it at "
                                                         r"the built libdefmamba_ort_ops\.so"):
        libs.find_library("ort")
    with pytest.raises(dd.MissingDependencyError, match="DEFMAMBA_ORT_LIB"):
        libs.find_library("ort", required=False)  # configured: not "not built"
    assert libs.library_status()["ort"].startswith("unusable: $DEFMAMBA_ORT_LIB=")


def test_an_empty_variable_is_unset_and_an_explicit_path_wins(search, monkeypatch):
    good = search / "pkg" / "libdefmamba_ort_ops.so"
    good.write_bytes(ELF)
    monkeypatch.setenv("DEFMAMBA_ORT_LIB", "")
    assert libs.find_library("ort") == good.resolve()
    monkeypatch.setenv("DEFMAMBA_ORT_LIB", str(search / "missing.so"))
    explicit = search / "explicit.so"
    explicit.write_bytes(ELF)
    assert libs.find_library("ort", explicit) == explicit.resolve()  # the flag wins; the variable is not read
    monkeypatch.setenv("DEFMAMBA_ORT_LIB", str(explicit))
    assert libs.find_library("ort") == explicit.resolve()


def test_a_found_file_that_is_no_library_is_named(search):
    assert libs.find_library("trt", required=False) is None
    assert libs.library_status()["trt"] == "not built"
    (search / "pkg" / "libdefmamba_trt_plugins.so").write_bytes(b"half a co")
    with pytest.raises(dd.MissingDependencyError, match=r"pkg/libdefmamba_trt_plugins\.so is not a shared library.*"
                                                         r"remove it and build it with"):
        libs.find_library("trt")
    (search / "pkg" / "libdefmamba_trt_plugins.so").unlink()
    (search / "pkg" / "libdefmamba_trt_plugins.so").mkdir()  # a folder of that name is not a candidate
    assert libs.find_library("trt", required=False) is None


def test_ort_refusing_a_library_is_one_line(search, tmp_path):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from defmamba_deploy.runtime.onnxrt import create_session

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]), opset_imports=[helper.make_opsetid("", 17)])
    bad = tmp_path / "truncated.so"
    bad.write_bytes(ELF)  # an ELF header and nothing else: the loader refuses it
    with pytest.raises(dd.MissingDependencyError, match=r"^onnxruntime could not load the custom-op library "
                                                         r"\S+truncated\.so: .+; rebuild it"):
        create_session(model, library=bad)
    exe = shutil.which("true")  # a real ELF file that is no ORT custom-op library (no RegisterCustomOps)
    if exe:
        with pytest.raises(dd.MissingDependencyError, match="onnxruntime could not load the custom-op library"):
            create_session(model, library=exe)


def test_the_library_paths_are_strings_or_one_line(search):
    """get_library_path / get_trt_plugin_library_path give str (what ORT and TensorRT take), found like
    find_library, and the same one-line MissingDependencyError when nothing is built."""
    with pytest.raises(dd.MissingDependencyError, match=r"^ONNX Runtime custom ops library libdefmamba_ort_ops\.so "
                                                         r"not found .*build it with"):
        dd.get_library_path()
    with pytest.raises(dd.MissingDependencyError, match=r"^TensorRT plugins library libdefmamba_trt_plugins\.so not found"):
        dd.get_trt_plugin_library_path()
    for name, getter in (("libdefmamba_ort_ops.so", dd.get_library_path),
                         ("libdefmamba_trt_plugins.so", dd.get_trt_plugin_library_path)):
        (search / "pkg" / name).write_bytes(ELF)
        path = getter()
        assert isinstance(path, str) and path == str((search / "pkg" / name).resolve())
    explicit = search / "explicit.so"
    explicit.write_bytes(ELF)
    assert dd.get_library_path(explicit) == str(explicit.resolve())


def test_the_library_path_registers_with_onnxruntime():
    """The onnxruntime-extensions convention: SessionOptions.register_custom_ops_library takes a str, and
    get_library_path() is one."""
    ort = pytest.importorskip("onnxruntime")
    if libs.find_library("ort", required=False) is None:
        pytest.skip("libdefmamba_ort_ops.so is not built (bash scripts/build_plugins.sh)")
    so = ort.SessionOptions()
    so.register_custom_ops_library(dd.get_library_path())
