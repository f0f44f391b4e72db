"""Shared fixtures: specs written into temporary folders, small bundles trained once, and one
real Spark session (`local[2]`) for the batch and training tests."""

from __future__ import annotations

import copy
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"

IRIS_SPEC: dict[str, Any] = {
    "name": "iris",
    "data": {
        "source": "builtin:iris",
        "features": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "label": "species",
        "classes": ["setosa", "versicolor", "virginica"],
        "validation_split": 0.2,
        "seed": 7,
    },
    "preprocessing": {"scale": "standard"},
    "model": {
        "input_shape": [4],
        "layers": [
            {"type": "dense", "units": 8, "activation": "relu"},
            {"type": "dense", "units": 3, "activation": "softmax"},
        ],
    },
    "compile": {
        "optimizer": {"name": "adam", "learning_rate": 0.02},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
    },
    "fit": {"batch_size": 16, "epochs": 5, "verbose": 0},
}

SpecWriter = Callable[..., Path]


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@pytest.fixture
def make_spec(tmp_path: Path) -> SpecWriter:
    """Write a spec (the iris one, changed by `edit`) into a fresh model folder."""

    def make(edit: Callable[[dict[str, Any]], None] | None = None, name: str = "m") -> Path:
        spec = copy.deepcopy(IRIS_SPEC)
        if edit is not None:
            edit(spec)
        return write_spec(tmp_path / name, spec)

    return make


@pytest.fixture(scope="session")
def iris_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small iris classifier, trained and exported once for the whole session."""
    from training import train

    folder = write_spec(tmp_path_factory.mktemp("repo") / "iris", copy.deepcopy(IRIS_SPEC))
    return train(folder).bundle


@pytest.fixture
def copied_bundle(iris_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the iris bundle's model folder, safe to damage."""
    target = tmp_path / "iris"
    shutil.copytree(iris_bundle.parent, target)
    return target / iris_bundle.name


@pytest.fixture(scope="session")
def byom_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository of bare graphs from real exporters (see tests/byom.py), made once:
    read it, never write into it (copy it to change it)."""
    from tests import byom

    repo = tmp_path_factory.mktemp("byom")
    for make in (byom.digits_sklearn, byom.digits_cnn, byom.tokens, byom.strings):
        make(repo)
    return repo


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One real Spark session (`local[2]`) for the whole test session; pyspark is imported only
    by the tests that use it."""
    from pyspark import SparkConf, SparkContext

    from batch.session import spark_session

    # Spark's catalog creates its warehouse, ./spark-warehouse by default, on first use: here
    # that would be the source tree. It is a static setting, so the context gets it before the
    # session is built on that context.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read when the context starts
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    conf = SparkConf().setMaster("local[2]").setAppName("tests")
    SparkContext.getOrCreate(conf.set("spark.sql.warehouse.dir", str(warehouse)))
    session = spark_session("local[2]", app_name="tests")
    session.conf.set("spark.sql.shuffle.partitions", "4")
    yield session
    session.stop()
