"""Convolutional, pooling, reshaping, embedding and recurrent layers, in Keras's vocabulary.

Shapes and parameter counts are checked against Keras's documented formulas (the numbers below
are what Keras 3's `model.summary()` prints for the same layers), against the torch modules
built from them, and through real training, export and onnxruntime parity."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import inference
from training import SpecError, train
from training.__main__ import main
from training.layer_specs import LAYERS, Shape
from training.network import BUILDERS
from training.sections import LAYER_TYPES
from training.spec import NetworkSpec
from training.summary import KERAS_CLASSES


@pytest.mark.parametrize(
    ("layer", "given", "shape", "params"),
    [
        ({"type": "conv2d", "filters": 32, "kernel_size": 3}, (28, 28, 1), (26, 26, 32), 320),
        (
            {"type": "conv2d", "filters": 64, "kernel_size": 3, "strides": 2, "padding": "same"},
            (26, 26, 32),
            (13, 13, 64),
            18_496,
        ),
        (
            {"type": "conv2d", "filters": 4, "kernel_size": [3, 2], "use_bias": False},
            (8, 8, 3),
            (6, 7, 4),
            72,
        ),
        ({"type": "conv1d", "filters": 8, "kernel_size": 5}, (100, 3), (96, 8), 128),
        (
            {
                "type": "conv1d",
                "filters": 6,
                "kernel_size": 3,
                "padding": "causal",
                "dilation_rate": 2,
            },
            (10, 4),
            (10, 6),
            78,
        ),
        ({"type": "max_pooling2d"}, (26, 26, 32), (13, 13, 32), 0),
        ({"type": "max_pooling2d", "pool_size": 2, "padding": "same"}, (7, 7, 3), (4, 4, 3), 0),
        (
            {"type": "max_pooling1d", "pool_size": 3, "strides": 1, "padding": "same"},
            (10, 4),
            (10, 4),
            0,
        ),
        (
            {"type": "average_pooling2d", "pool_size": 3, "strides": 2},
            (7, 7, 5),
            (3, 3, 5),
            0,
        ),
        ({"type": "average_pooling1d"}, (9, 2), (4, 2), 0),
        ({"type": "global_average_pooling2d"}, (13, 13, 64), (64,), 0),
        ({"type": "global_max_pooling2d"}, (5, 5, 7), (7,), 0),
        ({"type": "global_max_pooling1d"}, (96, 8), (8,), 0),
        ({"type": "global_average_pooling1d"}, (96, 8), (8,), 0),
        ({"type": "flatten"}, (5, 5, 64), (1600,), 0),
        ({"type": "reshape", "target_shape": [-1, 4]}, (16,), (4, 4), 0),
        ({"type": "embedding", "input_dim": 1000, "output_dim": 64}, (10,), (10, 64), 64_000),
        ({"type": "simple_rnn", "units": 32}, (10, 64), (32,), 3_104),
        ({"type": "lstm", "units": 128}, (10, 64), (128,), 98_816),
        ({"type": "lstm", "units": 4, "return_sequences": True}, (10, 64), (10, 4), 1_104),
        ({"type": "gru", "units": 256}, (10, 64), (256,), 247_296),
        ({"type": "gru", "units": 3, "return_sequences": True}, (5, 2), (5, 3), 63),
        ({"type": "dense", "units": 10}, (10, 32), (10, 10), 330),
        ({"type": "batch_normalization"}, (13, 13, 64), (13, 13, 64), 256),
        ({"type": "dropout", "rate": 0.5}, (4, 4), (4, 4), 0),
        ({"type": "activation", "activation": "softmax"}, (4, 4), (4, 4), 0),
    ],
)
def test_shapes_and_parameters_are_keras_s(
    layer: dict[str, Any], given: Shape, shape: Shape, params: int
):
    network = NetworkSpec.model_validate({"input_shape": list(given), "layers": [layer]})
    spec = network.layers[0]
    assert spec.output_shape(given) == shape
    assert spec.parameters(given) == params
    module = BUILDERS[type(spec)](spec, given, shape)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == spec.trainable_parameters(given)
    module.eval()
    x = torch.rand(2, *given) * (10 if layer["type"] == "embedding" else 1)
    assert tuple(module(x).shape) == (2, *shape)


def test_every_layer_type_is_built_named_and_summarised():
    tags = {cls.model_fields["type"].annotation.__args__[0] for cls in LAYERS}  # type: ignore[union-attr]
    assert tags == set(LAYER_TYPES) == set(KERAS_CLASSES)
    assert set(BUILDERS) == set(LAYERS)


@pytest.mark.parametrize(
    ("layers", "input_shape", "message"),
    [
        (
            [{"type": "conv2d", "filters": 4, "kernel_size": 3}],
            None,
            r"model\.layers: conv2d takes \(height, width, channels\) per row, got \(4,\); set "
            r"model\.input_shape",
        ),
        (
            [{"type": "conv2d", "filters": 4, "kernel_size": [3]}],
            [2, 2, 1],
            r"kernel_size must be a positive integer or a list of 2, got \[3\]",
        ),
        (
            [{"type": "conv2d", "filters": 4, "kernel_size": 3}],
            [2, 2, 1],
            r"conv2d: a kernel of \[3, 3\] does not fit the input \(2, 2, 1\) with padding "
            r"'valid'; use a smaller kernel_size or padding: same",
        ),
        (
            [{"type": "conv2d", "filter": 4, "kernel_size": 3}],
            [2, 2, 1],
            r"model\.layers\.0: unknown key 'filter'; allowed: .*filters",
        ),
        (
            [{"type": "lstm", "units": 4}],
            [2, 2, 1],
            r"lstm takes \(steps, features\) per row, got \(2, 2, 1\)",
        ),
        (
            [{"type": "gru", "units": 4, "reset_after": False}],
            [4, 1],
            r"model\.layers\.0\.reset_after: Input should be True",
        ),
        (
            [{"type": "lstm", "units": 4, "return_sequences": True}],
            [4, 1],
            r"the last layer \(lstm\) gives \(4, 4\) per row, but the model must give one vector "
            r"per row; add a flatten or global pooling layer, or set return_sequences: false",
        ),
        (
            [{"type": "reshape", "target_shape": [3, -1]}],
            [4],
            r"reshape: \(4,\) \(4 values\) cannot become \[3, -1\]",
        ),
        (
            [{"type": "embedding", "input_dim": 0, "output_dim": 2}],
            [4],
            r"model\.layers\.0\.input_dim: Input should be greater than 0",
        ),
    ],
)
def test_a_wrong_layer_is_one_line(
    layers: list[dict[str, Any]], input_shape: list[int] | None, message: str, tmp_path: Path
):
    folder = write(tmp_path, "bad", iris_like(layers, input_shape))
    with pytest.raises(SpecError, match=message) as e:
        train(folder)
    assert "\n" not in str(e.value)


def test_summary_is_keras_s(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(write(tmp_path, "digits", DIGITS_CNN)), "--summary"]) == 0
    assert capsys.readouterr().out == SUMMARY
    assert not (tmp_path / "digits" / "1").exists()


@pytest.mark.slow
def test_a_digits_cnn_learns_and_serves_images(tmp_path: Path):
    result = train(write(tmp_path, "digits", DIGITS_CNN), verbose=0)
    assert result.metrics["val_accuracy"] > 0.93
    model = inference.load(result.bundle)
    (features,) = model.metadata.inputs
    assert (features.name, features.shape, features.feature_names) == (
        "features",
        [-1, 8, 8, 1],
        None,
    )
    hidden = {o.name: o.shape for o in model.metadata.outputs if o.role == "layer"}
    assert hidden == {
        "conv2d": [-1, 8, 8, 16],
        "batch_normalization": [-1, 8, 8, 16],
        "max_pooling2d": [-1, 4, 4, 16],
        "conv2d_1": [-1, 2, 2, 32],
        "flatten": [-1, 128],
    }
    images = np.loadtxt(DIGITS_CSV, delimiter=",", max_rows=50)
    pixels = (images[:, :64] / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    answer = model.predict({"features": pixels}, outputs=["class_index", "flatten"])
    assert (answer["class_index"] == images[:, 64]).mean() > 0.9
    assert answer["flatten"].shape == (50, 128)  # an image's feature vector


@pytest.mark.slow
def test_an_lstm_learns_a_sequence_task_from_parquet_lists(tmp_path: Path):
    """Sequences of 12 token ids; the label says whether token 7 occurs. Parquet holds one
    list per row, as users store sequences; the embedding reads the ids."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=(1500, 12))
    tokens[tokens == 7] = 8
    has = rng.random(1500) < 0.5
    tokens[has, rng.integers(0, 12, size=int(has.sum()))] = 7
    folder = tmp_path / "seq"
    folder.mkdir()
    table = pa.table({"tokens": pa.array(tokens.tolist()), "has_seven": has.astype(int)})
    pq.write_table(table, folder / "rows.parquet")
    spec = {
        "name": "seq",
        "data": {
            "source": "parquet:rows.parquet",
            "features": ["tokens"],
            "label": "has_seven",
            "classes": ["no", "yes"],
            "validation_split": 0.2,
        },
        "model": {
            "input_shape": [12],
            "layers": [
                {"type": "embedding", "input_dim": 20, "output_dim": 8},
                {"type": "lstm", "units": 16},
                {"type": "dense", "units": 1, "activation": "sigmoid"},
            ],
        },
        "compile": {
            "optimizer": {"name": "adam", "learning_rate": 0.01},
            "loss": "binary_crossentropy",
            "metrics": ["accuracy"],
        },
        "fit": {"batch_size": 32, "epochs": 12, "verbose": 0},
    }
    result = train(write(tmp_path, "seq", spec))
    assert result.metrics["val_accuracy"] > 0.95
    model = inference.load(result.bundle)
    answer = model.predict({"features": tokens[:100].astype(np.float32)}, outputs=["class_index"])
    assert (answer["class_index"] == has[:100]).mean() > 0.95


