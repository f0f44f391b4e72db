"""`python -m training`: trains and prints the bundle; errors are one line, not a traceback.

Two tests run the real command in a fresh interpreter; the others call its `main` in-process,
which is the same code without the cost of importing torch again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SpecWriter
from tests.training.helpers import run_cli
from training.__main__ import main


def test_trains_and_prints_the_bundle(make_spec: SpecWriter):
    folder = make_spec()
    result = run_cli(str(folder), "--epochs", "2", "--verbose", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Epoch 1/2 - ")
    assert f"Bundle written: {folder / '1'} (loss " in result.stdout
    assert (folder / "1" / "model.onnx").is_file()


def test_a_spec_error_is_one_line_and_exit_2(make_spec: SpecWriter):
    folder = make_spec(lambda s: s["compile"].update(loss="mean_sqared_error"))
    result = run_cli(str(folder))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {folder / 'model.yaml'}: compile.loss: unknown loss")
    assert "Traceback" not in result.stderr


def test_a_repository_trains_only_what_is_missing(
    make_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
):
    done = make_spec(name="done")
    (done / "1").mkdir()
    (done / "1" / "metadata.json").write_text("{}")
    todo = make_spec(name="todo")
    assert main([str(done.parent), "--if-missing", "--epochs", "1", "--verbose", "0"]) == 0
    assert f"{done}: bundle exists (version 1)" in capsys.readouterr().out
    assert (todo / "1" / "model.onnx").is_file()


def test_a_missing_path_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'nowhere'}: no such spec file "
        "(expected a model folder with model.yaml)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--verbose", "5"], "argument --verbose: invalid choice: 5"),
        (["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_exit_2_with_usage(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "models/iris"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m training")
    assert message in err


def test_training_that_diverges_publishes_nothing(make_spec: SpecWriter):
    folder = make_spec(lambda s: s["compile"]["optimizer"].update(learning_rate=1.0e30))
    result = run_cli(str(folder), "--epochs", "3", "--verbose", "0")
    assert result.returncode == 1
    assert result.stderr == (
        "error: training diverged at epoch 1: loss nan, val_loss nan; no bundle was written "
        "(lower compile.optimizer.learning_rate, or scale the features: preprocessing.scale)\n"
    )
    assert [p.name for p in folder.iterdir()] == ["model.yaml"]


def test_a_label_of_one_class_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "rows.csv").write_text("a,b,y\n1,2,x\n3,4,x\n5,6,x\n7,8,x\n")
    (folder / "model.yaml").write_text(
        "name: one\n"
        "data: {source: 'csv:rows.csv', features: [a, b], label: y, validation_split: 0.25}\n"
        "model: {layers: [{type: dense, units: 2, activation: softmax}]}\n"
        "compile: {optimizer: adam, loss: sparse_categorical_crossentropy}\n"
    )
    assert main([str(folder)]) == 2
    assert capsys.readouterr().err == (
        f"error: {folder / 'model.yaml'}: data.label: all 4 rows of rows.csv are of class 'x'; "
        "a classifier needs rows of at least two classes\n"
    )


def test_every_spec_is_checked_before_the_first_trains(
    make_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
):
    good = make_spec(name="a_good")
    bad = make_spec(lambda s: s["fit"].update(epochs="many"), name="b_bad")
    assert main([str(good.parent)]) == 2
    assert f"{bad / 'model.yaml'}: fit.epochs: must be a whole number" in capsys.readouterr().err
    assert not (good / "1").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["compile"].update(loss="mse2"), "compile.loss: unknown loss 'mse2'"),
        (lambda s: s["data"].update(source="csv:gone.csv"), "data.source: gone.csv not found"),
        (
            lambda s: s["data"].update(source="csv:rows.csv"),
            "data.features: column 'sepal_length' is not in rows.csv; columns: a, b",
        ),
    ],
)
def test_spec_and_data_errors_come_before_torch_loads(
    make_spec: SpecWriter, edit: Callable[[dict[str, Any]], None], message: str
):
    """A mistake in the spec or its data is reported without importing torch (what made the
    CLI take seconds to say it), in a fresh interpreter."""
    folder = make_spec(edit)
    (folder / "rows.csv").write_text("a,b\n1,2\n")
    probe = (
        "import sys\nfrom training.__main__ import main\n"
        f"code = main([{str(folder)!r}])\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == "torch not loaded\n"
