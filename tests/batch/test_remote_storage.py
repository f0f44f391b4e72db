"""Remote storage on the fast path (issue 24, item 4): `python -m batch score` reads and writes
`s3://` through pyarrow, against a real S3 API (moto's server on 127.0.0.1, started here), with
the local guarantees: the same table as a local run, `_SUCCESS` last, nothing left by a failed
run, `--mode` respected, the checks before Spark, one-line errors for a missing bucket, bad
credentials and an unreachable endpoint. The S3 block of docs/batch.md runs here as written
(tested: tests/batch/test_remote_storage.py), with the endpoint of moto's server."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from tests.batch.test_job import batch_cli
from tests.conftest import REPO
from tests.docs_blocks import parse

ROWS = 3000
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def env(endpoint: str) -> dict[str, str]:
    """What the CLI is given: the standard AWS variables, naming the moto server."""
    return {**CREDENTIALS, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="module")
def s3(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> pafs.S3FileSystem:
    """The store, as the test sees it: a bucket `data` holding `in/` (two Parquet files of
    patients, three of whose rows cannot be scored), a file that is not Parquet and an empty
    folder."""
    fs = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        allow_bucket_creation=True,
    )
    fs.create_dir("data")
    for i, part in enumerate(np.array_split(np.arange(ROWS), 2)):
        pq.write_table(patients(part), f"data/in/part-{i}.parquet", filesystem=fs)
    with fs.open_output_stream("data/bad/x.parquet") as f:
        f.write(b"not parquet")
    fs.create_dir("data/empty")
    local = tmp_path_factory.mktemp("local")
    pq.write_table(patients(np.arange(ROWS)), local / "patients.parquet")
    return fs


def patients(ids: np.ndarray) -> pa.Table:
    ages = np.random.default_rng(0).integers(13, 101, ROWS).astype(float)
    ages[[10, 20]] = np.nan
    return pa.table({"id": ids, "age": pa.array(ages[ids], mask=ids == 30)})


def score(*args: str, env: dict[str, str], model: str = "models/side_effects"):  # type: ignore[no-untyped-def]
    return batch_cli("score", "--model", model, *args, env=env)


def table(path: str, fs: pafs.FileSystem | None = None) -> pd.DataFrame:
    read = pq.read_table(path, filesystem=fs).to_pandas()
    return read.sort_values("id").reset_index(drop=True)


def keys(s3: pafs.S3FileSystem, prefix: str = "data") -> list[str]:
    found = s3.get_file_info(pafs.FileSelector(prefix, recursive=True))
    return [f.path for f in found if f.type == pafs.FileType.File]


@pytest.mark.slow
def test_parquet_in_and_out_of_s3_equals_a_local_run(
    s3: pafs.S3FileSystem, env: dict[str, str], tmp_path: Path
):
    source = tmp_path / "patients.parquet"
    pq.write_table(patients(np.arange(ROWS)), source)
    local = score("--input", str(source), "--output", str(tmp_path / "local"), env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    remote = score("--input", "s3://data/in/", "--output", "s3://data/scored", env=env)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert f"Scored {ROWS} rows (3 could not be scored) into s3://data/scored" in remote.stdout
    assert "pyarrow reads and writes the Parquet files" in remote.stderr  # not Spark's writer
    expected = table(str(tmp_path / "local"))
    pd.testing.assert_frame_equal(table("data/scored", s3), expected, check_dtype=False)
    written = keys(s3, "data/scored")
    assert "data/scored/_SUCCESS" in written
    assert not [k for k in keys(s3) if ".tmp-" in k], "no staging may remain"

    again = score("--input", "s3://data/in", "--output", "s3://data/scored", env=env)
    assert again.returncode == 2
    assert "output s3://data/scored exists; pass --mode overwrite" in again.stderr
    with s3.open_output_stream("data/scored/old.txt") as f:
        f.write(b"a previous result")
    replaced = docs_block(env)  # the same, --mode overwrite
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert sorted(keys(s3, "data/scored")) == sorted(written)
    pd.testing.assert_frame_equal(table("data/scored", s3), expected, check_dtype=False)


def docs_block(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The S3 example of docs/batch.md, run as written, where `AWS_ENDPOINT_URL` names moto."""
    marker = ("tested", "tests/batch/test_remote_storage.py")
    [block] = [b for b in parse(REPO / "docs" / "batch.md", REPO) if b.marker == marker]
    return subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + block.text],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_a_failed_run_leaves_nothing_in_the_store(s3: pafs.S3FileSystem, env: dict[str, str]):
    failed = score(
        "--input", "s3://data/in", "--output", "s3://data/strict", "--fail-on-bad-rows", env=env
    )
    assert failed.returncode == 1
    assert f"3 of {ROWS} rows could not be scored" in failed.stderr
    assert not [k for k in keys(s3) if k.startswith("data/strict")], "no partial output"


