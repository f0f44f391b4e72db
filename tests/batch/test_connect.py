"""Spark Connect (issue 24): `score_dataframe`, the SQL function and the ML Transformer (saved,
overwritten, loaded, in a Pipeline) on a `SparkSession.builder.remote("local[2]")` session, the
local Connect server of the pyspark wheel: the same answers as onnxruntime run directly. And
`python -m batch score --remote sc://...` (or `SPARK_REMOTE`) against a Connect server of its
own: the same table as on a classic session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import inference
from tests import byom
from tests.batch.test_job import batch_cli
from tests.conftest import MODELS, REPO


@pytest.mark.slow
def test_every_dataframe_interface_works_on_spark_connect(byom_repo: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "side_effects", repo / "side_effects")
    shutil.copytree(byom_repo / "digits_cnn", repo / "digits_cnn")
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("connect_client.py")),
            str(repo),
            str(tmp_path),
        ],
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["session"].startswith("pyspark.sql.connect")

    tabular = inference.load(repo / "side_effects")
    expected = tabular.predict(np.array([[20.0], [45.0], [70.0]], np.float32), outputs=["scores"])
    rows = got["tabular"]
    assert rows[0][0] is None and rows[0][3] is not None  # a null age: reported, not dropped
    assert [r[1] for r in rows[1:]] == ["no_side_effects", "no_side_effects", "side_effects"]
    np.testing.assert_allclose([r[2] for r in rows[1:]], expected["scores"], atol=1e-6)
    assert got["sql"][0] == "side_effects"
    np.testing.assert_allclose(got["sql"][1], expected["scores"][2], atol=1e-6)
    assert got["transformer"][1:] == ["no_side_effects", "no_side_effects", "side_effects"]

    images = np.tile(np.arange(64, dtype=np.float32), (3, 1)).reshape(byom.digits_images(3).shape)
    cnn = inference.load(repo / "digits_cnn").predict({"image": images}, outputs=["scores"])
    np.testing.assert_allclose(got["tensors"], cnn["scores"], atol=1e-5)


SERVER = """
import sys
from pyspark.sql import SparkSession

spark = (
    SparkSession.builder.master("local[2]")
    .config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
    .config("spark.connect.grpc.binding.address", "127.0.0.1")
    .config("spark.connect.grpc.binding.port", sys.argv[1])
    .getOrCreate()
)
spark.sparkContext.setLogLevel("WARN")
print("ready", flush=True)
sys.stdin.read()  # serve until the test closes stdin
"""


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server of the pyspark wheel (local[2]) in a process of its own, as a
    cluster's would be: its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        cwd=tmp_path_factory.mktemp("connect-server"),
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield f"sc://127.0.0.1:{port}"
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def table(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas().sort_values("id").reset_index(drop=True)


@pytest.mark.slow
def test_the_cli_on_spark_connect_writes_what_a_classic_session_writes(
    connect_server: str, tmp_path: Path
):
    rows = 3000
    ages = np.random.default_rng(0).integers(13, 101, rows).astype(float)
    ages[[10, 20]] = np.nan
    source = tmp_path / "patients.parquet"
    pq.write_table(
        pa.table({"id": np.arange(rows), "age": pa.array(ages, mask=np.arange(rows) == 30)}),
        source,
        row_group_size=700,
    )
    args = ["score", "--model", "models/side_effects", "--input", str(source), "--output"]
    classic = batch_cli(*args, str(tmp_path / "classic"))
    assert classic.returncode == 0, classic.stderr[-3000:]
    remote = batch_cli(*args, str(tmp_path / "remote"), "--remote", connect_server)
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert f"Scored {rows} rows (3 could not be scored)" in remote.stdout
    # Spark's own reader and writer, the server named by the environment
    env = {"SPARK_REMOTE": connect_server}
    through_spark = batch_cli(*args, str(tmp_path / "spark"), "--io", "spark", env=env)
    assert through_spark.returncode == 0, through_spark.stderr[-3000:]
    expected = table(tmp_path / "classic")
    assert expected["pred_error"].notna().sum() == 3
    for out in ("remote", "spark"):
        pd.testing.assert_frame_equal(table(tmp_path / out), expected, check_dtype=False)
        assert (tmp_path / out / "_SUCCESS").exists()
    assert not list(tmp_path.glob("*.tmp-*")), "no staging folder may remain"
    both = batch_cli(*args, str(tmp_path / "x"), "--remote", connect_server, "--master", "local")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_a_connect_server_that_does_not_answer_is_one_line(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    result = batch_cli(
        "score",
        "--model",
        "models/side_effects",
        "--input",
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        env={"SPARK_REMOTE": f"sc://127.0.0.1:{port}"},
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"error: no Spark Connect server answers at 127.0.0.1:{port} (Connection refused)"
    )
