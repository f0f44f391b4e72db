"""Any ONNX model, any tensor: bare graphs from real exporters load with their signature read
from the graph, take named tensors of any rank and dtype, and answer exactly as onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import inference
from inference import BundleError, InvalidInputError
from tests import byom
from tests.conftest import REPO


def direct(folder: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime itself on the graph, with nothing of ours around it."""
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture
def repo_copy(byom_repo: Path, tmp_path: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(byom_repo, target)
    return target


def test_a_bare_graph_is_described_by_its_signature(byom_repo: Path):
    model = inference.load(byom_repo / "tokens")
    meta = model.metadata
    assert (meta.name, meta.version, meta.task, meta.provenance) == ("tokens", 1, None, None)
    assert [(i.name, i.datatype, i.shape) for i in meta.inputs] == [
        ("input_ids", "INT64", [-1, -1]),
        ("attention_mask", "INT64", [-1, -1]),
    ]
    assert [(o.name, o.datatype, o.shape, o.role) for o in meta.outputs] == [
        ("logits", "FP32", [-1, 2], "output"),
        ("hidden", "FP32", [-1, -1, 8], "output"),
    ]
    assert meta.default_outputs == ["logits", "hidden"]
    assert meta.batchable and meta.tabular is None and meta.feature_names == []
    assert len(meta.onnx.sha256) == 64


@pytest.mark.parametrize(
    ("name", "feeds"),
    [
        ("tokens", byom.token_batch(rows=3, length=5)),
        ("digits_cnn", {"image": byom.digits_images(4)}),
        ("digits_sklearn", {"X": byom.digits_images(4).reshape(4, 64) * 16}),
    ],
)
def test_named_tensors_answer_exactly_as_onnxruntime(byom_repo: Path, name: str, feeds):  # type: ignore[no-untyped-def]
    got = inference.load(byom_repo / name).predict(feeds).outputs
    want = direct(byom_repo / name, feeds)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_one_input_takes_its_array_and_lists_convert_losslessly(byom_repo: Path):
    cnn = inference.load(byom_repo / "digits_cnn")
    images = byom.digits_images(2)
    np.testing.assert_array_equal(
        cnn.predict(images.tolist())["scores"], cnn.predict(images.astype(np.float64))["scores"]
    )
    tokens = inference.load(byom_repo / "tokens")
    ids = [[1, 2, 3]]
    as_int32 = tokens.predict({"input_ids": np.array(ids, np.int32), "attention_mask": ids})
    as_lists = tokens.predict({"input_ids": ids, "attention_mask": ids})
    np.testing.assert_array_equal(as_int32["logits"], as_lists["logits"])


def test_text_tensors(byom_repo: Path):
    model = inference.load(byom_repo / "strings")
    assert model.metadata.inputs[0].datatype == "BYTES"
    assert model.predict(["Hello", "WORLD"])["lower"].tolist() == ["hello", "world"]
    with pytest.raises(InvalidInputError, match=r"input 'text': expected BYTES, got values"):
        model.predict([1, 2])


TOKENS_BAD = [
    ({"input_ids": [[1, 2]]}, r"missing input\(s\) 'attention_mask'; this model takes: "),
    (
        {"input_ids": [[1]], "attention_mask": [[1]], "extra": [1]},
        r"unknown input\(s\) 'extra'",
    ),
    (
        {"input_ids": [[1, 2]], "attention_mask": [[1.5, 1]]},
        r"'attention_mask': expected INT64, got fractions",
    ),
    ({"input_ids": [[1, 2]], "attention_mask": [[True, 1]]}, r"got true/false among numbers"),
    (
        {"input_ids": [["a", "b"]], "attention_mask": [[1, 1]]},
        r"'input_ids': expected INT64, got text",
    ),
    (
        {"input_ids": [1, 2], "attention_mask": [[1, 1]]},
        r"'input_ids': expected shape \[-1, -1\] .* got \[2\]",
    ),
    (
        {"input_ids": [[1, 2]], "attention_mask": [[1, 1], [1, 1]]},
        r"different batch sizes \('input_ids' 1, 'attention_mask' 2\)",
    ),
    (
        {"input_ids": np.zeros((0, 3), np.int64), "attention_mask": np.zeros((0, 3), np.int64)},
        r"the batch is empty",
    ),
    ({"input_ids": [[1, [2]]], "attention_mask": [[1, 1]]}, r"'input_ids': not a regular array"),
]


@pytest.mark.parametrize(("feeds", "message"), TOKENS_BAD)
def test_bad_tensors_are_named(byom_repo: Path, feeds, message: str):  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=message):
        inference.load(byom_repo / "tokens").predict(feeds)


def test_fixed_dimensions_integer_ranges_and_non_finite_values(byom_repo: Path):
    cnn = inference.load(byom_repo / "digits_cnn")
    with pytest.raises(
        InvalidInputError, match=r"expected shape \[-1, 1, 8, 8\] .* got \[1, 1, 8, 7\]"
    ):
        cnn.predict(np.zeros((1, 1, 8, 7), np.float32))
    images = byom.digits_images(3)
    images[2, 0, 4, 4] = np.nan
    with pytest.raises(InvalidInputError, match=r"'image': NaN or infinity in row 2 \(1 such row"):
        cnn.predict(images)
    with pytest.raises(InvalidInputError, match=r"'image': NaN or infinity"):
        cnn.predict(np.full((1, 1, 8, 8), 1e300))  # too large for FP32
    tokens = inference.load(byom_repo / "tokens")
    with pytest.raises(
        InvalidInputError, match=r"expected INT64, got 18446744073709551615, out of"
    ):
        tokens.predict({"input_ids": np.array([[2**64 - 1]], np.uint64), "attention_mask": [[1]]})
    with pytest.raises(InvalidInputError, match=r"this model has 2 inputs: pass a dict"):
        tokens.predict([[1, 2]])
    with pytest.raises(InvalidInputError, match=r"this model has no feature names"):
        tokens.predict_records([{"a": 1}])


