"""`python -m training`: trains and prints the bundle; errors are one line, not a traceback."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SpecWriter
from tests.training.helpers import run_cli


def test_trains_and_prints_the_bundle(make_spec: SpecWriter):
    folder = make_spec()
    result = run_cli(str(folder), "--epochs", "2", "--verbose", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Epoch 1/2 - ")
    assert f"Bundle written: {folder / '1'} (loss " in result.stdout
    assert (folder / "1" / "model.onnx").is_file()


def test_a_repository_trains_only_what_is_missing(make_spec: SpecWriter):
    done = make_spec(name="done")
    (done / "1").mkdir()
    (done / "1" / "metadata.json").write_text("{}")
    todo = make_spec(name="todo")
    result = run_cli(str(done.parent), "--if-missing", "--epochs", "1", "--verbose", "0")
    assert result.returncode == 0, result.stderr
    assert f"{done}: bundle exists (version 1)" in result.stdout
    assert (todo / "1" / "model.onnx").is_file()


def test_a_spec_error_is_one_line_and_exit_2(make_spec: SpecWriter):
    folder = make_spec(lambda s: s["compile"].update(loss="mean_sqared_error"))
    result = run_cli(str(folder))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {folder / 'model.yaml'}: compile.loss: unknown loss")
    assert "Traceback" not in result.stderr


def test_a_missing_path_is_one_line_and_exit_2(tmp_path: Path):
    result = run_cli(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "no such spec file (expected a model folder with model.yaml)"
    )


def test_bad_arguments_exit_2_with_usage():
    result = run_cli("--verbose", "5", "models/iris")
    assert result.returncode == 2
    assert "usage: python -m training" in result.stderr
    result = run_cli("--epochs", "0", "models/iris")
    assert result.returncode == 2
    assert "must be a positive integer, got 0" in result.stderr
