"""Any ONNX model, any tensor, on Spark: bare graphs from skl2onnx and torch scored from array
columns (flat, nested, Spark ML vectors, scalars) through `score_dataframe`, the job and its
CLI, the Transformer and SQL, each answer equal to onnxruntime run directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, Row, SparkSession

from batch import ScoringError, score_dataframe
from batch.__main__ import main
from batch.job import JobError, run
from batch.sql import register_model
from batch.transformer import BundleTransformer
from tests import byom
from tests.batch.conftest import Direct

IMAGES = byom.digits_images(60)


def values(rows: list[Row], column: str) -> np.ndarray:
    return np.array([r[column] for r in rows], np.float32)


def image_table(images: np.ndarray = IMAGES, nested: bool = False) -> pa.Table:
    pixels = images.tolist() if nested else list(images.reshape(len(images), -1).astype(float))
    return pa.table({"id": np.arange(len(images)), "pixels": pixels})


def check_cnn(rows: list[Row], direct: Direct, prefix: str = "pred_") -> None:
    expected = direct("digits_cnn", {"image": IMAGES})
    np.testing.assert_allclose(values(rows, f"{prefix}scores"), expected["scores"], atol=1e-5)
    np.testing.assert_allclose(values(rows, f"{prefix}features"), expected["features"], atol=1e-5)
    assert [r[f"{prefix}error"] for r in rows] == [None] * len(IMAGES)


def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data[:300].astype(np.float32)


def digits_table() -> pa.Table:
    return pa.table({"id": np.arange(300), "X": list(digits())})


def check_sklearn(rows: list[Row], direct: Direct, prefix: str = "pred_") -> None:
    expected = direct("digits_sklearn", {"X": digits()})
    assert [r[f"{prefix}label"] for r in rows] == expected["label"].tolist()
    got = values(rows, f"{prefix}probabilities")
    np.testing.assert_allclose(got, expected["probabilities"], atol=1e-5)


@pytest.mark.parametrize("nested", [False, True])
def test_cnn_from_flat_or_nested_arrays(
    spark: SparkSession, byom_repo: Path, direct: Direct, nested: bool
):
    df = spark.createDataFrame(image_table(nested=nested)).repartition(3)
    scored = score_dataframe(df, byom_repo / "digits_cnn", input_columns={"image": "pixels"})
    types = dict(scored.dtypes)
    assert types["pred_scores"] == "array<float>"
    assert types["pred_features"] == "array<array<array<float>>>"
    check_cnn(scored.orderBy("id").collect(), direct)


def test_sklearn_pipeline_from_a_vector_column(
    spark: SparkSession, byom_repo: Path, direct: Direct
):
    df = spark.createDataFrame(digits_table()).withColumn("X", array_to_vector("X"))
    assert dict(df.dtypes)["X"] == "vector"
    check_sklearn(score_dataframe(df, byom_repo / "digits_sklearn").orderBy("id").collect(), direct)


def token_rows() -> tuple[list[dict[str, object]], list[dict[str, np.ndarray]]]:
    """Sentences of two lengths interleaved in one table, then two bad ones: a mask of another
    length (the graph cannot broadcast it) and a token id past the table."""
    short, long = byom.token_batch(3, 5), byom.token_batch(2, 7, seed=1)
    rows: list[dict[str, object]] = []
    for i, (batch, row) in enumerate([(short, 0), (long, 0), (short, 1), (long, 1), (short, 2)]):
        ids, mask = batch["input_ids"][row], batch["attention_mask"][row]
        rows.append({"id": i, "ids": ids.tolist(), "mask": mask.tolist()})
    rows.append({"id": 5, "ids": [1, 2, 3], "mask": [1, 1]})
    rows.append({"id": 6, "ids": [1, 1000], "mask": [1, 1]})
    return rows, [short, long]


def check_tokens(rows: list[Row], direct: Direct, prefix: str = "pred_") -> None:
    _, (short, long) = token_rows()
    by_length = {5: direct("tokens", short), 7: direct("tokens", long)}
    order = [(5, 0), (7, 0), (5, 1), (7, 1), (5, 2)]
    for row, (length, i) in zip(rows[:5], order, strict=True):
        expected = by_length[length]
        assert row[f"{prefix}error"] is None
        np.testing.assert_allclose(row[f"{prefix}logits"], expected["logits"][i], atol=1e-5)
        np.testing.assert_allclose(row[f"{prefix}hidden"], expected["hidden"][i], atol=1e-5)
    assert "Attempting to broadcast" in rows[5][f"{prefix}error"]
    assert "idx=1000 must be within the inclusive range" in rows[6][f"{prefix}error"]
    assert rows[5][f"{prefix}logits"] is None and rows[6][f"{prefix}hidden"] is None


def tokens_frame(spark: SparkSession) -> DataFrame:
    rows, _ = token_rows()
    schema = "id long, ids array<bigint>, mask array<bigint>"
    return spark.createDataFrame(rows, schema).coalesce(1)  # one Arrow batch: lengths mixed


def test_tokens_of_mixed_lengths_in_one_batch(spark: SparkSession, byom_repo: Path, direct: Direct):
    df = tokens_frame(spark)
    scored = score_dataframe(
        df, byom_repo / "tokens", input_columns={"input_ids": "ids", "attention_mask": "mask"}
    )
    assert dict(scored.dtypes)["pred_hidden"] == "array<array<float>>"
    check_tokens(scored.orderBy("id").collect(), direct)


def test_bad_rows_are_reported_and_counted(spark: SparkSession, byom_repo: Path, tmp_path: Path):
    pixels: list[list[str] | None] = [[str(v) for v in image.ravel()] for image in IMAGES[:6]]
    pixels[1] = None
    pixels[2] = pixels[2][:60]  # type: ignore[index]
    pixels[3][7] = "NaN"  # type: ignore[index]
    pixels[4][0] = "dark"  # type: ignore[index]
    source = tmp_path / "pixels.parquet"
    pq.write_table(pa.table({"id": np.arange(6), "pixels": pixels}), source)
    reports = {
        io: run(
            spark,
            model=str(byom_repo / "digits_cnn"),
            input_path=str(source),
            output_path=str(tmp_path / io),
            input_columns={"image": "pixels"},
            io=io,  # type: ignore[arg-type]
        )
        for io in ("arrow", "spark")
    }
    assert {(r.rows, r.bad_rows) for r in reports.values()} == {(6, 4)}
    for io in reports:
        rows = spark.read.parquet(str(tmp_path / io)).orderBy("id").collect()
        label = "'pixels' (input 'image')"
        assert [r["pred_error"] for r in rows] == [
            None,
            f"{label} is null",
            f"{label} has 60 values; expected 64 (shape [1, 8, 8])",
            f"{label} holds NaN; this model does not accept NaN or infinity",
            f"{label} holds 'dark', not a number",
            None,
        ]
        assert [r["pred_scores"] is None for r in rows] == [False, True, True, True, True, False]


def test_the_arrow_and_spark_paths_write_the_same_table(
    spark: SparkSession, byom_repo: Path, direct: Direct, tmp_path: Path
):
    source = tmp_path / "images.parquet"
    pq.write_table(image_table(nested=True).rename_columns(["id", "image"]), source)
    for io in ("arrow", "spark"):
        report = run(
            spark, model=str(byom_repo / "digits_cnn"), input_path=str(source),
            output_path=str(tmp_path / io), io=io,  # type: ignore[arg-type]
        )  # fmt: skip
        assert (report.rows, report.bad_rows) == (60, 0)
    arrow, spark_io = (spark.read.parquet(str(tmp_path / io)) for io in ("arrow", "spark"))
    assert arrow.schema.simpleString() == spark_io.schema.simpleString()
    check_cnn(arrow.orderBy("id").collect(), direct)
    check_cnn(spark_io.orderBy("id").collect(), direct)


def test_vectors_in_parquet_are_left_to_spark(spark: SparkSession, byom_repo: Path, tmp_path: Path):
    from sklearn.datasets import load_digits

    x = load_digits().data[:20]
    df = spark.createDataFrame(pa.table({"id": np.arange(20), "X": list(x)}))
    df.withColumn("X", array_to_vector("X")).write.parquet(str(tmp_path / "vectors"))
    kw = {"model": str(byom_repo / "digits_sklearn"), "input_path": str(tmp_path / "vectors")}
    with pytest.raises(JobError, match=r"column\(s\) X hold a Spark ML vector"):
        run(spark, output_path=str(tmp_path / "a"), io="arrow", **kw)  # type: ignore[arg-type]
    report = run(spark, output_path=str(tmp_path / "o"), **kw)  # type: ignore[arg-type]
    assert (report.rows, report.bad_rows) == (20, 0)
    assert dict(spark.read.parquet(str(tmp_path / "o")).dtypes)["X"] == "vector"


CASES = {  # model: (its table, the column of each input, the check of its scores)
    "digits_cnn": (lambda: image_table(nested=True), {"image": "pixels"}, check_cnn),
    "digits_sklearn": (digits_table, {}, check_sklearn),
    "tokens": (
        lambda: pa.Table.from_pylist(token_rows()[0]),
        {"input_ids": "ids", "attention_mask": "mask"},
        check_tokens,
    ),
}


@pytest.mark.parametrize("model", CASES)
def test_the_cli_scores_each_model(
    spark: SparkSession, byom_repo: Path, direct: Direct, tmp_path: Path, capsys, model: str
):  # type: ignore[no-untyped-def]
    table, columns, check = CASES[model]
    pq.write_table(table(), tmp_path / "in.parquet")
    mapping = ["--input-columns", ",".join(f"{k}={v}" for k, v in columns.items())]
    code = main(
        [
            "score", "--model", str(byom_repo / model), "--input", str(tmp_path / "in.parquet"),
            "--output", str(tmp_path / "o"), "--master", "local[2]", "--prefix", "t_",
            *(mapping if columns else []),
        ]
    )  # fmt: skip
    assert code == 0
    bad = 2 if model == "tokens" else 0
    assert f"Scored {len(table())} rows ({bad} could not be scored) into" in capsys.readouterr().out
    check(spark.read.parquet(str(tmp_path / "o")).orderBy("id").collect(), direct, "t_")


def test_the_cli_refuses_a_bad_column_map(tmp_path: Path, capsys):  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exited:
        main(["score", "--model", "m", "--input", "i", "--output", "o", "--input-columns", "ids"])
    assert exited.value.code == 2
    assert "expected input=column pairs separated by commas" in capsys.readouterr().err


@pytest.mark.parametrize("model", CASES)
def test_the_transformer_saved_and_reloaded(
    spark: SparkSession, byom_repo: Path, direct: Direct, tmp_path: Path, model: str
):
    table, columns, check = CASES[model]
    df = spark.createDataFrame(table()).coalesce(1)
    stage = BundleTransformer(modelPath=str(byom_repo / model), inputColumns=columns)
    Pipeline(stages=[stage]).fit(df).write().save(str(tmp_path / "pipeline"))
    reloaded = PipelineModel.load(str(tmp_path / "pipeline"))
    assert reloaded.stages[0].getOrDefault("inputColumns") == columns
    check(reloaded.transform(df).orderBy("id").collect(), direct)


def test_sql_function_with_two_inputs(spark: SparkSession, byom_repo: Path, direct: Direct):
    tokens_frame(spark).createOrReplaceTempView("sentences")
    register_model(spark, "tokens", byom_repo / "tokens")
    rows = spark.sql(
        "SELECT id, s.logits AS pred_logits, s.hidden AS pred_hidden, s.error AS pred_error "
        "FROM (SELECT id, tokens(ids, mask) AS s FROM sentences) ORDER BY id"
    ).collect()
    check_tokens(rows, direct)


def test_every_tensor_type(spark: SparkSession, dtypes_repo: Path):
    feeds = byom.dtype_batch(2)
    feeds["u64"] = np.array([[0, 2**63 - 1]] * 2, np.uint64)  # a Spark bigint holds these
    spark_types = {
        "u8": "smallint", "i8": "tinyint", "i16": "smallint", "u16": "int", "i32": "int",
        "u32": "bigint", "u64": "bigint", "f16": "float", "f64": "double", "b": "boolean",
    }  # fmt: skip
    schema = ", ".join(f"{k} array<{t}>" for k, t in spark_types.items())
    rows = [tuple(feeds[k][i].tolist() for k in spark_types) for i in range(2)]
    scored = score_dataframe(spark.createDataFrame(rows, schema), dtypes_repo / "dtypes")
    out = {k: t for k, t in scored.dtypes if k.startswith("pred_")}
    assert out == {
        **{f"pred_{k}_out": f"array<{t}>" for k, t in spark_types.items()},
        "pred_u64_out": "array<decimal(20,0)>",
        "pred_error": "string",
    }
    for row in scored.collect():
        for key in spark_types:
            assert [float(v) for v in row[f"pred_{key}_out"]] == feeds[key][0].astype(
                float
            ).tolist()


def test_scalar_columns_for_a_per_row_scalar_input(spark: SparkSession, byom_repo: Path):
    df = spark.createDataFrame([(1, "Hello"), (2, None), (3, "WORLD")], "id int, text string")
    rows = score_dataframe(df, byom_repo / "strings").orderBy("id").collect()
    assert [(r["pred_lower"], r["pred_error"]) for r in rows] == [
        ("hello", None),
        (None, "'text' is null"),
        ("world", None),
    ]


@pytest.mark.parametrize(
    ("model", "columns", "kw", "message"),
    [
        (
            "digits_cnn",
            "id long, pixels array<double>",
            {},
            "the model's input 'image' reads a column 'image', which is not in the input; name "
            "its column with input_columns={'image': '<column>'} (--input-columns "
            "image=<column>); input columns: id, pixels",
        ),
        (
            "digits_cnn",
            "image array<array<double>>",
            {},
            "column 'image' is array<array<double>>; input 'image' takes an array of shape "
            "[1, 8, 8] per row (-1: any size): flat, reshaped, or nested 3 deep",
        ),
        (
            "tokens",
            "input_ids array<double>, attention_mask array<bigint>",
            {},
            "column 'input_ids' holds double values; input 'input_ids' is INT64, which takes "
            "integers: cast the column, e.g. F.col('input_ids').cast('array<bigint>')",
        ),
        (
            "tokens",
            "ids array<bigint>",
            {"input_columns": {"ids": "ids"}},
            "input_columns names unknown input(s) 'ids'; this model takes: 'input_ids', "
            "'attention_mask'",
        ),
        (
            "tokens",
            "ids array<bigint>",
            {"features_column": "ids"},
            "this model has 2 inputs ('input_ids', 'attention_mask'): name their columns with "
            "input_columns (--input-columns), not features_column",
        ),
        (
            "digits_cnn",
            "image array<double>, pred_scores double",
            {},
            "output column(s) pred_scores already exist in the input",
        ),
    ],
)
def test_schema_problems_are_refused_before_any_work(
    spark: SparkSession,
    byom_repo: Path,
    model: str,
    columns: str,
    kw: dict[str, object],
    message: str,
):
    df = spark.createDataFrame([], columns)
    with pytest.raises(ScoringError) as refused:
        score_dataframe(df, byom_repo / model, **kw)  # type: ignore[arg-type]
    assert message in str(refused.value)


def test_a_vector_for_a_tabular_models_features_column(spark: SparkSession):
    from tests.conftest import MODELS

    df = spark.createDataFrame([([5.1, 3.5, 1.4, 0.2],)], "x array<double>")
    vectors = df.select(array_to_vector("x").alias("x"))
    scored = score_dataframe(vectors, MODELS / "iris", features_column="x")
    assert scored.first()["pred_label"] == "setosa"  # type: ignore[index]
