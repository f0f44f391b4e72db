"""Loading a bundle: versions, checksum, signature, metadata; a bad bundle is refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import inference
from inference import BundleError
from inference.bundle import sha256_of
from tests.conftest import MODELS, REPO


def edit_metadata(bundle: Path, edit) -> None:  # type: ignore[no-untyped-def]
    file = bundle / "metadata.json"
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def test_load_latest_or_a_given_version(copied_bundle: Path):
    model_dir = copied_bundle.parent
    shutil.copytree(copied_bundle, model_dir / "2")
    edit_metadata(model_dir / "2", lambda d: d.update(version=2))
    assert inference.load(model_dir).version == 2
    assert inference.load(model_dir, version=1).version == 1
    assert inference.load(model_dir / "1").version == 1
    assert inference.list_versions(model_dir) == [1, 2]


def test_unknown_version_lists_the_versions(copied_bundle: Path):
    with pytest.raises(BundleError, match=r"no version 7; versions: 1"):
        inference.load(copied_bundle.parent, version=7)


def test_folder_without_bundles(tmp_path: Path):
    with pytest.raises(
        BundleError,
        match=r"no bundle here: expected model\.onnx \(and optionally metadata\.json\) .* "
        r"'python -m training",
    ):
        inference.load(tmp_path)
    with pytest.raises(BundleError, match=r"no such model folder"):
        inference.load(tmp_path / "absent")


def test_a_changed_model_file_is_refused(copied_bundle: Path):
    onnx_file = copied_bundle / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(
        BundleError,
        match=r"model\.onnx: its sha256 does not match the one recorded in metadata\.json",
    ):
        inference.load(copied_bundle)


def test_a_signature_that_does_not_match_the_graph_is_refused(copied_bundle: Path):
    edit_metadata(copied_bundle, lambda d: d["outputs"][0].update(shape=[-1, 4]))
    with pytest.raises(
        BundleError, match=r"output 'scores' is FP32 \[-1, 3\] in the graph but FP32 \[-1, 4\]"
    ):
        inference.load(copied_bundle)


def test_a_renamed_input_is_refused(copied_bundle: Path):
    edit_metadata(copied_bundle, lambda d: d["inputs"][0].update(name="x"))
    with pytest.raises(
        BundleError,
        match=r"input 'x' in metadata\.json is not in the graph; the graph's inputs: 'features'",
    ):
        inference.load(copied_bundle)


def test_a_corrupt_model_with_a_matching_checksum_is_refused(copied_bundle: Path):
    onnx_file = copied_bundle / "model.onnx"
    onnx_file.write_bytes(b"not a protobuf")
    edit_metadata(copied_bundle, lambda d: d["onnx"].update(sha256=sha256_of(onnx_file)))
    with pytest.raises(BundleError, match=r"onnxruntime cannot load this model"):
        inference.load(copied_bundle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(task="ranking"),
            r"task: Input should be 'classification' or 'regression'",
        ),
        (lambda d: d.update(classes=None), r"a classification bundle needs its class labels"),
        (
            lambda d: d["inputs"][0].update(feature_names=["a"]),
            r"input 'features' of shape \[-1, 4\] does not fit 1 feature names",
        ),
        (lambda d: d.update(surprise=1), r"surprise: Extra inputs are not permitted"),
    ],
)
def test_invalid_metadata_is_named(copied_bundle: Path, edit, message: str):  # type: ignore[no-untyped-def]
    edit_metadata(copied_bundle, edit)
    with pytest.raises(BundleError, match=r"metadata\.json: invalid bundle metadata: .*" + message):
        inference.load(copied_bundle)


def test_metadata_that_is_not_json(copied_bundle: Path):
    (copied_bundle / "metadata.json").write_text("{")
    with pytest.raises(BundleError, match=r"metadata\.json: not valid JSON"):
        inference.load(copied_bundle)


def test_missing_model_file(copied_bundle: Path):
    (copied_bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx: missing"):
        inference.load(copied_bundle)


@pytest.mark.parametrize("name", ["side_effects", "iris", "digits"])
def test_committed_bundles_load_and_verify(name: str):
    model = inference.load(MODELS / name)
    assert model.name == name
    assert model.metadata.metrics["val_accuracy"] >= 0.90
    assert model.metadata.provenance.source == "spec"


def test_committed_side_effects_model_answers_sensibly():
    model = inference.load(MODELS / "side_effects")
    assert model.predict_records([{"age": 95}, {"age": 15}]).labels == [
        "side_effects",
        "no_side_effects",
    ]


def test_inference_imports_no_torch_and_no_framework():
    code = (
        "import sys, inference; inference.load(sys.argv[1]).predict([[5.0, 3.0, 1.5, 0.2]]); "
        "bad = [m for m in ('torch', 'fastapi', 'pyspark', 'training') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(MODELS / "iris")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
