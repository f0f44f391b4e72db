"""Training on Spark: DDP through TorchDistributor on real Spark `local[2]` with gloo, data
read through Spark (`spark:<table>`, `parquet:`), and Parquet that the ranks read themselves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import SparkSession

import inference
from tests.conftest import MODELS, SpecWriter
from tests.training.helpers import held_out_accuracy, run_cli
from training import SpecError, load_spec, train
from training import data as datasets
from training.__main__ import main
from training.distributed import train_distributed
from training.row_groups import held_out

TORCH_LOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")


def committed_spec(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(MODELS / name / "model.yaml", folder / "model.yaml")
    return folder


@pytest.mark.slow
def test_ddp_on_the_drug_trial_reaches_single_process_quality(spark: SparkSession, tmp_path: Path):
    """Two epochs of the committed spec: 378 DDP steps, each an all-reduce over Spark tasks."""
    single = train(committed_spec("side_effects", tmp_path / "one"), epochs=2, verbose=0)
    ddp = train_distributed(
        committed_spec("side_effects", tmp_path / "two"),
        num_processes=2,
        spark=spark,
        epochs=2,
        verbose=0,
    )
    assert abs(ddp.metrics["val_accuracy"] - single.metrics["val_accuracy"]) <= 0.02
    assert len(ddp.history.epochs) == 2
    # The driver exported the weights rank 0 trained: onnxruntime reproduces its metric.
    assert held_out_accuracy(ddp.bundle) == pytest.approx(ddp.metrics["val_accuracy"])
    metadata = json.loads((ddp.bundle / "metadata.json").read_text())
    distributed = metadata["provenance"]["distributed"]
    assert distributed["num_processes"] == 2
    assert distributed["backend"] == "gloo"
    assert (distributed["global_batch_size"], distributed["per_process_batch_size"]) == (10, 5)
    assert metadata["provenance"]["parity_max_abs_diff"] <= 1e-5


@pytest.mark.slow
def test_cli_spark_trains_iris_with_ddp_to_a_bundle_that_predicts(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    del spark  # the session the command finds (one JVM for the whole test session)
    single = train(committed_spec("iris", tmp_path / "one"), epochs=8, verbose=0)
    folder = committed_spec("iris", tmp_path / "two")
    code = main(
        [str(folder), "--spark", "--master", "local[2]", "--num-processes", "2", "--epochs", "8"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert f"Bundle written: {folder / '1'} (loss " in out
    metadata = json.loads((folder / "1" / "metadata.json").read_text())
    assert abs(metadata["metrics"]["val_accuracy"] - single.metrics["val_accuracy"]) <= 0.02
    model = inference.load(folder)
    prediction = model.predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert prediction.labels == ["setosa", "virginica"]
    assert held_out_accuracy(folder / "1") == pytest.approx(metadata["metrics"]["val_accuracy"])


def test_more_processes_than_task_slots_is_refused(spark: SparkSession, make_spec: SpecWriter):
    with pytest.raises(SpecError, match=r"--num-processes 3 needs 3 Spark task slots at once"):
        train_distributed(make_spec(), num_processes=3, spark=spark)


def drug_trial_spec(spec: dict[str, Any], source: str) -> None:
    spec.clear()
    spec.update(yaml.safe_load((MODELS / "side_effects" / "model.yaml").read_text()))
    spec["data"]["source"] = source
    spec["fit"].update(epochs=1, verbose=0)


def test_a_spark_table_trains_like_the_same_rows_from_anywhere(
    spark: SparkSession, make_spec: SpecWriter
):
    rows = datasets.drug_trial(42)
    table = spark.createDataFrame(
        [(float(a), int(s)) for a, s in zip(rows["age"], rows["side_effects"], strict=True)],
        "age double, side_effects long",
    )
    table.createOrReplaceTempView("patients")
    from_table = make_spec(lambda s: drug_trial_spec(s, "spark:patients"), name="table")
    builtin = make_spec(lambda s: drug_trial_spec(s, "builtin:drug_trial"), name="builtin")
    loaded = [datasets.load(*load_spec(folder)) for folder in (from_table, builtin)]
    np.testing.assert_array_equal(loaded[0].features, loaded[1].features)
    np.testing.assert_array_equal(loaded[0].labels, loaded[1].labels)
    assert loaded[0].classes == loaded[1].classes == ["no_side_effects", "side_effects"]
    bundle = train(from_table).bundle
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["provenance"]["spec"]["data"]["source"] == "spark:patients"
    assert metadata["provenance"]["rows"] == {"train": 1890, "validation": 210}


def test_a_missing_spark_table_is_a_spec_error(spark: SparkSession, make_spec: SpecWriter):
    del spark  # the active session, where the table is looked up
    folder = make_spec(lambda s: s["data"].update(source="spark:no_such_table"))
    with pytest.raises(SpecError, match=r"data\.source: no table or view 'no_such_table'"):
        train(folder)


def test_parquet_read_through_spark_equals_pyarrow(
    spark: SparkSession, make_spec: SpecWriter, tmp_path: Path
):
    rng = np.random.default_rng(1)
    folder = make_spec(
        lambda s: s["data"].update(source="parquet:flowers.parquet", classes=None), name="pq"
    )
    flowers = {
        name: rng.normal(5, 1, 40)
        for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
    }
    flowers["species"] = rng.choice(["setosa", "versicolor", "virginica"], 40)
    pq.write_table(pa.table(flowers), folder / "flowers.parquet")
    spec, spec_file = load_spec(folder)
    plain = datasets.load(spec, spec_file)
    through_spark = datasets.load(spec, spec_file, spark=spark)
    np.testing.assert_array_equal(plain.features, through_spark.features)
    np.testing.assert_array_equal(plain.labels, through_spark.labels)
    assert plain.classes == through_spark.classes


@pytest.mark.slow
def test_ddp_ranks_read_their_own_parquet_row_groups_and_split_alike_every_run(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The drug trial in 3 Parquet files of 256-row groups: the driver reads no row (any call
    that would read some fails), the ranks evaluate exactly the rows the documented hash
    holds out, and the CLI's run of the same spec ends with the same split and metrics."""
    del spark  # the session both runs find
    folder = committed_spec("side_effects", tmp_path / "side_effects")
    trial = datasets.drug_trial(42)
    names = np.array(["no", "yes"])[trial["side_effects"]]  # the classes come from the ranks
    (folder / "patients").mkdir()
    for number, rows in enumerate(np.array_split(np.arange(2100), 3)):
        part = pa.table({"age": trial["age"][rows], "side_effects": names[rows]})
        pq.write_table(part, folder / "patients" / f"part-{number}.parquet", row_group_size=256)
    spec = yaml.safe_load((folder / "model.yaml").read_text())
    del spec["data"]["classes"]
    spec["data"]["source"] = "parquet:patients"
    spec["compile"]["optimizer"]["learning_rate"] = 0.01
    spec["fit"].update(batch_size=50, epochs=3, verbose=0)
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))

    def rows_on_the_driver(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the driver read rows of the data set")

    monkeypatch.setattr(datasets, "read_source", rows_on_the_driver)  # the collecting path
    for reader in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, reader, rows_on_the_driver)
    monkeypatch.setattr(pq, "read_table", rows_on_the_driver)

    first = train_distributed(folder, num_processes=2)
    validation = held_out(np.arange(2100), 42, 0.1)
    metadata = json.loads((first.bundle / "metadata.json").read_text())
    assert metadata["provenance"]["rows"] == {
        "train": int((~validation).sum()),
        "validation": int(validation.sum()),
    }
    assert metadata["provenance"]["distributed"]["row_groups"] == 9
    assert metadata["classes"] == ["no", "yes"]
    assert first.metrics["val_accuracy"] >= 0.9
    ages = trial["age"][validation].astype(np.float32)[:, None]
    predicted = inference.load(first.bundle).predict(ages).class_index
    assert np.mean(predicted == trial["side_effects"][validation]) == pytest.approx(
        first.metrics["val_accuracy"]
    )
    assert main([str(folder), "--spark", "--num-processes", "2"]) == 0
    again = json.loads((folder / "2" / "metadata.json").read_text())
    assert again["provenance"]["rows"] == metadata["provenance"]["rows"]
    assert again["metrics"] == metadata["metrics"]


