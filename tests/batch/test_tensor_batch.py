"""One Arrow batch through a non-tabular model, as a Spark task scores it (no Spark needed):
groups of equal shapes, refused rows isolated, outputs back in row order, classifier labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import inference
from batch.errors import ScoringError
from batch.spec import output_layout
from batch.worker import score_arrays, spec_for
from tests import byom
from tests.batch.conftest import Direct


def score(folder: Path, arrays: list[pa.Array], **kw: object) -> dict[str, list[object]]:
    model = inference.load(folder)
    struct = score_arrays(spec_for(model, None, None, **kw), model, arrays)  # type: ignore[arg-type]
    return {field.name: struct.field(field.name).to_pylist() for field in struct.type}


def test_refused_rows_are_isolated_and_the_rest_scored(byom_repo: Path, direct: Direct):
    tokens = byom.token_batch(8, 2)
    ids = tokens["input_ids"].tolist()
    ids[5] = [1, 500]  # past the embedding table: onnxruntime refuses the run holding it
    mask = tokens["attention_mask"].tolist()
    got = score(byom_repo / "tokens", [pa.array(ids), pa.array(mask)])
    assert [e is None for e in got["error"]] == [True] * 5 + [False] + [True] * 2
    assert "idx=500 must be within the inclusive range [-100,99]" in got["error"][5]  # type: ignore[operator]
    good = [i for i in range(8) if i != 5]
    expected = direct("tokens", {k: v[good] for k, v in tokens.items()})
    np.testing.assert_allclose([got["logits"][i] for i in good], expected["logits"], atol=1e-5)
    assert got["logits"][5] is None


def test_an_empty_batch(byom_repo: Path):
    got = score(byom_repo / "digits_cnn", [pa.array([], pa.list_(pa.float32()))])
    assert got == {"scores": [], "features": [], "error": []}


def test_a_graph_that_takes_one_row_at_a_time(tmp_path: Path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "square" / "1").mkdir(parents=True)
    (tmp_path / "square" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    assert spec_for(inference.load(tmp_path / "square"), None, None).rows_per_run == 1
    got = score(tmp_path / "square", [pa.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], None])])
    assert got["y"] == [[1.0, 4.0, 9.0], [4.0, 4.0, 4.0], None]
    assert got["error"] == [None, None, "'x' is null"]


def test_a_classifier_overlay_adds_labels_and_class_scores(byom_repo: Path, tmp_path: Path):
    folder = tmp_path / "digits"
    shutil.copytree(byom_repo / "digits_sklearn", folder)
    overlay = {
        "classes": [f"digit {i}" for i in range(10)],
        "outputs": [
            {"name": "label", "role": "class_index"},
            {"name": "probabilities", "role": "scores"},
        ],
    }
    (folder / "1" / "metadata.json").write_text(json.dumps(overlay))
    model = inference.load(folder)
    spec = spec_for(model, None, None)
    columns = [c.name for c in output_layout(spec, "p_")]
    assert columns[:3] == ["p_label", "p_probabilities", "p_score_digit_0"]
    assert columns[-2:] == ["p_class_label", "p_error"]  # skl2onnx calls the index `label`
    x = byom.digits_images(4).reshape(4, -1) * 16
    got = score(folder, [pa.array(x.tolist())])
    assert got["class_label"] == [f"digit {i}" for i in got["label"]]  # type: ignore[union-attr]


def test_two_outputs_may_not_make_one_column(tmp_path: Path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", ["x"], [name]) for name in ("a b", "a_b")]
    graph = helper.make_graph(
        nodes,
        "twins",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("a b", "a_b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "twins" / "1").mkdir(parents=True)
    (tmp_path / "twins" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ScoringError, match=r"outputs 'a b' and 'a_b' would both be the column"):
        spec_for(inference.load(tmp_path / "twins"), None, None)
