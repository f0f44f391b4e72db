"""Spark Connect (issue 24): `score_dataframe`, the SQL function and the ML Transformer (saved,
overwritten, loaded, in a Pipeline) on a `SparkSession.builder.remote("local[2]")` session, the
local Connect server of the pyspark wheel: the same answers as onnxruntime run directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import inference
from tests import byom
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
