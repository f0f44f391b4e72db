"""Hyperparameter search: planning (grid, random, spec errors up front), trials in a process pool
and as real Spark tasks, the leaderboard, failed trials, and the exported winner."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

import inference
from tests.conftest import SpecWriter
from tests.training.helpers import held_out_accuracy, run_cli
from training import SpecError, load_spec
from training.search import SearchError, plan, search

BATCH_NORM_LAYERS = [
    {"type": "dense", "units": 8, "activation": "relu"},
    {"type": "batch_normalization"},
    {"type": "dense", "units": 3, "activation": "softmax"},
]


def with_search(**search: Any) -> Any:
    def edit(spec: dict[str, Any]) -> None:
        spec["search"] = {"metric": "val_accuracy", **search}

    return edit


def planned(make_spec: SpecWriter, **search: Any) -> list[dict[str, Any]]:
    spec, spec_file = load_spec(make_spec(with_search(**search)))
    return [trial.params for trial, _ in plan(spec, spec_file)]


def read_leaderboard(bundle: Path) -> list[dict[str, str]]:
    with (bundle / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_grid_is_every_combination_in_order(make_spec: SpecWriter):
    space = {"model.layers.0.units": [4, 8], "compile.optimizer.learning_rate": [0.1, 0.01]}
    assert planned(make_spec, space=space) == [
        {"model.layers.0.units": 4, "compile.optimizer.learning_rate": 0.1},
        {"model.layers.0.units": 4, "compile.optimizer.learning_rate": 0.01},
        {"model.layers.0.units": 8, "compile.optimizer.learning_rate": 0.1},
        {"model.layers.0.units": 8, "compile.optimizer.learning_rate": 0.01},
    ]


def test_a_capped_grid_keeps_a_seeded_subset(make_spec: SpecWriter):
    space = {"fit.batch_size": [4, 8, 16, 32, 64]}
    first = planned(make_spec, space=space, trials=3, seed=1)
    assert len(first) == 3
    assert len({json.dumps(p) for p in first}) == 3
    assert first == planned(make_spec, space=space, trials=3, seed=1)


def test_random_draws_stay_in_their_ranges_and_follow_the_seed(make_spec: SpecWriter):
    space = {
        "compile.optimizer.learning_rate": {"loguniform": [1e-4, 1e-1]},
        "model.layers.0.units": {"randint": [4, 6]},
        "model.layers.0.activation": {"choice": ["relu", "tanh"]},
        "fit.batch_size": [8, 16],
    }
    trials = planned(make_spec, method="random", trials=30, seed=3, space=space)
    assert len(trials) == 30
    rates = [t["compile.optimizer.learning_rate"] for t in trials]
    assert all(1e-4 <= r <= 1e-1 for r in rates)
    assert {t["model.layers.0.units"] for t in trials} == {4, 5, 6}
    assert {t["model.layers.0.activation"] for t in trials} == {"relu", "tanh"}
    assert {t["fit.batch_size"] for t in trials} == {8, 16}
    assert trials == planned(make_spec, method="random", trials=30, seed=3, space=space)
    assert trials != planned(make_spec, method="random", trials=30, seed=4, space=space)


def test_each_trial_spec_carries_its_values(make_spec: SpecWriter):
    spec, spec_file = load_spec(
        make_spec(with_search(space={"compile.optimizer.learning_rate": [0.5]}))
    )
    (_, trial_spec), *_ = plan(spec, spec_file, epochs=3)
    assert trial_spec.compile.optimizer.params["learning_rate"] == 0.5
    assert trial_spec.fit.epochs == 3
    assert trial_spec.search is None


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"space": {"model.layers.0.unit": [4]}},
            r"search\.space: 'model\.layers\.0\.unit': model\.layers\.0 has no key 'unit'; "
            r"keys: name, input_shape, type, units",
        ),
        (
            {"space": {"model.layers.5.units": [4]}},
            r"'model\.layers\.5\.units': model\.layers has 2 entries; expected an index 0-1",
        ),
        (
            {"space": {"fit.early_stopping.patience": [1]}},
            r"'fit\.early_stopping\.patience': fit\.early_stopping is null, not a section",
        ),
        (
            {"space": {"model.layers.0.activation": ["relu", "rleu"]}},
            r"search: trial 2 \(model\.layers\.0\.activation=\"rleu\"\): "
            r"model\.layers\.0\.activation: unknown activation 'rleu'",
        ),
        (
            {"space": {"compile.optimizer.lerning_rate": [0.1]}},
            r"search: trial 1 .*compile\.optimizer: .*lerning_rate",
        ),
        (
            {"metric": "val_acc", "space": {"fit.batch_size": [8]}},
            r"search\.metric: 'val_acc' is not logged; known: loss, accuracy, val_loss",
        ),
        (
            {"space": {"fit.batch_size": {"uniform": [1, 9]}}},
            r"search: .*space\.fit\.batch_size: a grid takes a list of values",
        ),
        ({"method": "bayes", "space": {"fit.batch_size": [8]}}, r"search\.method: "),
        (
            {"space": {"fit.batch_size": 8}},
            r"search\.space: fit\.batch_size: expected a non-empty list of values, or \(random "
            r"search\) one of \{uniform: \[a, b\]\}, .*; got 8$",
        ),
        (
            {"method": "random", "space": {"fit.batch_size": {"normal": [1, 2]}}},
            r"search\.space: fit\.batch_size: unknown key 'normal'; allowed: choice, loguniform",
        ),
        ({"space": {}}, r"search\.space: "),
        (
            {"method": "random", "space": {"fit.batch_size": {"uniform": [1, 2], "choice": [3]}}},
            r"give exactly one of uniform, loguniform, randint, choice",
        ),
    ],
)
def test_a_wrong_search_section_is_a_spec_error_before_any_training(
    search: dict[str, Any], message: str, make_spec: SpecWriter
):
    folder = make_spec(lambda s: s.update(search={"metric": "val_accuracy", **search}))
    with pytest.raises(SpecError, match=message):
        plan(*load_spec(folder))


def test_search_without_a_search_section_is_a_spec_error(make_spec: SpecWriter):
    with pytest.raises(SpecError, match=r"search: --search needs a search section"):
        search(make_spec())


def test_pool_search_reports_failed_trials_and_exports_the_best(make_spec: SpecWriter):
    """batch_size 1 makes batch normalization fail at the first step: those trials fail at
    runtime, the others train, and the best of them becomes version 1."""

    def edit(spec: dict[str, Any]) -> None:
        spec["model"]["layers"] = BATCH_NORM_LAYERS
        spec["search"] = {
            "metric": "val_accuracy",
            "parallelism": 2,
            "space": {"compile.optimizer.learning_rate": [0.003, 0.05], "fit.batch_size": [1, 16]},
        }

    folder = make_spec(edit)
    result = run_cli(str(folder), "--search", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Search: 4 grid trials, val_accuracy (max), 2 at a time in a process pool" in (
        result.stdout
    )
    assert f"Bundle written: {folder / '1'}" in result.stdout
    board = read_leaderboard(folder / "1")
    assert len(board) == 4
    assert {row["trial"] for row in board} == {"1", "2", "3", "4"}
    failed = [row for row in board if row["status"] == "failed"]
    assert [row["fit.batch_size"] for row in failed] == ["1", "1"]
    assert all("Expected more than 1 value per channel" in row["error"] for row in failed)
    ok = [row for row in board if row["status"] == "ok"]
    assert [row["rank"] for row in ok] == ["1", "2"]
    assert float(ok[0]["val_accuracy"]) >= float(ok[1]["val_accuracy"])
    assert board[: len(ok)] == ok  # failures last
    assert pq.read_table(folder / "1" / "leaderboard.parquet").num_rows == 4

    metadata = json.loads((folder / "1" / "metadata.json").read_text())
    best = ok[0]
    assert metadata["metrics"]["val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert held_out_accuracy(folder / "1") == pytest.approx(float(best["val_accuracy"]))
    provenance = metadata["provenance"]
    assert provenance["search"]["trial"] == int(best["trial"])
    assert provenance["search"]["params"]["fit.batch_size"] == 16
    assert provenance["search"]["failed"] == 2
    rate = provenance["search"]["params"]["compile.optimizer.learning_rate"]
    assert provenance["spec"]["compile"]["optimizer"]["learning_rate"] == rate
    assert float(best["compile.optimizer.learning_rate"]) == rate


def test_spark_search_runs_trials_as_tasks_and_exports_the_next_version(
    spark: SparkSession, make_spec: SpecWriter
):
    def edit(spec: dict[str, Any]) -> None:
        spec["search"] = {
            "method": "random",
            "trials": 3,
            "metric": "val_loss",
            "seed": 5,
            "space": {
                "model.layers.0.units": {"randint": [2, 12]},
                "compile.optimizer.learning_rate": {"loguniform": [1e-3, 1e-1]},
            },
        }

    folder = make_spec(edit)
    (folder / "1").mkdir()  # an earlier version: the winner becomes version 2
    tracker = spark.sparkContext.statusTracker()
    jobs_before = set(tracker.getJobIdsForGroup())
    found = search(folder, spark=spark, epochs=3)
    assert len(set(tracker.getJobIdsForGroup()) - jobs_before) == 3  # one Spark job per trial
    assert found.train.bundle == folder / "2"
    board = read_leaderboard(folder / "2")
    assert len(board) == 3
    assert all(row["status"] == "ok" for row in board)
    losses = [float(row["val_loss"]) for row in board]
    assert losses == sorted(losses)  # val_loss: lower is better
    assert all(row["epochs"] == "3" for row in board)
    metadata = json.loads((folder / "2" / "metadata.json").read_text())
    assert metadata["metrics"]["val_loss"] == pytest.approx(losses[0])
    assert metadata["provenance"]["search"]["mode"] == "min"
    units = metadata["provenance"]["search"]["params"]["model.layers.0.units"]
    assert inference.load(folder).metadata.outputs[2].shape == [-1, units]  # the hidden layer
    assert held_out_accuracy(folder / "2") == pytest.approx(metadata["metrics"]["val_accuracy"])


def test_when_every_trial_fails_nothing_is_exported(spark: SparkSession, make_spec: SpecWriter):
    def edit(spec: dict[str, Any]) -> None:
        spec["model"]["layers"] = BATCH_NORM_LAYERS
        spec["search"] = {"metric": "val_accuracy", "space": {"fit.batch_size": [1]}}

    folder = make_spec(edit)
    with pytest.raises(SearchError, match=r"all 1 trials failed; nothing exported \(first: "):
        search(folder, spark=spark)
    assert not [p for p in folder.iterdir() if p.name != "model.yaml"]


def test_cli_search_spec_error_is_one_line_and_exit_2(make_spec: SpecWriter):
    folder = make_spec(with_search(space={"model.layers.0.unit": [4]}))
    result = run_cli(str(folder), "--search")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"error: {folder / 'model.yaml'}: search.space: 'model.layers.0.unit': "
    )