@pytest.mark.parametrize(
    "layers",
    [
        [
            {"type": "conv1d", "filters": 6, "kernel_size": 3, "padding": "causal"},
            {"type": "average_pooling1d", "pool_size": 3, "strides": 2, "padding": "same"},
            {"type": "max_pooling1d", "padding": "same"},
            {"type": "gru", "units": 8, "return_sequences": True},
            {"type": "simple_rnn", "units": 8, "activation": "relu", "return_sequences": True},
            {"type": "global_max_pooling1d"},
        ],
        [
            {"type": "reshape", "target_shape": [8, 8, 1]},
            {
                "type": "conv2d",
                "filters": 3,
                "kernel_size": [3, 2],
                "strides": 2,
                "padding": "same",
            },
            {"type": "average_pooling2d", "pool_size": 3, "padding": "same"},
            {"type": "batch_normalization"},
            {"type": "global_max_pooling2d"},
        ],
        [
            {"type": "reshape", "target_shape": [8, 8, 1]},
            {"type": "max_pooling2d", "pool_size": 3, "padding": "same"},
            {"type": "activation", "activation": "relu"},
            {"type": "global_average_pooling2d"},
        ],
        [
            {"type": "conv1d", "filters": 4, "kernel_size": 2, "dilation_rate": 2},
            {"type": "lstm", "units": 5, "return_sequences": True},
            {"type": "dense", "units": 3, "activation": "tanh"},
            {"type": "global_average_pooling1d"},
        ],
    ],
    ids=["sequence", "image", "pooled", "dilated"],
)
def test_every_layer_exports_with_parity(layers: list[dict[str, Any]], tmp_path: Path):
    """Two epochs and an export: the export's own check compares onnxruntime with torch on
    held-out and random rows (1e-5), so a bundle is only written when they agree."""
    spec = iris_like([], [8, 8] if layers[0]["type"] != "reshape" else [64])
    spec["data"] = {"source": "builtin:digits", "features": ["pixels"], "label": "digit"}
    spec["model"]["layers"] = [*layers, {"type": "dense", "units": 10, "activation": "softmax"}]
    spec["fit"]["epochs"] = 2
    result = train(write(tmp_path, "m", spec), verbose=0)
    assert result.bundle.is_dir()
    assert (result.bundle / "metadata.json").is_file()


