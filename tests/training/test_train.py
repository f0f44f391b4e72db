"""Training from a spec: quality, determinism, data sources, progress output, early stopping."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import inference
from tests.conftest import MODELS, SpecWriter
from training import SpecError, train
from training.optimizers import OPTIMIZERS, Optimizer
from training.trainer import fit, prepare


def committed_spec(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(MODELS / name / "model.yaml", folder / "model.yaml")
    return folder


@pytest.mark.slow
def test_side_effects_reaches_the_course_accuracy(tmp_path: Path):
    result = train(committed_spec("side_effects", tmp_path), verbose=0)
    assert result.metrics["val_accuracy"] >= 0.90
    assert set(result.metrics) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.bundle == tmp_path / "side_effects" / "1"
    assert {p.name for p in result.bundle.iterdir()} == {
        "model.onnx",
        "metadata.json",
        "training.png",
        "weights.npz",  # what a transfer-learning spec starts from
    }
    metadata = json.loads((result.bundle / "metadata.json").read_text())
    assert metadata["metrics"] == result.metrics
    assert metadata["provenance"]["rows"] == {"train": 1890, "validation": 210}
    assert len(metadata["history"]["val_accuracy"]) == 20


@pytest.mark.slow
def test_iris_reaches_093(tmp_path: Path):
    result = train(committed_spec("iris", tmp_path), verbose=0)
    assert result.metrics["val_accuracy"] >= 0.93


def test_same_seed_same_metrics(make_spec: SpecWriter, iris_bundle: Path):
    """The session's iris bundle was trained from the same spec, in the same process."""
    again = train(make_spec())
    earlier = json.loads((iris_bundle / "metadata.json").read_text())
    assert again.history.columns == earlier["history"]
    assert (again.bundle / "model.onnx").read_bytes() == (iris_bundle / "model.onnx").read_bytes()


def test_another_seed_gives_other_metrics(make_spec: SpecWriter):
    first = fit(prepare(make_spec(name="a")))
    other = fit(prepare(make_spec(lambda s: s["data"].update(seed=8), name="b")))
    assert first.history.epochs != other.history.epochs


def test_each_run_exports_the_next_version(make_spec: SpecWriter):
    folder = make_spec(lambda s: s["fit"].update(epochs=1))
    assert [train(folder).bundle.name for _ in range(2)] == ["1", "2"]
    assert inference.load(folder).version == 2
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]


def test_csv_source_with_string_labels_and_inferred_classes(make_spec: SpecWriter, tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    lines = ["a,b,kind"] + [f"{p:.4f},{q:.4f},{'up' if p + q > 0 else 'down'}" for p, q in x]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "points.csv").write_text("\n".join(lines) + "\n")

    def csv_spec(spec: dict[str, Any]) -> None:
        spec["data"] = {"source": "csv:points.csv", "features": ["a", "b"], "label": "kind"}
        spec["model"]["input_shape"] = [2]
        spec["model"]["layers"][-1]["units"] = 2
        spec["fit"]["epochs"] = 20

    result = train(make_spec(csv_spec))
    model = inference.load(result.bundle)
    assert model.metadata.classes == ["down", "up"]  # sorted, as none were given
    assert model.predict([[2.0, 2.0], [-2.0, -2.0]]).labels == ["up", "down"]


def test_parquet_source_for_regression(make_spec: SpecWriter, tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, size=400)
    (tmp_path / "m").mkdir()
    pq.write_table(pa.table({"x": x, "y": 3 * x + 1}), tmp_path / "m" / "line.parquet")

    def regression(spec: dict[str, Any]) -> None:
        spec["data"] = {"source": "parquet:line.parquet", "features": ["x"], "label": "y"}
        spec["model"] = {"input_shape": [1], "layers": [{"type": "dense", "units": 1}]}
        spec["compile"] = {
            "optimizer": {"name": "sgd", "learning_rate": 0.3, "momentum": 0.9},
            "loss": "mse",
            "metrics": ["mae"],
        }
        spec["preprocessing"] = {"scale": "minmax"}
        spec["fit"].update(epochs=30)

    result = train(make_spec(regression))
    model = inference.load(result.bundle)
    assert model.metadata.task == "regression"
    assert model.metadata.default_outputs == ["predictions"]
    assert set(result.metrics) == {"loss", "mae", "val_loss", "val_mae"}
    np.testing.assert_allclose(
        model.predict([[2.0], [5.0]])["predictions"], [[7.0], [16.0]], atol=0.3
    )


