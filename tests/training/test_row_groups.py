"""Parquet that the ranks read themselves (`training.row_groups`), without Spark: ranks are
threads here, and the collective is a barrier. Spark runs it in test_distributed.py."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import SpecWriter
from training import SpecError, load_spec
from training import data as datasets
from training.distributed import RankFailed, _rank
from training.preprocessing import FeatureStats, Scaler
from training.row_groups import OwnRows, ParquetRun, held_out, load_share, plan
from training.trainer import Run

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def flowers(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {name: rng.normal(5, 1, rows) for name in FEATURES}
    columns["species"] = rng.choice(["setosa", "versicolor", "virginica"], rows)
    return pa.table(columns)


def parquet_folder(make_spec: SpecWriter, sizes: list[int]) -> Path:
    """A model folder whose spec reads `flowers/`: one file per size, row groups of 25 rows,
    and what Spark writes beside its files (which is no data)."""
    folder = make_spec(lambda s: s["data"].update(source="parquet:flowers", classes=None))
    (folder / "flowers").mkdir()
    for number, size in enumerate(sizes):
        table = flowers(size, number)
        pq.write_table(table, folder / "flowers" / f"part-{number}.parquet", row_group_size=25)
    (folder / "flowers" / "_SUCCESS").write_text("")
    (folder / "flowers" / ".part-0.parquet.crc").write_text("not parquet")
    return folder


def ranks(work: ParquetRun, world: int) -> list[tuple[Run, OwnRows] | Exception]:
    """`load_share` on `world` threads, as the ranks of one run."""
    slots: list[Any] = [None] * world
    barrier = threading.Barrier(world)

    def rank(number: int) -> tuple[Run, OwnRows] | Exception:
        def gather(value: Any) -> list[Any]:
            slots[number] = value
            barrier.wait()
            every = list(slots)
            barrier.wait()
            return every

        try:
            run, shard = load_share(work, number, world, gather)
            assert isinstance(shard, OwnRows)
            return run, shard
        except SpecError as e:
            return e

    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(rank, range(world)))


def work_of(folder: Path) -> ParquetRun:
    spec, spec_file = load_spec(folder)
    found = plan(spec, spec_file)
    assert found is not None
    return ParquetRun(spec, spec_file, spec.fit, found)


def test_the_plan_numbers_the_row_groups_of_the_files_in_order(make_spec: SpecWriter):
    work = work_of(parquet_folder(make_spec, [60, 40]))
    assert [(Path(g.file).name, g.index, g.first, g.rows) for g in work.plan.groups] == [
        ("part-0.parquet", 0, 0, 25),
        ("part-0.parquet", 1, 25, 25),
        ("part-0.parquet", 2, 50, 10),
        ("part-1.parquet", 0, 60, 25),
        ("part-1.parquet", 1, 85, 15),
    ]
    assert [work.plan.span(rank, 3) for rank in range(3)] == [(0, 33), (33, 66), (66, 100)]


def test_any_number_of_ranks_splits_and_fits_like_one(make_spec: SpecWriter):
    """Rows held out, classes, scaler statistics and the parity rows do not depend on how many
    ranks read which rows; each rank trains on its own rows only."""
    folder = parquet_folder(make_spec, [60, 45, 35])
    work = work_of(folder)
    everything = pq.read_table(folder / "flowers")
    (alone,) = ranks(work, 1)
    assert not isinstance(alone, Exception)
    run, _ = alone
    expected = held_out(np.arange(140), work.spec.data.seed, 0.2)
    assert (len(run.train_set), len(run.val_set)) == (140 - expected.sum(), expected.sum())
    features = np.column_stack([everything[n].to_numpy() for n in FEATURES]).astype(np.float32)
    np.testing.assert_array_equal(run.val_set.features, features[expected])
    assert run.classes == ["setosa", "versicolor", "virginica"]
    whole = run.whole
    scaler = Scaler.fit("standard", features[~expected])
    np.testing.assert_allclose(Scaler.from_stats("standard", whole.stats).scale, scaler.scale)

    shared = ranks(work, 3)
    runs = [answer[0] for answer in shared if not isinstance(answer, Exception)]
    assert len(runs) == 3
    assert sum(len(r.train_set) for r in runs) == len(run.train_set)
    np.testing.assert_array_equal(
        np.concatenate([r.val_set.features for r in runs]), run.val_set.features
    )
    for other in runs:
        assert other.classes == run.classes
        assert (other.whole.train_rows, other.whole.validation_rows) == (
            whole.train_rows,
            whole.validation_rows,
        )
        np.testing.assert_allclose(other.whole.stats.mean, whole.stats.mean, rtol=1e-12)
        np.testing.assert_allclose(other.whole.stats.m2, whole.stats.m2, rtol=1e-12)
        np.testing.assert_array_equal(other.whole.held_out, whole.held_out)
    shards = [answer[1] for answer in shared if not isinstance(answer, Exception)]
    assert {s.most for s in shards} == {max(len(r.train_set) for r in runs)}


def test_validation_logs_are_the_mean_over_every_ranks_rows():
    every = [{"loss": 1.0, "val_loss": 2.0}, {"loss": 1.0}, {"loss": 1.0, "val_loss": 5.0}]
    shard = OwnRows(0, 3, 10, (1, 0, 2), lambda value: every)
    assert shard.agree(every[0]) == {"loss": 1.0, "val_loss": 4.0}


def test_stats_of_parts_add_up_to_the_stats_of_the_whole():
    x = np.random.default_rng(3).normal(2, 3, (50, 2))
    parts = FeatureStats.of(x[:7]) + FeatureStats.of(x[7:7]) + FeatureStats.of(x[7:])
    whole = FeatureStats.of(x)
    np.testing.assert_allclose(parts.mean, whole.mean)
    np.testing.assert_allclose(parts.std, x.std(axis=0))
    np.testing.assert_array_equal(parts.low, x.min(axis=0))


def test_a_bad_value_in_one_rank_share_stops_every_rank_with_one_error(make_spec: SpecWriter):
    folder = parquet_folder(make_spec, [60, 40])
    broken = flowers(40, 1).to_pydict()
    broken["petal_width"][30] = None
    pq.write_table(pa.table(broken), folder / "flowers" / "part-1.parquet", row_group_size=25)
    answers = ranks(work_of(folder), 2)
    assert {str(answer) for answer in answers} == {
        f"{folder / 'model.yaml'}: data: column 'petal_width' in flowers/part-1.parquet "
        "(row group 1) has 1 missing or non-finite value(s), first at row 5"
    }


def test_a_column_missing_from_one_file_or_an_unreadable_file_is_one_line(
    make_spec: SpecWriter,
):
    folder = parquet_folder(make_spec, [30, 30])
    pq.write_table(flowers(30, 5).drop(["sepal_width"]), folder / "flowers" / "part-1.parquet")
    with pytest.raises(SpecError) as missing:
        work_of(folder)
    assert str(missing.value) == (
        f"{folder / 'model.yaml'}: data.features: column 'sepal_width' is not in "
        "flowers/part-1.parquet; columns: sepal_length, petal_length, petal_width, species"
    )
    (folder / "flowers" / "part-1.parquet").write_text("not parquet\n")
    with pytest.raises(SpecError, match=r"cannot read flowers/part-1\.parquet as parquet: ") as bad:
        work_of(folder)
    assert "\n" not in str(bad.value)


def hive_folder(make_spec: SpecWriter) -> Path:
    """A model folder whose spec reads `flowers/`, Hive-partitioned: the label (`species`) and
    one feature (`petals`, an integer) are only in the folder names."""
    features = [*FEATURES[:3], "petals"]
    folder = make_spec(
        lambda s: s["data"].update(source="parquet:flowers", classes=None, features=features)
    )
    parts = [("versicolor", 5, 30), ("setosa", 4, 40), ("setosa", 5, 20), ("virginica", 6, 35)]
    for number, (species, petals, rows) in enumerate(parts):
        branch = folder / "flowers" / f"species={species}" / f"petals={petals}"
        branch.mkdir(parents=True)
        table = flowers(rows, number).drop(["species", "petal_width"])
        pq.write_table(table, branch / "part-0.parquet", row_group_size=25)
    (folder / "flowers" / "_SUCCESS").write_text("")
    return folder


def test_hive_partitions_are_read_by_the_ranks_as_by_the_driver(make_spec: SpecWriter):
    """Columns that only the folder names hold come out of any number of ranks as they come
    out of `training.data.load` (pyarrow's `read_table`): the same features, labels, classes."""
    folder = hive_folder(make_spec)
    work = work_of(folder)
    driver = datasets.load(work.spec, work.spec_file)
    assert sorted(set(driver.features[:, 3])) == [4, 5, 6]
    held = held_out(np.arange(len(driver)), work.spec.data.seed, 0.2)
    for world in (1, 3):
        runs = [answer[0] for answer in ranks(work, world) if not isinstance(answer, Exception)]
        assert len(runs) == world
        for name, rows in (("train_set", ~held), ("val_set", held)):
            parts = [getattr(run, name) for run in runs]
            np.testing.assert_array_equal(
                np.concatenate([p.features for p in parts]), driver.features[rows]
            )
            np.testing.assert_array_equal(
                np.concatenate([p.labels for p in parts]), driver.labels[rows]
            )
        assert {tuple(run.classes or ()) for run in runs} == {tuple(driver.classes or ())}


def test_a_partition_missing_from_one_branch_or_an_unreadable_first_file_is_one_line(
    make_spec: SpecWriter,
):
    folder = hive_folder(make_spec)
    pq.write_table(flowers(10, 9).drop(["species"]), folder / "flowers" / "part-9.parquet")
    with pytest.raises(SpecError) as missing:
        work_of(folder)
    assert str(missing.value) == (
        f"{folder / 'model.yaml'}: data.features: column 'petals' is not in "
        "flowers/part-9.parquet; columns: sepal_length, sepal_width, petal_length, petal_width"
    )
    (folder / "flowers" / "part-9.parquet").unlink()
    (folder / "flowers" / "species=setosa" / "petals=4" / "part-0.parquet").write_text("no\n")
    with pytest.raises(SpecError, match=r"cannot read flowers as parquet: .*petals=4") as bad:
        work_of(folder)
    assert "\n" not in str(bad.value)


def test_a_partition_the_spec_does_not_read_may_be_null(make_spec: SpecWriter):
    """Spark writes a null partition value as `__HIVE_DEFAULT_PARTITION__`, which pyarrow
    cannot read back beside the others (its dictionaries do not unify): a spec that does not
    read that column trains on the folder all the same, on the driver and on the ranks."""
    folder = make_spec(lambda s: s["data"].update(source="parquet:flowers", classes=None))
    for number, day in enumerate(["1", "__HIVE_DEFAULT_PARTITION__", "2"]):
        (folder / "flowers" / f"day={day}").mkdir(parents=True)
        pq.write_table(flowers(30, number), folder / "flowers" / f"day={day}" / "part-0.parquet")
    with pytest.raises(pa.ArrowInvalid, match="dictionaries with nulls"):  # every column, as
        datasets.arrow_columns(pq.read_table(folder / "flowers"))  # the driver used to read
    work = work_of(folder)
    driver = datasets.load(work.spec, work.spec_file)
    assert len(driver) == 90
    runs = [answer[0] for answer in ranks(work, 2) if not isinstance(answer, Exception)]
    assert sum(len(run.train_set) + len(run.val_set) for run in runs) == 90


def test_sources_the_ranks_do_not_read_stay_with_the_driver(make_spec: SpecWriter):
    for source in ("builtin:iris", "csv:flowers.csv", "parquet:s3a://bucket/flowers"):
        folder = make_spec(lambda s, source=source: s["data"].update(source=source), name="x")
        assert plan(*load_spec(folder)) is None, source
        (folder / "model.yaml").unlink()
        folder.rmdir()
    with pytest.raises(SpecError, match=r"data\.source: nowhere not found \(looked in "):
        plan(*load_spec(make_spec(lambda s: s["data"].update(source="parquet:nowhere"))))


def test_the_split_by_hash_holds_out_about_the_fraction_asked():
    index = np.arange(100_000)
    mask = held_out(index, 42, 0.1)
    assert 0.098 < mask.mean() < 0.102
    assert not (mask == held_out(index, 43, 0.1)).all()
    np.testing.assert_array_equal(held_out(index[500:900], 42, 0.1), mask[500:900])


def test_one_rank_as_torchrun_starts_it_trains_its_share_or_reports_a_data_error(
    make_spec: SpecWriter, monkeypatch: pytest.MonkeyPatch
):
    """`_rank` in this process as a world of one (what a Spark task runs): it sends back no
    rows, only the summary; a data error comes back as the spec error it is."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    folder = parquet_folder(make_spec, [60, 40])
    answer = _rank(work_of(folder))
    assert isinstance(answer, tuple), answer
    state, history, run = answer
    np.testing.assert_allclose(state["0.offset"], run.whole.stats.mean, rtol=1e-6)  # standard
    assert (len(run.train_set), len(run.val_set)) == (0, 0)
    assert run.whole.train_rows + run.whole.validation_rows == 100
    assert len(history.epochs) == 5 and "val_accuracy" in history.final
    broken = flowers(40, 1).to_pydict()
    broken["sepal_length"][3] = float("nan")
    pq.write_table(pa.table(broken), folder / "flowers" / "part-1.parquet")
    assert _rank(work_of(folder)) == RankFailed(
        0,
        f"{folder / 'model.yaml'}: data: column 'sepal_length' in flowers/part-1.parquet "
        "(row group 0) has 1 missing or non-finite value(s), first at row 3",
        data=True,
    )