def test_features_must_fill_the_input_shape(tmp_path: Path):
    spec = iris_like([{"type": "flatten"}, {"type": "dense", "units": 10}], [8, 8, 2])
    spec["data"] = {"source": "builtin:digits", "features": ["pixels"], "label": "digit"}
    with pytest.raises(
        SpecError, match=r"model\.input_shape \[8, 8, 2\] takes 128 values per row, but the "
    ):
        train(write(tmp_path, "m", spec))
    spec["model"].pop("input_shape")
    with pytest.raises(SpecError, match=r"the features give 64 values per row; set input_shape"):
        train(write(tmp_path, "m", spec))


def test_ragged_list_rows_are_named(tmp_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    table = pa.table({"x": pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]]), "y": [0, 1, 0]})
    pq.write_table(table, folder / "rows.parquet")
    spec = iris_like([{"type": "dense", "units": 2, "activation": "softmax"}], [2])
    spec["data"] = {"source": "parquet:rows.parquet", "features": ["x"], "label": "y"}
    with pytest.raises(SpecError, match=r"column 'x': row 1 holds 1 values and row 0 2"):
        train(write(tmp_path, "m", spec))


def iris_like(layers: list[dict[str, Any]], input_shape: list[int] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "m",
        "data": {
            "source": "builtin:iris",
            "features": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "label": "species",
        },
        "model": {"layers": layers},
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 1, "verbose": 0},
    }
    if input_shape is not None:
        spec["model"]["input_shape"] = input_shape
    return spec


