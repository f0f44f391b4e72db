"""Hyperparameter search: planning (grid, random, spec errors up front), trials in a process pool
and as real Spark tasks, the leaderboard, failed trials, and the exported winner."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

import inference
from tests.conftest import SpecWriter
from tests.training.helpers import held_out_accuracy
from training import SpecError, leaderboard, load_spec, trials
from training.__main__ import main
from training.errors import SearchError
from training.trials import Trial, TrialResult
from training.tuning import plan, search

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
            r"keys: type, name, input_shape, units",
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
            {"space": {"compile.metrics": [["accuracy"], []]}},
            r"search: trial 2 \(compile\.metrics=\[\]\): search\.metric: 'val_accuracy' is not "
            r"logged; known: loss, val_loss$",
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


def test_pool_search_reports_failed_trials_and_exports_the_best(
    make_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
):
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
    code = main([str(folder), "--search"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Search: 4 grid trials, val_accuracy (max), 2 at a time in a process pool" in out
    assert f"Leaderboard: {folder / '1' / 'leaderboard.csv'}, " in out
    assert f"Bundle written: {folder / '1'}" in out
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
            "trials": 2,
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
    assert len(set(tracker.getJobIdsForGroup()) - jobs_before) == 2  # one Spark job per trial
    assert found.train.bundle == folder / "2"
    board = read_leaderboard(folder / "2")
    assert len(board) == 2
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


def test_cli_search_spec_error_is_one_line_and_exit_2(
    make_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
):
    folder = make_spec(with_search(space={"model.layers.0.unit": [4]}))
    assert main([str(folder), "--search"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {folder / 'model.yaml'}: search.space: 'model.layers.0.unit': ")


def test_the_leaderboard_has_every_metric_any_trial_logged():
    """The space may vary compile.metrics: no trial's metric is left out of the table."""
    results = [
        TrialResult(Trial(1, {"compile.metrics": ["accuracy"]}), {"loss": 0.5, "accuracy": 0.8}),
        TrialResult(Trial(2, {"compile.metrics": ["mse"]}), {"loss": 0.4, "mse": 0.1}),
        TrialResult(Trial(3, {"compile.metrics": []}), error="ValueError: boom"),
    ]
    table = leaderboard.rows(leaderboard.rank(results, "loss", False), ["compile.metrics"])
    assert list(table[0]) == [
        *("rank", "trial", "status", "loss", "mse", "accuracy", "compile.metrics"),
        *("epochs", "seconds", "error"),
    ]
    assert [(row["trial"], row["mse"], row["accuracy"]) for row in table] == [
        (2, 0.1, None),
        (1, None, 0.8),
        (3, None, None),
    ]


def kill_workers(count: int, stop: threading.Event) -> None:
    """SIGKILL, as the kernel's out-of-memory killer would, the first `count` worker processes
    this process starts, one at a time, each as soon as it appears."""
    killed: set[int | None] = set()
    while len(killed) < count and not stop.is_set():
        for child in multiprocessing.active_children():
            if child.pid not in killed:
                os.kill(child.pid or 0, signal.SIGKILL)
                killed.add(child.pid)
                break
        time.sleep(0.02)


def test_a_worker_that_dies_fails_its_own_trial_only(make_spec: SpecWriter):
    """One trial at a time. The first kill takes the pool's only worker, and with it trials 1
    and 2; both run again, each in a process of its own. The second kill takes trial 1's: trial
    1 fails alone, trial 2 trains and is exported."""
    folder = make_spec(with_search(parallelism=1, space={"model.layers.0.units": [4, 8]}))
    stop = threading.Event()
    killer = threading.Thread(target=kill_workers, args=(2, stop), daemon=True)
    killer.start()
    out = io.StringIO()
    try:
        found = search(folder, stream=out)
    finally:
        stop.set()
        killer.join()
    assert "A worker process died; trials 1, 2 run again, each in a process of its own" in (
        out.getvalue()
    )
    assert [(row["trial"], row["status"]) for row in found.table] == [(2, "ok"), (1, "failed")]
    assert found.table[1]["error"] == "its process died: killed, out of memory, or crashed"
    assert found.train.bundle == folder / "1"
    assert read_leaderboard(folder / "1")[1]["status"] == "failed"


class _KillsItsFirstWorker(ProcessPoolExecutor):
    """A pool whose worker is killed right after the first trial is queued, before the next:
    the race that a worker dying early (out of memory at start-up) leaves to chance."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(fn, *args, **kwargs)
        if not getattr(self, "killed", False):
            self.killed = True
            for child in multiprocessing.active_children():
                os.kill(child.pid or 0, signal.SIGKILL)
            future.exception()  # returns once the pool knows it is broken
        return future


def test_a_worker_that_dies_while_trials_are_queued_loses_none(
    make_spec: SpecWriter, monkeypatch: pytest.MonkeyPatch
):
    real, made = trials._pool, []

    def first_one_killed(workers: int) -> ProcessPoolExecutor:
        spawn = multiprocessing.get_context("spawn")
        pool = real(workers) if made else _KillsItsFirstWorker(workers, mp_context=spawn)
        made.append(pool)
        return pool

    monkeypatch.setattr(trials, "_pool", first_one_killed)
    folder = make_spec(with_search(parallelism=1, space={"model.layers.0.units": [4, 8]}))
    out = io.StringIO()
    found = search(folder, stream=out)
    assert "A worker process died; trials 1, 2 run again, each in a process of its own" in (
        out.getvalue()
    )
    assert sorted((row["trial"], row["status"]) for row in found.table) == [(1, "ok"), (2, "ok")]


def test_ctrl_c_ends_a_search_at_once_with_one_line(make_spec: SpecWriter, tmp_path: Path):
    """A terminal's Ctrl-C: SIGINT to the command's whole process group, trial workers included,
    while they start. The interpreter is told to take SIGINT as Ctrl-C even where this test
    runs with it ignored (a background job)."""
    folder = make_spec(with_search(space={"model.layers.0.units": [4, 8, 16, 32]}))
    ctrl_c_as_usual = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from training.__main__ import main; sys.exit(main())"
    )
    command = [sys.executable, "-c", ctrl_c_as_usual, str(folder), "--search", "--epochs", "10000"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("Search: 4 grid trials")
        time.sleep(1.5)  # the workers are starting
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err == f"error: interrupted while training {folder}; no bundle was written for it\n"
    assert [p.name for p in folder.iterdir()] == ["model.yaml"]
