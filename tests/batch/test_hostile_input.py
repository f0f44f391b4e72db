"""The batch CLI against hostile input, through the real command (a subprocess):
- every mistake in the model, paths or arguments is one line on stderr and exit 2, before Spark
  starts (no JVM output at all);
- the job never deletes or changes its input, however the paths are spelt (symlinks, `..`,
  s3a:// for s3://);
- CSV fields come back as they went in (RFC 4180: quoted commas, doubled quotes, line breaks);
- what a killed run leaves behind is cleaned by the next run, never a live run's staging."""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import MODELS, REPO

SPARK_STARTED = "log4j"
"""What the JVM prints as it starts: never seen when the CLI refuses before work."""
MODEL = str(MODELS / "side_effects")
HOST = "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname())
NAMES = ['Doe, "Jane"', "line one\nline two", 'say ""hi""', " padded ", "", "ends\r\n", "é ✓"]

AS_READ = [name.replace("\r\n", "\n") for name in NAMES]
"""What Spark's CSV parser reads: the same text, but a line break inside a quoted field is read as
\n whatever it was (documented in docs/batch.md), and an empty field is null (written back
empty)."""


def cli(*args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    command = [sys.executable, "-m", "batch", "score", *args]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False, env=env
    )


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """One line on stderr, exit 2, the message in it, and no JVM started."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert SPARK_STARTED not in result.stderr


@pytest.fixture
def patients(tmp_path: Path) -> Path:
    folder = tmp_path / "patients"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "age": [20.0, 70.0, 45.0]}), folder / "p.parquet")
    return folder


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` that nobody can write in: its mode for a user, the immutable flag for root
    (whom modes do not stop)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if (
        subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True).returncode
        != 0
    ):
        pytest.skip(
            "running as root where chattr +i is not allowed: cannot make a folder read-only"
        )
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_missing_model_folder(patients: Path, tmp_path: Path):
    result = cli("--model", str(tmp_path / "nope"), "--input", str(patients), "--output", "o")
    refused(result, "nope: no such model folder")


def test_a_bundle_that_cannot_load(patients: Path, tmp_path: Path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    result = cli(
        "--model", str(tmp_path / "broken"), "--input", str(patients), "--output", "o"
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "model.onnx" in result.stderr and SPARK_STARTED not in result.stderr


def test_a_missing_input(tmp_path: Path):
    result = cli("--model", MODEL, "--input", str(tmp_path / "none.parquet"), "--output", "o")
    refused(result, "none.parquet does not exist")


def test_a_truncated_parquet_file_and_an_empty_folder(patients: Path, tmp_path: Path):
    whole = (patients / "p.parquet").read_bytes()
    (patients / "p.parquet").write_bytes(whole[: len(whole) // 2])
    result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / "o"))
    refused(result, "p.parquet is not a readable Parquet file: ")
    (tmp_path / "empty").mkdir()
    result = cli(
        "--model", MODEL, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")
    )
    refused(result, "empty is an empty folder")


def test_missing_feature_columns_in_parquet_and_csv(patients: Path, tmp_path: Path):
    iris = str(MODELS / "iris")
    result = cli("--model", iris, "--input", str(patients), "--output", str(tmp_path / "o"))
    refused(result, "feature column(s) 'sepal_length', 'sepal_width', 'petal_length', 'petal_w")
    csv_in = str(names_csv(tmp_path))
    result = cli(
        "--model",
        MODEL,
        "--input",
        csv_in,
        "--output",
        str(tmp_path / "o"),
        "--features-column",
        "f",
    )
    refused(result, "features column 'f' is not in the input; columns: id, name, age")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its mode")
def test_an_unreadable_input(patients: Path, tmp_path: Path):
    (patients / "p.parquet").chmod(0)
    try:
        result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / "o"))
    finally:
        (patients / "p.parquet").chmod(0o644)
    refused(result, "p.parquet is not readable")


def test_a_read_only_output_folder(patients: Path, tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        result = cli("--model", MODEL, "--input", str(patients), "--output", str(locked / "o"))
    refused(result, f"cannot write in {locked}")


def test_an_existing_output_with_mode_error(patients: Path, tmp_path: Path):
    (tmp_path / "o").mkdir()
    result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / "o"))
    refused(result, "exists; pass --mode overwrite to replace it")


@pytest.mark.parametrize("name", ["scored.csv", "scored.parquet", "scored.json"])
def test_an_output_named_like_a_file(patients: Path, tmp_path: Path, name: str):
    result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / name))
    refused(result, "Spark writes a folder of part files, not one file; name a folder")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output-format", "csv", "--io", "arrow"], "--io arrow reads and writes Parquet only"),
        (["--io", "arrow", "--master", "spark://h:7077"], "--io arrow needs a local master"),
        (["--outputs", "nope"], "unknown output(s) ['nope']"),
        (["--features-column", "f", "--input-columns", "features=age"], "given two columns"),
        (["--input-columns", "nope=age"], "unknown input(s) 'nope'"),
        (["--version", "99"], "no version 99"),
    ],
)
def test_bad_argument_combinations(patients: Path, tmp_path: Path, args: list[str], message):  # type: ignore[no-untyped-def]
    result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / "o"), *args)
    refused(result, message)


def test_a_symlink_cannot_make_the_job_replace_its_input(patients: Path, tmp_path: Path):
    before = (patients / "p.parquet").read_bytes()
    link = tmp_path / "link"
    link.symlink_to(patients)
    for source, target in ((link, patients), (patients, link), (link / "p.parquet", patients)):
        result = cli(
            "--model", MODEL, "--input", str(source), "--output", str(target), "--mode", "overwrite"
        )  # fmt: skip
        refused(result, "is, holds or is inside the input")
    assert (patients / "p.parquet").read_bytes() == before
    assert sorted(p.name for p in patients.iterdir()) == ["p.parquet"]


def test_dot_dot_and_remote_spellings_of_the_same_place(patients: Path, tmp_path: Path):
    dotted = str(tmp_path / "elsewhere" / ".." / "patients" / "p.parquet")
    result = cli(
        "--model", MODEL, "--input", dotted, "--output", str(patients), "--mode", "overwrite"
    )
    refused(result, "is, holds or is inside the input")
    for source, target in (
        ("s3a://Bucket/data/", "s3://bucket/data/scored"),
        ("s3://bucket/data/x/../in.parquet", "s3a://bucket//data/in.parquet/"),
    ):
        result = cli("--model", MODEL, "--input", source, "--output", target, "--master", "k8s://h")
        refused(result, "is, holds or is inside the input")


def test_a_live_runs_staging_is_never_touched(patients: Path, tmp_path: Path):
    live = tmp_path / f"o.tmp-{os.getpid()}-{HOST}-0123456789ab"  # this test process: alive
    live.mkdir()
    (live / "part-00000.parquet").write_bytes(b"being written")
    result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / "o"))
    refused(result, f"another run (process {os.getpid()}) is writing")
    assert (live / "part-00000.parquet").read_bytes() == b"being written"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no process has this id any more (until the system reuses it)
    return child.pid


@pytest.mark.slow
def test_stale_staging_of_a_dead_run_is_removed_and_others_reported(patients: Path, tmp_path: Path):
    dead = tmp_path / f"o.tmp-{dead_pid()}-{HOST}-0123456789ab"
    elsewhere = tmp_path / "o.tmp-1-another.host-0123456789ab"
    for folder in (dead, elsewhere):
        folder.mkdir()
        (folder / "part-00000.parquet").write_bytes(b"half written")
    result = cli("--model", MODEL, "--input", str(patients), "--output", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert not dead.exists()
    assert f"removing {dead}, left by a run (process" in result.stderr
    assert elsewhere.exists() and f"{elsewhere} was left by a run on another.host" in result.stderr
    assert pq.read_table(tmp_path / "o").num_rows == 3


def start_and_catch_writing(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[str], int]:
    """A run on 400,000 rows, caught once its staging folder exists (its stderr goes to
    `log.txt`); the command and the rows."""
    source = tmp_path / "many.parquet"
    rows = 400_000
    pq.write_table(pa.table({"id": np.arange(rows), "age": np.full(rows, 50.0)}), source)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    command = [sys.executable, "-m", "batch", "score", "--model", MODEL, "--input", str(source)]
    command += ["--output", str(tmp_path / "o")]
    run = subprocess.Popen(
        [*command, "--io", "spark"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "log.txt").open("w"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("o.tmp-*")) and run.poll() is None:
        assert time.monotonic() < deadline, "the run never made its staging folder"
        time.sleep(0.02)
    return run, command, rows


@pytest.mark.slow
def test_kill_9_then_the_next_run_cleans_up(tmp_path: Path):
    run, command, rows = start_and_catch_writing(tmp_path)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and the JVM it started, as an OOM kill would
    run.wait()
    left = list(tmp_path.glob("o.tmp-*"))
    assert left and not (tmp_path / "o").exists(), "the run finished before it could be killed"
    result = cli(*command[4:])
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("o.tmp-*"))
    assert pq.read_table(tmp_path / "o").num_rows == rows


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_stops_the_run_and_removes_its_staging(
    tmp_path: Path, signum: signal.Signals
):
    run, _, _ = start_and_catch_writing(tmp_path)
    run.send_signal(signum)  # the driver only, as Kubernetes signals a container's main process
    run.wait(timeout=120)
    stderr = (tmp_path / "log.txt").read_text()
    assert run.returncode == 128 + signum, stderr
    assert f"\nerror: stopped by {signum.name}; nothing was written\n" in stderr  # then the JVM
    assert "Traceback" not in stderr
    assert not list(tmp_path.glob("o*")), "neither an output nor a staging folder may remain"


def names_csv(folder: Path) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")  # RFC 4180, as Excel writes it
    writer.writerow(["id", "name", "age"])
    for i, name in enumerate(NAMES):
        writer.writerow([i, name, 20 + i])
    path = folder / "names.csv"
    path.write_text(text.getvalue(), newline="")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("io_", ["spark", "auto"])
def test_csv_fields_round_trip(tmp_path: Path, io_: str):
    out = tmp_path / "scored"
    result = cli(
        "--model", MODEL, "--input", str(names_csv(tmp_path)), "--output", str(out),
        "--output-format", "csv", "--io", io_,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Scored {len(NAMES)} rows (0 could not be scored)" in result.stdout
    rows = []
    for part in sorted(out.glob("part-*.csv")):
        with part.open(newline="") as f:
            rows += list(csv.DictReader(f))
    got = {int(r["id"]): r["name"] for r in rows}
    assert len(rows) == len(NAMES)
    assert [got[i] for i in range(len(NAMES))] == AS_READ
    assert all(r["pred_error"] == "" for r in rows)


@pytest.mark.slow
def test_csv_fields_reach_parquet_unchanged(tmp_path: Path):
    out = tmp_path / "scored"
    result = cli("--model", MODEL, "--input", str(names_csv(tmp_path)), "--output", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out).to_pandas().sort_values("id")
    assert table["name"].fillna("").tolist() == AS_READ
    assert table["pred_error"].isna().all()
