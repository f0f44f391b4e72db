"""`export_module` with named N-d tensors: a CNN on images and a two-input INT64 token model,
exported, loaded with the service's loader and compared with PyTorch on inputs the export never
saw (another batch size, other sequence lengths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import inference
from training import ExportError, Scaler, export_module

TOLERANCE = 1e-5
VOCABULARY = 50


class Cnn(nn.Module):
    """[N, 1, 8, 8] images → class probabilities and a rank-4 feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        return torch.softmax(self.head(features.flatten(1)), dim=-1), features


class Tokens(nn.Module):
    """Token ids and a mask, both INT64 [N, L] → logits [N, 2] and hidden states [N, L, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 8)
        self.head = nn.Linear(8, 2)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        hidden = self.embedding(input_ids) * mask
        pooled = hidden.sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled), hidden


class TokenClassifier(Tokens):
    """Returns a dict, as a Hugging Face model's output is."""

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"logits": super().forward(input_ids, attention_mask)[0]}


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 8, 8), dtype=np.float32)


def tokens(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """In the order opposite to `forward`'s: the export binds them by name."""
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, length), np.int64)
    mask[0, length // 2 :] = 0
    return {"attention_mask": mask, "input_ids": rng.integers(0, VOCABULARY, (rows, length))}


SEQUENCE = {"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}}


def seeded(module: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return module().eval()


def torch_outputs(module: nn.Module, *arrays: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        result = module(*(torch.from_numpy(a) for a in arrays))
    values = result.values() if isinstance(result, dict) else result
    return [t.numpy() for t in values]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    module = seeded(Cnn)
    repo = tmp_path_factory.mktemp("repo")
    bundle = export_module(
        module,
        repo / "digits",
        sample_inputs={"image": images(4, seed=1)},
        output_names=["probabilities", "features"],
    )
    return module, bundle


@pytest.fixture(scope="module")
def token_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    module = seeded(Tokens)
    repo = tmp_path_factory.mktemp("repo")
    bundle = export_module(
        module,
        repo / "tokens",
        sample_inputs=tokens(3, 5, seed=1),
        output_names=["logits", "hidden"],
        dynamic_axes={**SEQUENCE, "hidden": {1: "sequence"}},
    )
    return module, bundle


def test_a_cnn_on_images_answers_as_torch_does(cnn: tuple[nn.Module, Path]):
    module, bundle = cnn
    model = inference.load(bundle)
    fresh = images(7, seed=2)
    got = model.predict({"image": fresh})
    want = torch_outputs(module, fresh)
    np.testing.assert_allclose(got["probabilities"], want[0], rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(got["features"], want[1], rtol=TOLERANCE, atol=TOLERANCE)


def test_a_cnn_bundle_describes_its_tensors(cnn: tuple[nn.Module, Path]):
    meta = inference.load(cnn[1]).metadata
    assert [(i.name, i.datatype, i.shape) for i in meta.inputs] == [
        ("image", "FP32", [-1, 1, 8, 8])
    ]
    assert [(o.name, o.shape, o.role) for o in meta.outputs] == [
        ("probabilities", [-1, 10], "output"),
        ("features", [-1, 4, 4, 4], "output"),
    ]
    assert (
        meta.inputs[0].description == "the module's positional argument 1; dynamic axes: 0 (batch)"
    )
    assert meta.task is None
    assert meta.batchable
    assert meta.provenance is not None
    assert meta.provenance.source == "module"
    assert meta.provenance.parity_max_abs_diff is not None
    assert meta.provenance.parity_max_abs_diff <= TOLERANCE


@pytest.mark.parametrize(("rows", "length"), [(1, 2), (4, 5), (2, 11)])
def test_a_token_model_takes_any_sequence_length(
    token_model: tuple[nn.Module, Path], rows: int, length: int
):
    module, bundle = token_model
    feeds = tokens(rows, length, seed=rows + length)
    got = inference.load(bundle).predict(feeds)
    want = torch_outputs(module, feeds["input_ids"], feeds["attention_mask"])
    assert got["hidden"].shape == (rows, length, 8)
    np.testing.assert_allclose(got["logits"], want[0], rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(got["hidden"], want[1], rtol=TOLERANCE, atol=TOLERANCE)


def test_a_token_bundle_keeps_the_sample_order_and_names_its_axes(
    token_model: tuple[nn.Module, Path],
):
    metadata = json.loads((token_model[1] / "metadata.json").read_text())
    inputs = {i["name"]: i for i in metadata["inputs"]}
    assert list(inputs) == ["attention_mask", "input_ids"]
    assert inputs["input_ids"]["datatype"] == "INT64"
    assert inputs["input_ids"]["shape"] == [-1, -1]
    assert inputs["input_ids"]["description"] == (
        "the module's argument 'input_ids'; dynamic axes: 0 (batch), 1 (sequence)"
    )
    outputs = {o["name"]: o["shape"] for o in metadata["outputs"]}
    assert outputs == {"logits": [-1, 2], "hidden": [-1, -1, 8]}


def test_a_classifier_gets_scores_and_a_class_index(tmp_path: Path):
    module = seeded(TokenClassifier)
    bundle = export_module(
        module,
        tmp_path / "sentiment",
        sample_inputs=tokens(3, 4, seed=3),
        dynamic_axes={"input_ids": [1], "attention_mask": [1]},  # torch's list form
        classes=["negative", "positive"],
        output_activation="softmax",
    )
    model = inference.load(bundle)
    feeds = tokens(6, 9, seed=4)
    prediction = model.predict(feeds)
    logits = torch_outputs(module, feeds["input_ids"], feeds["attention_mask"])[0]
    want = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    np.testing.assert_allclose(prediction.scores, want, rtol=TOLERANCE, atol=TOLERANCE)
    assert prediction.labels == [["negative", "positive"][i] for i in want.argmax(axis=1)]
    meta = model.metadata
    assert meta.task == "classification"
    assert [(o.name, o.role) for o in meta.outputs] == [
        ("logits", "scores"),
        ("class_index", "class_index"),
    ]


def test_a_graph_with_external_data_loads_from_beside_it(
    cnn: tuple[nn.Module, Path], tmp_path: Path
):
    """Large exports keep their weights in `model.onnx.data`: the loader reads them from the
    version folder, as onnxruntime does for a graph loaded from its path."""
    folder = tmp_path / "external" / "1"
    folder.mkdir(parents=True)
    onnx.save_model(
        onnx.load(str(cnn[1] / "model.onnx")),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    assert (folder / "model.onnx.data").stat().st_size > 1000
    fresh = images(3, seed=5)
    got = inference.load(folder.parent).predict({"image": fresh})
    np.testing.assert_allclose(got["probabilities"], torch_outputs(cnn[0], fresh)[0], atol=1e-6)


class Frozen(nn.Module):
    """`int()` makes the batch size a constant of the trace: right in torch, wrong in ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1) * 2


def test_a_batch_size_frozen_by_the_trace_is_caught(tmp_path: Path):
    with pytest.raises(
        ExportError, match=r"onnxruntime's 'output' has shape \[2, 6\] where PyTorch's has \[3, 4\]"
    ):
        export_module(Frozen(), tmp_path / "frozen", sample_inputs={"x": np.ones((2, 2, 2))})
    assert not list((tmp_path / "frozen").glob("*"))


class Unused(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids * 2


TOKENS_3 = tokens(3, 4, seed=0)
IMAGES_3 = {"image": images(3, 0)}
BAD_ARGUMENTS = [
    pytest.param(
        Cnn,
        {"sample_inputs": images(3, 0)},
        r"sample_inputs must be a dict of input name → array .*, got a float32 array of shape "
        r"\[3, 1, 8, 8\]; for a module of \[rows, features\] floats pass feature_names",
        id="an array, not a dict",
    ),
    pytest.param(
        Cnn,
        {},
        r"sample_inputs must be a dict of input name → array .*, got a NoneType",
        id="no samples",
    ),
    pytest.param(
        Cnn,
        {"sample_inputs": {"image": images(3, 0).tolist()}},
        r"sample_inputs\['image'\] must be an array of numbers or booleans .*, got a list",
        id="a list, not an array",
    ),
    pytest.param(
        Tokens,
        {"sample_inputs": {**TOKENS_3, "input_ids": TOKENS_3["input_ids"][:2]}},
        r"sample_inputs have different batch sizes \(first dimensions\): "
        r"\{'attention_mask': 3, 'input_ids': 2\}",
        id="batch sizes differ",
    ),
    pytest.param(
        Cnn,
        {"sample_inputs": {"image": images(1, 0)}},
        r"sample_inputs need at least 2 examples",
        id="one example",
    ),
    pytest.param(
        Cnn,
        {"sample_inputs": {"image": images(3, 0)[:, :, :5, :5]}},
        r"the module failed on sample_inputs \(image float32 \[3, 1, 5, 5\]\) with their first "
        r"row repeated at the end: ",
        id="the module fails",
    ),
    pytest.param(
        Tokens,
        {"sample_inputs": TOKENS_3, "dynamic_axes": {"ids": {1: "sequence"}}},
        r"dynamic_axes names 'ids', which is neither an input nor an output; they are: "
        r"'attention_mask', 'input_ids', 'output', 'output_1'",
        id="dynamic_axes names an unknown tensor",
    ),
    pytest.param(
        Tokens,
        {"sample_inputs": TOKENS_3, "dynamic_axes": {"input_ids": {2: "sequence"}}},
        r"dynamic_axes\['input_ids'\]: 2 is not an axis of its shape \[3, 4\] \(axes 0 to 1\)",
        id="dynamic_axes names an axis past the rank",
    ),
    pytest.param(
        Tokens,
        {"sample_inputs": TOKENS_3, "output_names": ["logits"]},
        r"output_names has 1 name\(s\) for the module's 2 output\(s\)",
        id="too few output names",
    ),
    pytest.param(
        Tokens,
        {"sample_inputs": TOKENS_3, "classes": ["a", "b"], "output_names": ["class_index", "h"]},
        r"output names \['class_index', 'class_index', 'h'\] repeat a name",
        id="an output named class_index",
    ),
    pytest.param(
        Cnn,
        {"sample_inputs": IMAGES_3, "classes": ["a", "b", "c"]},
        r"with 3 classes the module's first output must be float scores \[rows, 3\]; it is "
        r"torch.float32 \[4, 10\]",
        id="scores do not fit the classes",
    ),
    pytest.param(
        Cnn,
        {"sample_inputs": IMAGES_3, "preprocessing": Scaler.fit("minmax", np.eye(2))},
        r"preprocessing \(a Scaler\) scales tabular features",
        id="a scaler for tensors",
    ),
    pytest.param(
        Cnn,
        {"sample_inputs": IMAGES_3, "feature_names": ["a"]},
        r"feature_names describe one \[rows, features\] input",
        id="feature names with a dict",
    ),
    pytest.param(
        Cnn,
        {"feature_names": ["a"], "output_names": ["y"]},
        r"output_names and dynamic_axes are for a module of named tensors",
        id="output names for a tabular module",
    ),
    pytest.param(
        Unused,
        {"sample_inputs": TOKENS_3},
        r"the exported graph has no input 'attention_mask': the module does not use it",
        id="an unused input",
    ),
]


@pytest.mark.parametrize(("module", "kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_errors_and_leave_nothing(
    module: type[nn.Module], kwargs: dict[str, Any], message: str, tmp_path: Path
):
    with pytest.raises(ExportError, match=message) as raised:
        export_module(seeded(module), tmp_path / "bad", **kwargs)
    assert "\n" not in str(raised.value)
    assert not list((tmp_path / "bad").glob("*"))