def write(tmp_path: Path, name: str, spec: dict[str, Any]) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


DIGITS_CSV = Path(__file__).parents[2] / "training" / "datasets" / "digits.csv.gz"

DIGITS_CNN: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[2] / "models" / "digits" / "model.yaml").read_text()
)
"""The shipped digits model's spec."""

SUMMARY = """\
Model: "digits"
________________________________________________________________________________
 Layer (type)                              Output Shape              Param #
================================================================================
 conv2d (Conv2D)                           (None, 8, 8, 16)          160
 batch_normalization (BatchNormalization)  (None, 8, 8, 16)          64
 max_pooling2d (MaxPooling2D)              (None, 4, 4, 16)          0
 conv2d_1 (Conv2D)                         (None, 2, 2, 32)          4,640
 flatten (Flatten)                         (None, 128)               0
 dropout (Dropout)                         (None, 128)               0
 dense (Dense)                             (None, 10)                1,290
================================================================================
Total params: 6,154
Trainable params: 6,122
Non-trainable params: 32
________________________________________________________________________________
"""


def test_token_ids_must_fit_the_embedding(tmp_path: Path):
    spec = iris_like(
        [
            {"type": "embedding", "input_dim": 5, "output_dim": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 3, "activation": "softmax"},
        ],
        None,
    )
    with pytest.raises(
        SpecError,
        match=r"data\.features: the first layer \(embedding\) takes token ids, whole numbers "
        r"from 0 to 4 \(its input_dim is 5\); 150 row\(s\) hold others, the first at row 0: 5\.1",
    ):
        train(write(tmp_path, "m", spec))
    spec["preprocessing"] = {"scale": "standard"}
    with pytest.raises(SpecError, match=r"preprocessing\.scale would scale the token ids"):
        train(write(tmp_path, "m", spec))