def test_a_feature_that_is_not_numeric_is_reported(make_spec: SpecWriter, tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "d.csv").write_text("a,label\n1,0\nhigh,1\n")
    folder = make_spec(
        lambda s: s.update(
            data={"source": "csv:d.csv", "features": ["a"], "label": "label"},
            model={
                "input_shape": [1],
                "layers": [{"type": "dense", "units": 2, "activation": "softmax"}],
            },
        )
    )
    with pytest.raises(SpecError, match=r"data: column 'a' in d\.csv is not numeric"):
        train(folder)


def test_early_stopping_stops_and_restores(make_spec: SpecWriter):
    stopping = {
        "monitor": "val_loss",
        "patience": 1,
        "min_delta": 10.0,
        "restore_best_weights": True,
    }
    folder = make_spec(lambda s: s["fit"].update(epochs=10, early_stopping=stopping))
    out = io.StringIO()
    result = fit(prepare(folder, verbose=2), stream=out)
    assert len(result.history.epochs) == 2  # epoch 2 did not improve by 10: stop
    assert result.history.best_epoch == 0
    assert result.history.final == result.history.epochs[0]
    assert "Epoch 2: early stopping" in out.getvalue()
    assert "Restoring model weights from the end of the best epoch: 1." in out.getvalue()


def test_verbose_2_prints_one_keras_line_per_epoch(make_spec: SpecWriter):
    out = io.StringIO()
    fit(prepare(make_spec(), verbose=2), stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    pattern = (
        r"Epoch 3/5 - \d+\.\ds - loss: \d\.\d{4} - accuracy: \d\.\d{4} "
        r"- val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}$"
    )
    assert re.match(pattern, lines[2])


def test_verbose_1_prints_a_progress_bar_per_epoch(make_spec: SpecWriter):
    out = io.StringIO()
    fit(prepare(make_spec(), verbose=1), stream=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Epoch 1/5"
    assert re.match(r"8/8 \[={30}\] - \d+s \d+ms/step - loss: ", lines[1])


def test_verbose_0_is_silent(make_spec: SpecWriter):
    out = io.StringIO()
    fit(prepare(make_spec(), verbose=0), stream=out)
    assert out.getvalue() == ""


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains(name: str, make_spec: SpecWriter):
    folder = make_spec(lambda s: s["compile"].update(optimizer={"name": name, "clipnorm": 1.0}))
    result = fit(prepare(folder, epochs=2))
    assert np.isfinite(result.history.final["loss"])


def test_optimizer_defaults_and_aliases_are_keras():
    params = [torch.nn.Parameter(torch.ones(2))]
    adam = Optimizer("adam", {}, params).torch.param_groups[0]
    assert (adam["lr"], adam["betas"], adam["eps"]) == (0.001, (0.9, 0.999), 1e-7)
    sgd = Optimizer("sgd", {"lr": 0.5, "momentum": 0.9, "nesterov": True}, params).torch
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["nesterov"]) == (0.5, True)
    assert Optimizer("rmsprop", {}, params).torch.param_groups[0]["alpha"] == 0.9


def test_keras_weight_decay_is_decoupled():
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = Optimizer("sgd", {"learning_rate": 0.1, "weight_decay": 0.5}, [weight])
    weight.grad = torch.zeros(1)
    optimizer.step()
    assert weight.item() == pytest.approx(1 - 0.1 * 0.5)  # w *= 1 - lr·wd, no gradient


def test_batch_normalization_and_dropout_layers_train_and_export(make_spec: SpecWriter):
    def deeper(spec: dict[str, Any]) -> None:
        spec["model"]["layers"] = [
            {"type": "dense", "units": 8, "activation": "relu"},
            {"type": "batch_normalization"},
            {"type": "dropout", "rate": 0.3},
            {"type": "dense", "units": 3},
            {"type": "activation", "activation": "softmax"},
        ]

    model = inference.load(train(make_spec(deeper)).bundle)
    layer_outputs = [o.name for o in model.metadata.outputs if o.role == "layer"]
    assert layer_outputs == ["dense", "batch_normalization", "dense_1"]