def test_parquet_that_spark_cannot_read_is_a_spec_error(spark: SparkSession, make_spec: SpecWriter):
    def source(name: str) -> Any:
        folder = make_spec(lambda s: s["data"].update(source=f"parquet:{name}"), name=name)
        return load_spec(folder)

    with pytest.raises(SpecError, match=r"data\.source: nowhere\.parquet not found \(looked in "):
        datasets.load(*source("nowhere.parquet"), spark=spark)
    spec, spec_file = source("text.parquet")
    (spec_file.parent / "text.parquet").write_text("not parquet\n")
    with pytest.raises(
        SpecError,
        match=r"data\.source: Spark cannot read text\.parquet as parquet \(org\.apache\.spark\."
        r"SparkException: \[FAILED_READ_FILE\.CANNOT_READ_FILE_FOOTER\]",
    ):
        datasets.load(spec, spec_file, spark=spark)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spark", "--num-processes", "0"], "--num-processes must be a positive integer, got 0"),
        (["--num-processes", "2"], "--num-processes is for --spark training without --search"),
        (["--search", "--parallelism", "-1"], "--parallelism must be a positive integer, got -1"),
        (["--master", "local[2]"], "--master is for --spark"),
        (["--parallelism", "2"], "--parallelism is for --search"),
        (
            ["--spark", "--master", "spark:/host:7077"],
            "--master: expected local, local[N], local[*], yarn, spark://HOST:PORT or "
            "k8s://https://HOST:PORT; got 'spark:/host:7077'",
        ),
        (["--spark", "--master", "local[0]"], "--master: expected local, "),
        (["--search", "--verbose", "2"], "--verbose is not for --search: trials train silently"),
    ],
)
def test_bad_spark_options_are_one_line_and_exit_2(
    args: list[str], message: str, make_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
):
    assert main([str(make_spec()), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}")
    assert err.count("\n") == 1


def test_spark_that_cannot_start_is_one_line_and_exit_1(make_spec: SpecWriter):
    """No Java (here: a JAVA_HOME with none in it) is the usual way a first Spark run fails."""
    result = run_cli(str(make_spec()), "--spark", env={"JAVA_HOME": "/nonexistent"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: Spark did not start: [JAVA_GATEWAY_EXITED] Java gateway process exited before "
        "sending its port number."
    )


@pytest.mark.slow
def test_a_failing_distributed_run_is_one_error_not_a_hang(
    spark: SparkSession, make_spec: SpecWriter, capsys: pytest.CaptureFixture[str]
):
    """Global batch 2 on 2 processes is 1 row per rank: batch normalization refuses it. The
    ranks' own output streams to stderr first; the command's verdict is the last line. Lines
    of torch's own logs (glog style, `E1123 09:53:33.202000 pid file:line]`) are its reports,
    not ours: when the other rank's agent times out on its exit barrier, torch logs that
    with a traceback of its own (seen once, on a loaded machine)."""
    del spark  # the session the command finds

    def edit(spec: dict[str, Any]) -> None:
        spec["model"]["layers"].insert(1, {"type": "batch_normalization"})
        spec["fit"].update(batch_size=2, epochs=1)

    folder = make_spec(edit)
    assert main([str(folder), "--spark", "--num-processes", "2"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: rank 0: ValueError: Expected more than 1 value per channel when training.*",
        err.splitlines()[-1],
    )
    ours = [line for line in err.splitlines() if not TORCH_LOG_LINE.match(line)]
    assert not [line for line in ours if "Traceback" in line], err  # whose, when it fails
    assert not [p for p in folder.iterdir() if p.name != "model.yaml"]


@pytest.mark.slow
def test_ddp_on_a_spark_connect_session(tmp_path: Path):
    """`--remote`: the same DDP run on the pyspark wheel's local Spark Connect server (no
    SparkContext in the client: tags, task slots and the barrier job go through the session)."""
    folder = tmp_path / "side_effects"
    folder.mkdir()
    shutil.copy(MODELS / "side_effects" / "model.yaml", folder / "model.yaml")
    result = run_cli(
        str(folder),
        "--spark",
        "--remote",
        "local[2]",
        "--num-processes",
        "2",
        "--epochs",
        "2",
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Bundle written: {folder / '1'} (loss " in result.stdout
    metadata = json.loads((folder / "1" / "metadata.json").read_text())
    assert metadata["provenance"]["distributed"]["num_processes"] == 2
