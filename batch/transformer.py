"""A Spark ML `Transformer` over a bundle, for `pyspark.ml.Pipeline`s.

    from batch.transformer import BundleTransformer
    pipeline = Pipeline(stages=[BundleTransformer(modelPath="models/side_effects"), ...])
    pipeline.fit(df).write().save("pipeline/")       # saved and reloaded with the pipeline

    BundleTransformer(modelPath="models/digits_cnn", inputColumns={"image": "pixels"})

The transformer saves its parameters (the bundle path among them) as Spark ML's default
writer does; the bundle itself stays where it is and is verified again when the pipeline runs.
"""

from __future__ import annotations

import os
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLWriter,
)
from pyspark.sql import DataFrame

from batch.model_spec import parse_column_map
from batch.scoring import is_connect, score_dataframe


def to_column_map(value: Any) -> dict[str, str]:
    """A Param's input → column map: a dict, or `input=column,...` text. Spark ML saves it as
    a JSON object and gives it back as a dict."""
    if isinstance(value, str):
        return parse_column_map(value)
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    raise TypeError(f"inputColumns must map input names to column names, got {value!r}")


class BundleTransformer(
    Transformer, DefaultParamsReadable["BundleTransformer"], DefaultParamsWritable
):
    _input_kwargs: dict[str, Any]  # set by @keyword_only

    modelPath = Param(
        Params._dummy(),
        "modelPath",
        "model folder (latest version) or version folder",
        typeConverter=TypeConverters.toString,
    )
    outputPrefix = Param(
        Params._dummy(),
        "outputPrefix",
        "prefix of the output columns",
        typeConverter=TypeConverters.toString,
    )
    outputs = Param(
        Params._dummy(),
        "outputs",
        "model outputs to add (default: the model's own)",
        typeConverter=TypeConverters.toListString,
    )
    featuresColumn = Param(
        Params._dummy(),
        "featuresColumn",
        "one array column holding all features (default: one column each)",
        typeConverter=TypeConverters.toString,
    )
    inputColumns = Param(
        Params._dummy(),
        "inputColumns",
        "the column of each model input, {input: column} (default: the column named like it)",
        typeConverter=to_column_map,
    )

    @keyword_only
    def __init__(
        self,
        *,
        modelPath: str | None = None,
        outputPrefix: str = "pred_",
        outputs: list[str] | None = None,
        featuresColumn: str | None = None,
        inputColumns: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._setDefault(outputPrefix="pred_", outputs=[], inputColumns={})
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> BundleTransformer:
        result: BundleTransformer = self._set(**self._input_kwargs)
        return result

    def write(self) -> MLWriter:
        return _Writer(self)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if not self.isDefined(self.modelPath):
            raise ValueError("BundleTransformer needs modelPath")
        features = (
            self.getOrDefault(self.featuresColumn) if self.isDefined(self.featuresColumn) else None
        )
        return score_dataframe(
            dataset,
            self.getOrDefault(self.modelPath),
            prefix=self.getOrDefault(self.outputPrefix),
            outputs=self.getOrDefault(self.outputs) or None,
            features_column=features,
            input_columns=self.getOrDefault(self.inputColumns) or None,
        )


class _Writer(DefaultParamsWriter):
    """pyspark's writer has the JVM clear the folder for `overwrite()`, and a Spark Connect
    session has no JVM of its own: there the folder is removed through pyarrow's file systems
    (local, s3://, gs://, hdfs://) before the save."""

    def save(self, path: str) -> None:
        if self.shouldOverwrite and is_connect(self.sparkSession):
            _remove(path)
            self.saveImpl(path)
        else:
            super().save(path)


def _remove(path: str) -> None:
    from pyarrow import fs

    system, inner = (
        fs.FileSystem.from_uri(path)
        if "://" in path
        else (fs.LocalFileSystem(), os.path.abspath(path))
    )
    kind = system.get_file_info(inner).type
    if kind == fs.FileType.Directory:
        system.delete_dir(inner)
    elif kind == fs.FileType.File:
        system.delete_file(inner)
