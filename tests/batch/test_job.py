"""`python -m batch score` and `spark-submit`, end to end, as a data engineer runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import inference
from tests.conftest import MODELS, REPO

pytestmark = pytest.mark.slow  # each test starts its own Spark


@pytest.fixture(scope="module")
def patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    ages = np.random.default_rng(0).integers(13, 101, 3000).astype(float)
    ages[[10, 20]] = np.nan
    table = pa.table({"id": np.arange(3000), "age": pa.array(ages, mask=np.arange(3000) == 30)})
    pq.write_table(table, folder / "patients.parquet", row_group_size=700)
    return folder / "patients.parquet"


def batch_cli(
    *args: str, submit: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own (`env` added to this one's environment)."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **(env or {})}
    if submit:
        spark_submit = Path(sys.executable).parent / "spark-submit"
        command = [str(spark_submit), "--master", "local[2]", "batch/__main__.py", *args]
    else:
        command = [sys.executable, "-m", "batch", *args]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False, env=env
    )


def check_output(path: Path, rows: int = 3000) -> None:
    table = pq.read_table(path).to_pandas().sort_values("id")
    assert len(table) == rows
    assert table["pred_error"].notna().sum() == 3
    good = table[table["pred_error"].isna()]
    expected = inference.load(MODELS / "side_effects").predict(good[["age"]].to_numpy(np.float32))
    np.testing.assert_allclose(np.stack(good["pred_scores"]), expected.scores, atol=1e-6)
    assert not list(path.parent.glob("*.tmp-*")), "no staging folder may remain"


def test_score_parquet(patients: Path, tmp_path: Path):
    out = tmp_path / "scored"
    result = batch_cli(
        "score", "--model", "models/side_effects", "--input", str(patients), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "Scored 3000 rows (3 could not be scored) into" in result.stdout
    assert "rows/s" in result.stderr  # the job's log line with its speed
    check_output(out)


def test_spark_submit_local_2(patients: Path, tmp_path: Path):
    out = tmp_path / "submitted"
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        str(patients),
        "--output",
        str(out),
        submit=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_output(out)


def test_output_exists_then_overwrite(patients: Path, tmp_path: Path):
    out = tmp_path / "scored"
    out.mkdir()
    (out / "old.txt").write_text("previous result")
    result = batch_cli(
        "score", "--model", "models/side_effects", "--input", str(patients), "--output", str(out)
    )
    assert result.returncode == 2
    assert "exists; pass --mode overwrite" in result.stderr
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        str(patients),
        "--output",
        str(out),
        "--mode",
        "overwrite",
    )
    assert result.returncode == 0, result.stderr
    assert not (out / "old.txt").exists()
    check_output(out)


def test_fail_on_bad_rows_writes_nothing(patients: Path, tmp_path: Path):
    out = tmp_path / "strict"
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        str(patients),
        "--output",
        str(out),
        "--fail-on-bad-rows",
    )
    assert result.returncode == 1
    assert (
        "3 of 3000 rows could not be scored (--fail-on-bad-rows); first: feature 'age'"
        in result.stderr
    )
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "models/nowhere"], "models/nowhere: no such model folder"),
        (["--input", "missing.parquet"], "input missing.parquet does not exist"),
        (["--model", "models/iris"], "feature column(s) 'sepal_length', 'sepal_width'"),
    ],
)
def test_errors_are_one_line(patients: Path, tmp_path: Path, args: list[str], message: str):
    base = {
        "--model": "models/side_effects",
        "--input": str(patients),
        "--output": str(tmp_path / "o"),
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = batch_cli("score", *[x for kv in base.items() for x in kv])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_jvm_failure_is_one_line(tmp_path: Path):
    """A file only Spark's reader opens (in a partition folder) that is not Parquet."""
    (tmp_path / "by_day" / "day=1").mkdir(parents=True)
    (tmp_path / "by_day" / "day=1" / "p.parquet").write_text("not parquet")
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        str(tmp_path / "by_day"),
        "--output",
        str(tmp_path / "o"),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Spark: ")
    assert "Traceback" not in result.stderr


def test_a_store_no_file_system_opens_is_one_line_before_spark(tmp_path: Path):
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        "nosuchfs://bucket/p.parquet",
        "--output",
        str(tmp_path / "o"),
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot open nosuchfs://bucket/p.parquet: no file system")
    assert "Traceback" not in result.stderr


def test_csv_in_and_out_with_featurization(tmp_path: Path):
    source = tmp_path / "p.csv"
    source.write_text("id,age\n1,70\n2,twenty\n3,\n4,20\n")
    out = tmp_path / "features"
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        str(source),
        "--output",
        str(out),
        "--output-format",
        "csv",
        "--outputs",
        "dense,class_index",
    )
    assert result.returncode == 0, result.stderr
    lines = sorted("".join(p.read_text() for p in out.glob("*.csv")).splitlines())
    assert lines[0].startswith("1,70,")
    assert "feature 'age': 'twenty' is not a number" in lines[1]
    assert "feature 'age' is null" in lines[2]