@pytest.fixture(scope="module")
def digits_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained digits CNN (the base of the transfer-learning tests), and parity data."""
    root = tmp_path_factory.mktemp("transfer")
    spec = {**DIGITS_CNN, "fit": {"batch_size": 32, "epochs": 8, "verbose": 0}}
    train(write(root, "digits", spec))
    images = np.loadtxt(DIGITS_CSV, delimiter=",")
    folder = root / "parity"
    folder.mkdir()
    table = pa.table(
        {
            "image": pa.array((images[:, :64] / 16.0).tolist()),
            "parity": np.where(images[:, 64] % 2 == 1, "odd", "even"),
        }
    )
    pq.write_table(table, folder / "images.parquet")
    return root


def transfer_spec(trainable: bool, until: str = "flatten") -> dict[str, Any]:
    return {
        "name": "parity",
        "data": {
            "source": "parquet:images.parquet",
            "features": ["image"],
            "label": "parity",
            "validation_split": 0.2,
        },
        "model": {
            "base": {"model": "../digits", "until": until, "trainable": trainable},
            "layers": [{"type": "dense", "units": 2, "activation": "softmax"}],
        },
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
        "fit": {"epochs": 4, "verbose": 0},
    }


def stored(bundle: Path) -> dict[str, np.ndarray]:
    with np.load(bundle / "weights.npz") as weights:
        return {key: weights[key] for key in weights.files}


@pytest.mark.slow
@pytest.mark.parametrize("trainable", [False, True])
def test_transfer_learning_starts_from_the_base_s_weights(
    digits_base: Path, trainable: bool, capsys: pytest.CaptureFixture[str]
):
    folder = write(digits_base, "parity", transfer_spec(trainable))
    base_bundle = digits_base / "digits" / "1"
    assert main([str(folder), "--summary"]) == 0
    totals = capsys.readouterr().out.splitlines()[-4:-1]
    assert totals == (
        ["Total params: 5,122", "Trainable params: 5,090", "Non-trainable params: 32"]
        if trainable
        else ["Total params: 5,122", "Trainable params: 258", "Non-trainable params: 4,864"]
    )
    result = train(folder)
    base, new = stored(base_bundle), stored(result.bundle)
    blocks = {"conv2d", "batch_normalization", "conv2d_1"}
    taken = [k for k in base if k.startswith("network.") and k.split(".")[2] in blocks]
    assert len(taken) == 9  # two convolutions' kernels and biases; the normalization's scale,
    # offset, moving mean and variance, and count of batches seen
    same = [np.array_equal(base[k], new[k]) for k in taken]
    assert all(same) if not trainable else not all(same)
    assert np.array_equal(base["scaler.offset"], new["scaler.offset"])
    metadata = inference.load(result.bundle).metadata
    assert metadata.provenance is not None and metadata.provenance.base == {
        "model": "digits",
        "version": 1,
        "sha256": inference.load(base_bundle).metadata.onnx.sha256,  # type: ignore[union-attr]
        "until": "flatten",
        "trainable": trainable,
    }
    assert result.metrics["val_loss"] < 0.5
    shutil.rmtree(result.bundle)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s["model"]["base"].update(until="flaten"),
            r"model\.base\.until: 'flaten' is not a layer of digits; its layers: conv2d, "
            r"batch_normalization, max_pooling2d, conv2d_1, flatten, dropout, dense$",
        ),
        (
            lambda s: s["model"]["base"].update(model="../nowhere"),
            r"model\.base\.model: \.\./nowhere: no trained model version there$",
        ),
        (
            lambda s: s["model"]["base"].update(version=3),
            r"model\.base\.version: \.\./digits has no version 3; it has 1$",
        ),
        (
            lambda s: s["model"].update(input_shape=[64]),
            r"model\.input_shape: the base model's input shape is used; remove it$",
        ),
        (
            lambda s: s.update(preprocessing={"scale": "minmax"}),
            r"preprocessing\.scale: the base model's scaling \(none\) is used",
        ),
    ],
)
def test_a_wrong_base_is_one_line(digits_base: Path, edit: Any, message: str):
    spec = transfer_spec(False)
    edit(spec)
    with pytest.raises(SpecError, match=message):
        train(write(digits_base, "wrong", spec))


def test_a_base_without_weights_says_to_retrain_it(tmp_path: Path):
    shutil.copytree(Path(__file__).parents[2] / "models" / "iris", tmp_path / "iris")
    spec = transfer_spec(False, until="dense")
    spec["model"]["base"]["model"] = "../iris"
    with pytest.raises(SpecError, match=r"was not trained from a spec by this version of the "):
        train(write(tmp_path, "m", spec))