@pytest.mark.slow
def test_spark_without_the_s3a_connector_is_one_line(s3: pafs.S3FileSystem, env: dict[str, str]):
    result = score("--input", "s3://data/in", "--output", "s3://data/o", "--io", "spark", env=env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Spark's own reader and writer cannot open s3://data/in")
    assert "hadoop-aws" in last
    assert "Traceback" not in result.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "s3://nobucket/out"], "the bucket 'nobucket' does not exist"),
        (["--input", "s3://nobucket/p.parquet"], "input s3://nobucket/p.parquet does not exist"),
        (["--input", "s3://data/missing.parquet"], "input s3://data/missing.parquet does not"),
        (["--output", "s3a://data/in/scored"], "write the scores somewhere else"),
        (["--input", "s3://data/bad"], "input s3://data/bad/x.parquet is not a readable Parquet"),
        (["--input", "s3://data/empty"], "input s3://data/empty is an empty folder"),
        (["--model", "models/iris"], "feature column(s) 'sepal_length', 'sepal_width'"),
    ],
)
def test_remote_mistakes_are_refused_before_spark(
    s3: pafs.S3FileSystem, env: dict[str, str], args: list[str], message: str
):
    given = {"--input": "s3://data/in", "--output": "s3://data/never"}
    given.update(dict(zip(args[::2], args[1::2], strict=True)))
    model = given.pop("--model", "models/side_effects")
    result = score(*[x for kv in given.items() for x in kv], env=env, model=model)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "Spark" not in result.stderr


def test_an_unreachable_endpoint_is_one_line(env: dict[str, str]):
    unreachable = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}
    result = score("--input", "s3://data/in", "--output", "/tmp/never", env=unreachable)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: s3://data/in: cannot reach")
    assert "Traceback" not in result.stderr


def test_bad_credentials_are_one_line(s3: pafs.S3FileSystem, env: dict[str, str]):
    with enable_iam_authentication():  # moto now checks keys, and knows none
        result = score("--input", "s3://data/in", "--output", "s3://data/never", env=env)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: s3://data/") and "access denied; check the credentials" in last
    assert "Traceback" not in result.stderr


def test_staging_a_killed_run_left_in_the_store_is_removed(
    s3: pafs.S3FileSystem, env: dict[str, str]
):
    from batch.staging import _HOST

    exited = subprocess.Popen(["true"])
    exited.wait()
    dead = exited.pid
    stale = f"data/later.tmp-{dead}-{_HOST}-0123456789ab"
    with s3.open_output_stream(f"{stale}/part-00000.snappy.parquet") as f:
        f.write(b"half a result")
    # refused after the staging check (the iris model's columns are not there): no Spark
    result = score(
        "--input", "s3://data/in", "--output", "s3://data/later", env=env, model="models/iris"
    )
    assert result.returncode == 2
    assert f"removing s3://data/{stale.split('/')[1]}, left by a run (process {dead})" in (
        result.stderr
    )
    assert not [k for k in keys(s3) if ".tmp-" in k]
