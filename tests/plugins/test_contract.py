"""One name per op everywhere: the ONNX schema (OP_SPECS), the exporter's symbolics, the ORT op,
the TensorRT creator and the op README must agree on op types, inputs, outputs and attributes."""
import re
from pathlib import Path

import onnx
import pytest

from defmamba_deploy.onnx import OP_SPECS, register_schemas
from defmamba_deploy.onnx.schemas import DOMAIN, VERSION

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
FOLDER = {"SelectiveScan": "selective_scan", "DeformGather": "deform_gather", "TokenSort": "token_sort"}


@pytest.mark.parametrize("op", sorted(OP_SPECS))
def test_schema_matches_spec(op):
    register_schemas()
    schema = onnx.defs.get_schema(op, VERSION, DOMAIN)
    spec = OP_SPECS[op]
    assert [i.name for i in schema.inputs] == spec["inputs"]
    assert [o.name for o in schema.outputs] == spec["outputs"]
    assert set(schema.attributes) == set(spec["attributes"])


@pytest.mark.parametrize("op", sorted(OP_SPECS))
def test_native_sources_and_readme_use_the_same_names(op):
    folder = PLUGINS / FOLDER[op]
    spec = OP_SPECS[op]
    readme = (folder / "README.md").read_text()
    trt = (folder / "trt_plugin.cpp").read_text()
    ort = (folder / "ort_op.cpp").read_text() + (folder / "ort_op.h").read_text()
    assert op in readme and f'"{op}"' in trt + (folder / "trt_plugin.h").read_text() + ort
    for name in spec["inputs"] + spec["outputs"]:
        assert re.search(rf"`{re.escape(name)}`", readme), f"{op} README does not document `{name}`"
    for attr in spec["attributes"]:
        assert f"`{attr}`" in readme, f"{op} README does not document attribute {attr}"
        assert f'"{attr}"' in trt, f"{op} TensorRT creator does not declare field {attr}"
        assert f'"{attr}"' in ort, f"{op} ORT op does not read attribute {attr}"
    assert op in (PLUGINS / "README.md").read_text()


def test_exported_nodes_use_the_spec(tmp_path):
    from defmamba_deploy.onnx import export_onnx

    model = onnx.load(str(export_onnx("t", img_size=(48, 48), output=tmp_path / "t.onnx").path))
    for node in model.graph.node:
        if node.domain == DOMAIN:
            spec = OP_SPECS[node.op_type]
            assert len(node.input) == len(spec["inputs"]) and len(node.output) == len(spec["outputs"])
            assert {a.name for a in node.attribute} <= set(spec["attributes"])
            assert not any(a.name.startswith("plugin_") for a in node.attribute)  # TensorRT finds the plugin as is
