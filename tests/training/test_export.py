"""Export: PyTorch and onnxruntime agree, through the same loader the service uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inference
from training import ExportError, Scaler, export_module
from training.activations import ACTIVATIONS
from training.export import ServingGraph, export_bundle
from training.network import Sequential
from training.spec import NetworkSpec


def test_single_neuron_of_the_notes(tmp_path: Path):
    # inputs 0.2 and 0.7, weights 0.05 and 0.03, no bias, sigmoid: σ(0.031) = 0.5077
    neuron = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        neuron.weight.copy_(torch.tensor([[0.05, 0.03]]))
    bundle = export_module(
        neuron, tmp_path / "neuron", feature_names=["x1", "x2"], output_activation="sigmoid"
    )
    model = inference.load(bundle)
    prediction = model.predict([[0.2, 0.7]])["predictions"]
    assert round(float(prediction[0, 0]), 4) == 0.5077
    assert model.metadata.task == "regression"


def random_network(activation: str) -> Sequential:
    spec = NetworkSpec.model_validate(
        {
            "layers": [
                {"type": "dense", "units": 8, "activation": activation},
                {"type": "batch_normalization"},
                {"type": "dropout", "rate": 0.5},
                {"type": "activation", "activation": activation},
                {"type": "dense", "units": 3, "activation": "softmax"},
            ]
        }
    )
    torch.manual_seed(0)
    network = Sequential(spec, 4)
    with torch.no_grad():  # non-trivial running statistics, as after training
        network.blocks["batch_normalization"].running_mean.uniform_(-1, 1)
        network.blocks["batch_normalization"].running_var.uniform_(0.5, 2)
    return network


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_parity_on_random_inputs_for_every_activation_and_layer(activation: str, tmp_path: Path):
    network = random_network(activation)
    x_train = np.random.default_rng(1).normal(3, 2, size=(100, 4)).astype(np.float32)
    graph = ServingGraph(
        network, Scaler.fit("standard", x_train), list("abcd"), classes=["p", "q", "r"]
    )
    bundle = export_bundle(graph, tmp_path / "m", name="m", parity_rows=x_train[:10])

    rows = np.random.default_rng(2).normal(3, 3, size=(500, 4)).astype(np.float32)
    model = inference.load(bundle)
    got = model.run(rows, [o.name for o in model.metadata.outputs]).outputs
    with torch.no_grad():
        want = graph.eval()(torch.from_numpy(rows))
    # exp(x) carries x's relative error times |x|: with x up to ~46 here (values ~1e20), one
    # or two float32 roundings of x that differ between CPUs' kernels reach 1.5e-5.
    rtol = 1e-4 if activation == "exponential" else 1e-5
    for (name, value), expected in zip(got.items(), want, strict=True):
        np.testing.assert_allclose(value, expected.numpy(), rtol=rtol, atol=1e-5, err_msg=name)
    assert list(got) == ["scores", "class_index", "dense", "batch_normalization", "activation"]


def test_the_batch_axis_is_dynamic(iris_bundle: Path):
    model = inference.load(iris_bundle)
    assert model.metadata.inputs[0].shape == [-1, 4]
    for rows in (1, 2, 7, 1000):
        assert model.predict(np.ones((rows, 4))).scores.shape == (rows, 3)


def test_metadata_records_the_signature_and_provenance(iris_bundle: Path):
    metadata = json.loads((iris_bundle / "metadata.json").read_text())
    assert metadata["inputs"][0]["feature_names"] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert metadata["classes"] == ["setosa", "versicolor", "virginica"]
    assert metadata["preprocessing"]["kind"] == "standard"
    assert metadata["preprocessing"]["in_graph"] is True
    assert metadata["onnx"]["opset"] >= 18
    assert metadata["provenance"]["spec_file"] == "model.yaml"
    assert metadata["provenance"]["spec"]["compile"]["loss"] == "sparse_categorical_crossentropy"
    assert metadata["provenance"]["parity_max_abs_diff"] <= 1e-5
    assert "torch" in metadata["provenance"]["versions"]


def test_preprocessing_is_inside_the_graph_so_raw_features_go_in(tmp_path: Path):
    x_train = np.array([[0.0], [10.0]], np.float32)
    identity = nn.Identity()
    bundle = export_module(
        identity,
        tmp_path / "scale",
        feature_names=["x"],
        preprocessing=Scaler.fit("minmax", x_train),
        sample_inputs=x_train,
    )
    out = inference.load(bundle).predict([[5.0], [10.0]])["predictions"]
    np.testing.assert_allclose(out, [[0.5], [1.0]])


def test_a_users_module_exports_with_its_signature(tmp_path: Path):
    class TwoHeads(nn.Module):  # any module, trained any way
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    bundle = export_module(
        TwoHeads(),
        tmp_path / "churn",
        feature_names=["a", "b", "c"],
        classes=["stays", "leaves"],
        output_activation="softmax",
        metrics={"val_accuracy": 0.5},
        description="toy",
    )
    model = inference.load(bundle)
    assert model.name == "churn"
    assert model.metadata.metrics == {"val_accuracy": 0.5}
    prediction = model.predict_columns({"a": [0.0, 1.0], "b": [1.0, 2.0], "c": [3.0, 4.0]})
    np.testing.assert_allclose(prediction.scores.sum(axis=1), 1.0, rtol=1e-6)
    assert set(prediction.labels) <= {"stays", "leaves"}


def test_single_unit_classifier_uses_its_threshold(tmp_path: Path):
    bundle = export_module(
        nn.Identity(),
        tmp_path / "t",
        feature_names=["p"],
        classes=["no", "yes"],
        sample_inputs=[[0.1], [0.9]],
    )
    model = inference.load(bundle)
    assert model.metadata.decision_threshold == 0.5
    assert model.predict([[0.2], [0.7]]).labels == ["no", "yes"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_names": ["a", "b"]}, r"the module failed on a batch of shape \[2, 2\]"),
        (
            {"feature_names": ["a", "b", "c"], "classes": ["x", "y", "z"]},
            r"returns 2 score column\(s\) for 3 classes",
        ),
        (
            {"feature_names": ["a", "b", "c"], "output_activation": "softmaxx"},
            r"output_activation: unknown activation 'softmaxx'",
        ),
        (
            {"feature_names": ["a", "b", "c"], "sample_inputs": [[1.0, 2.0]]},
            r"sample_inputs must be at least 2 rows of 3 features",
        ),
    ],
)
def test_export_module_errors_are_clear(kwargs: dict, message: str, tmp_path: Path):
    with pytest.raises(ExportError, match=message):
        export_module(nn.Linear(3, 2), tmp_path / "bad", **kwargs)


def test_an_unfaithful_export_fails_and_leaves_nothing(tmp_path: Path):
    class Noisy(nn.Module):  # random at every call: ONNX cannot reproduce PyTorch
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)

    with pytest.raises(
        ExportError, match=r"onnxruntime differs from PyTorch on output 'predictions'"
    ):
        export_module(Noisy(), tmp_path / "noisy", feature_names=["a"])
    assert list((tmp_path / "noisy").iterdir()) == []


def test_a_module_answering_nan_is_not_published(tmp_path: Path):
    diverged = nn.Linear(2, 1)
    with torch.no_grad():
        diverged.weight.fill_(float("nan"))
    with pytest.raises(
        ExportError, match=r"PyTorch's 'predictions' is nan or infinite on 256 of 256 sample row"
    ):
        export_module(diverged, tmp_path / "nan", feature_names=["a", "b"])
    assert list((tmp_path / "nan").iterdir()) == []
