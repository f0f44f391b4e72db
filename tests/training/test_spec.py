"""A wrong spec is reported with the file, the key path and what was expected, before any work."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODELS, SpecWriter
from training import SpecError, load_spec, train
from training.layer_specs import DenseSpec, LayerSpec
from training.sections import LAYER_TYPES


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def test_the_committed_specs_are_valid():
    for name in ("side_effects", "iris", "digits"):
        spec, file = load_spec(MODELS / name)
        assert spec.name == name
        assert file.name == "model.yaml"


def test_the_seed_model_is_the_course_model():
    spec, _ = load_spec(MODELS / "side_effects")
    layers = spec.network.layers
    assert [(x.units, x.activation) for x in layers if isinstance(x, DenseSpec)] == [
        (6, "relu"),
        (32, "relu"),
        (2, "sigmoid"),
    ]
    assert spec.compile.optimizer.name == "adam"
    assert spec.compile.optimizer.params == {"learning_rate": 0.0001}
    assert (spec.fit.batch_size, spec.fit.epochs, spec.validation_split) == (10, 20, 0.1)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("colour", "red", r"\(top level\): unknown key 'colour'; allowed: compile, data"),
        ("model.layers.0.unitz", 3, r"model\.layers\.0: unknown key 'unitz'; allowed: .*units"),
        (
            "model.layers.0.units",
            "six",
            r"model\.layers\.0\.units: must be a whole number, got 'six' \(text\)$",
        ),
        (
            "model.layers.0.units",
            "16",
            r"units: must be a whole number, got '16' \(text, in quotes; write it without the",
        ),
        ("model.layers.0.units", True, r"units: must be a whole number, got true \(a boolean\)$"),
        ("model.layers.0.units", 16.5, r"units: must be a whole number, got 16\.5 \(a decimal"),
        (
            "model.layers.0.units",
            10**12,
            r"the network has [0-9,]+ parameters \([0-9,.]+ GiB of float32 weights\); at most",
        ),
        ("fit.shuffle", "yes", r"fit\.shuffle: must be true or false, got 'yes' \(text in YAML"),
        ("compile.optimizer.learning_rate", float("nan"), r"learning_rate must be a finite"),
        ("model.layers.0.units", 0, r"model\.layers\.0\.units: Input should be greater than 0"),
        (
            "model.layers.0.type",
            "conv3d",
            r"model\.layers\.0: unknown layer type 'conv3d'; known: dense, activation, dropout, "
            r"batch_normalization, conv1d, conv2d, .*, lstm, gru$",
        ),
        (
            "model.layers.0.activation",
            "rleu",
            r"model\.layers\.0\.activation: unknown activation 'rleu'",
        ),
        (
            "compile.loss",
            "crossentropy",
            r"compile\.loss: unknown loss 'crossentropy'; known: .*mse",
        ),
        (
            "compile.optimizer",
            "adamm",
            r"compile\.optimizer: unknown optimizer 'adamm'; known: .*adam",
        ),
        (
            "compile.optimizer.beta",
            0.9,
            r"unknown parameter 'beta' for optimizer 'adam'; known: .*beta_1",
        ),
        ("compile.optimizer.learning_rate", "fast", r"learning_rate must be a number"),
        ("compile.metrics", ["accuracy", "acuracy"], r"compile\.metrics: unknown metric 'acuracy'"),
        ("model.input_shape", [2], r"model\.input_shape \[2\] does not fit the 4 feature"),
        ("model.layers.1.units", 2, r"last layer has 2 unit\(s\) but data\.classes names 3"),
        ("data.validation_split", 1.5, r"data\.validation_split: Input should be less than 1"),
        ("data.source", "s3://bucket/x", r"data\.source: expected builtin:<name>, csv:<path>"),
        ("data.source", "builtin:mnist", r"data\.source: unknown builtin data set 'mnist'; known"),
        ("data.source", "csv:missing.csv", r"data\.source: missing\.csv not found"),
        ("data.features", ["sepal_length", "sepal_length", "a", "b"], r"names must be unique"),
        (
            "data.features",
            ["sepal_length", "sepal_width", "petal_length", "stem"],
            r"data\.features: column 'stem' is not in builtin:iris; columns: sepal_length",
        ),
        ("data.label", "genus", r"data\.label: column 'genus' is not in builtin:iris"),
        (
            "data.classes",
            ["setosa", "versicolor", "virginia"],
            r"data\.label: label\(s\) 'virginica' are not in data\.classes",
        ),
        (
            "fit.early_stopping",
            {"monitor": "val_acc"},
            r"early_stopping\.monitor 'val_acc' is not logged; known: loss, accuracy, val_loss",
        ),
        ("fit.verbose", 3, r"fit\.verbose: Input should be 0, 1 or 2"),
        (
            "compile.optimizer.learning_rate",
            None,
            r"learning_rate must be a number, got an empty value \(null\)",
        ),
        ("fit.batch_size", -1, r"fit\.batch_size: Input should be greater than 0"),
    ],
)
def test_spec_errors_name_file_key_and_expectation(
    make_spec: SpecWriter, path: str, value: Any, message: str
):
    folder = make_spec(lambda s: set_path(s, path, value))
    with pytest.raises(SpecError, match=message) as error:
        train(folder)
    assert str(error.value).startswith(f"{folder / 'model.yaml'}: ")
    assert not any(p.name.isdigit() for p in folder.iterdir()), "no bundle may be written"


def test_early_stopping_on_validation_needs_validation_rows(make_spec: SpecWriter):
    def no_validation(spec: dict[str, Any]) -> None:
        spec["data"]["validation_split"] = 0.0
        spec["fit"]["early_stopping"] = {"monitor": "val_loss"}

    with pytest.raises(SpecError, match=r"monitor 'val_loss' needs validation rows"):
        load_spec(make_spec(no_validation))


def test_a_missing_section_is_named(make_spec: SpecWriter):
    folder = make_spec(lambda s: s.pop("compile"))
    with pytest.raises(SpecError, match=r"compile: Field required"):
        load_spec(folder)


def test_invalid_yaml_is_one_line(tmp_path: Path):
    (tmp_path / "model.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"model\.yaml: not valid YAML: ") as error:
        load_spec(tmp_path)
    assert "\n" not in str(error.value)


def test_a_key_given_twice_is_an_error_not_the_last_one_wins(make_spec: SpecWriter):
    folder = make_spec()
    with (folder / "model.yaml").open("a") as f:
        f.write("search:\n  space:\n    fit.batch_size: [8]\n    fit.batch_size: [16]\n")
    line = len((folder / "model.yaml").read_text().splitlines())
    with pytest.raises(SpecError) as e:
        load_spec(folder)
    assert str(e.value) == (
        f"{folder / 'model.yaml'}: not valid YAML: key 'fit.batch_size' given twice at line "
        f"{line}, column 5"
    )


def test_a_folder_without_a_spec(tmp_path: Path):
    with pytest.raises(SpecError, match=r"no such spec file"):
        load_spec(tmp_path)


def test_first_layer_input_shape_is_accepted_as_in_keras(make_spec: SpecWriter):
    def keras_style(spec: dict[str, Any]) -> None:
        del spec["model"]["input_shape"]
        spec["model"]["layers"][0]["input_shape"] = [4]

    spec, _ = load_spec(make_spec(keras_style))
    assert spec.network.resolved_input_shape == [4]


def test_older_lr_alias_is_accepted(make_spec: SpecWriter):
    spec, _ = load_spec(
        make_spec(lambda s: set_path(s, "compile.optimizer", {"name": "sgd", "lr": 0.1}))
    )
    assert spec.compile.optimizer.params == {"lr": 0.1}


def test_layer_names_follow_keras_and_must_be_unique(make_spec: SpecWriter):
    spec, _ = load_spec(make_spec())
    assert spec.network.layer_names == ["dense", "dense_1"]
    folder = make_spec(lambda s: set_path(s, "model.layers.1.name", "dense"))
    with pytest.raises(SpecError, match=r"layer names must be unique; repeated: dense"):
        load_spec(folder)
    folder = make_spec(lambda s: set_path(s, "model.layers.0.name", "scores"), name="n")
    with pytest.raises(SpecError, match=r"reserved for outputs"):
        load_spec(folder)


def test_error_paths_drop_exactly_the_layer_type_tags():
    """`describe` removes the tag pydantic puts after a layer's index (`model.layers.0.dense.units`
    reads `model.layers.0.units`): it must know every layer type."""
    union, _ = typing.get_args(LayerSpec)
    tags = {
        typing.get_args(layer.model_fields["type"].annotation)[0]
        for layer in typing.get_args(union)
    }
    assert tags == set(LAYER_TYPES)