def test_an_overlay_adds_feature_names_and_classes(repo_copy: Path):
    bundle = repo_copy / "digits_sklearn" / "1"
    overlay = {
        "inputs": [{"name": "X", "feature_names": [f"p{i}" for i in range(64)]}],
        "task": "classification",
        "classes": [str(d) for d in range(10)],
        "outputs": [
            {"name": "probabilities", "role": "scores"},
            {"name": "label", "role": "class_index"},
        ],
    }
    (bundle / "metadata.json").write_text(json.dumps(overlay))
    model = inference.load(bundle)
    assert model.metadata.inputs[0].datatype == "FP32"  # from the graph
    pixels = byom.digits_images(3).reshape(3, 64) * 16
    records = [dict(zip(model.metadata.feature_names, row, strict=True)) for row in pixels.tolist()]
    assert model.predict_records(records).labels == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            {"inputs": [{"name": "Y"}]},
            r"input 'Y' in metadata\.json is not in the graph; the graph's inputs: 'X'",
        ),
        (
            {"inputs": [{"name": "X", "shape": [-1, 3]}]},
            r"input 'X' is FP32 \[-1, 64\] in the graph but FP32 \[-1, 3\] in metadata\.json",
        ),
        (
            {"onnx": {"file": "../other.onnx"}},
            r"onnx\.file must name a \.onnx file in the version folder",
        ),
        ({"onnx": {"sha256": "0" * 64}}, r"its sha256 does not match the one recorded"),
        ({"task": "classification"}, r"a classification bundle needs its class labels"),
        ([1], r"expected a JSON object, got list"),
    ],
)
def test_an_overlay_that_contradicts_the_graph_is_refused(repo_copy: Path, overlay, message: str):  # type: ignore[no-untyped-def]
    bundle = repo_copy / "digits_sklearn" / "1"
    (bundle / "metadata.json").write_text(json.dumps(overlay))
    with pytest.raises(BundleError, match=message):
        inference.load(bundle)


def test_graphs_that_cannot_be_served_say_why(tmp_path: Path):
    with pytest.raises(
        BundleError,
        match=r"'output_probability' is seq\(map\(int64,tensor\(float\)\)\), not a tensor; .*'zipmap': False",
    ):
        inference.load(byom.zipmap(tmp_path))
    garbage = tmp_path / "garbage" / "1"
    garbage.mkdir(parents=True)
    (garbage / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match=r"onnxruntime cannot load this model"):
        inference.load(garbage.parent)


def run_inference_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_show_and_init_through_the_command_line(repo_copy: Path, tmp_path: Path):
    shown = run_inference_cli("show", str(repo_copy / "tokens"))
    assert shown.returncode == 0, shown.stderr
    assert (
        "input_ids  INT64 [-1, -1]" in shown.stdout and "hidden  FP32 [-1, -1, 8]" in shown.stdout
    )
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"p{i}" for i in range(64)))
    bundle = repo_copy / "digits_sklearn" / "1"
    done = run_inference_cli(
        "init", str(bundle), "--features", f"@{names}", "--classes", ",".join(map(str, range(10)))
    )
    assert done.returncode == 0, done.stderr
    meta = inference.load(bundle).metadata
    assert meta.task == "classification" and meta.feature_names[:2] == ["p0", "p1"]
    assert meta.output("scores").name == "probabilities"  # type: ignore[union-attr]
    assert meta.output("class_index").name == "label"  # type: ignore[union-attr]
    again = run_inference_cli("init", str(bundle), "--classes", "a")
    assert (
        again.returncode == 2 and again.stderr.startswith("error: ") and "--force" in again.stderr
    )
    refused = run_inference_cli("init", str(repo_copy / "digits_cnn" / "1"), "--features", "a,b")
    assert refused.returncode == 2
    assert "feature names need a model of one [rows, features] input" in refused.stderr
    assert not (repo_copy / "digits_cnn" / "1" / "metadata.json").exists()
    ambiguous = run_inference_cli("init", str(repo_copy / "tokens" / "1"), "--classes", "a,b,c")
    assert ambiguous.returncode == 2 and "name it with --scores" in ambiguous.stderr


def test_values_the_graph_refuses_are_the_senders_error(byom_repo: Path, capfd):  # type: ignore[no-untyped-def]
    tokens = inference.load(byom_repo / "tokens")
    with pytest.raises(
        InvalidInputError,
        match=r"the model cannot run on this input: indices element out of data bounds, idx=1000",
    ):
        tokens.predict({"input_ids": [[1000, 2]], "attention_mask": [[1, 1]]})
    with pytest.raises(
        InvalidInputError,
        match=r"cannot run on this input: Attempting to broadcast .* \(node '/Mul', a Mul\)$",
    ):  # lengths that differ: each input passes its own check, the graph cannot combine them
        tokens.predict({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1]]})
    assert "Gather" not in capfd.readouterr().err  # raised once, not also printed by onnxruntime
