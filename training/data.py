"""Data sets named by a spec's `data.source`, as float32 features and encoded labels.

Sources: `builtin:drug_trial` and `builtin:iris` (made or shipped here, no download),
`csv:<path>` and `parquet:<path>` relative to the spec file, and `spark:<table>`, a table or view
of the Spark session's catalog. When `load` is given a Spark session, `parquet:` is read through
Spark too (so it may name `hdfs://` or `s3a://` folders), and the columns the spec reads are
collected to the driver, whose memory they must fit. (Distributed training reads Parquet in its
ranks instead, a share each: `training.row_groups`; it uses the functions here that check and
encode columns.) Every problem with the data (a missing column, a non-numeric feature, an unknown
class) is a `SpecError` naming the file, the spec key and what was expected.

Rows are shuffled with `data.seed` before the validation split is taken from the end. Keras
takes the last rows *without* shuffling, which on data stored in order (like the drug trial)
would validate on one kind of patient only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.layer_specs import EmbeddingSpec
from training.spec import Spec, SpecError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Columns = dict[str, np.ndarray]
DATASETS = Path(__file__).parent / "datasets"


@dataclass(frozen=True)
class Dataset:
    features: np.ndarray
    """float32, (rows, features), raw (unscaled)."""
    labels: np.ndarray
    """int64 (rows,) class indices for a classifier; float32 (rows, outputs) otherwise."""
    feature_names: list[str]
    classes: list[str] | None

    def __len__(self) -> int:
        return len(self.features)

    def take(self, index: np.ndarray) -> Dataset:
        return Dataset(self.features[index], self.labels[index], self.feature_names, self.classes)


def drug_trial(seed: int) -> Columns:
    """The side-effects trial: 2100 participants aged 13–100, 95% labelled by age group.

    For each of 1000 draws, one participant aged 13–64 without side effects (0) and one aged
    65–100 with (1); then for each of 50 draws, the opposite: the 5% the model cannot explain.
    """
    rng = np.random.default_rng(seed)
    ages, labels = [], []
    for young_label, old_label, draws in ((0, 1, 1000), (1, 0, 50)):
        for _ in range(draws):
            ages += [rng.integers(13, 65), rng.integers(65, 101)]
            labels += [young_label, old_label]
    return {"age": np.array(ages, np.float64), "side_effects": np.array(labels, np.int64)}


def iris(seed: int) -> Columns:
    """Fisher's iris flowers (150 rows, 4 measurements in cm, 3 species), shipped as CSV."""
    del seed
    with (DATASETS / "iris.csv").open() as f:
        rows = list(csv.DictReader(f))
    columns: Columns = {
        name: np.array([float(r[name]) for r in rows])
        for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
    }
    columns["species"] = np.array([r["species"] for r in rows])
    return columns


def digits(seed: int) -> Columns:
    """Handwritten digits (1,797 8x8 images, as scikit-learn's `load_digits`): `pixels`, 64
    values per row in [0, 1] (the 0-16 counts divided by 16), row by row; `digit`, 0-9. With
    `input_shape: [8, 8, 1]` a row is the image, channels last."""
    del seed
    table = np.loadtxt(DATASETS / "digits.csv.gz", delimiter=",", dtype=np.float64)
    return {"pixels": table[:, :64] / 16.0, "digit": table[:, 64].astype(np.int64)}


BUILTIN = {"drug_trial": drug_trial, "iris": iris, "digits": digits}


def read_source(
    source: str,
    seed: int,
    base_dir: Path,
    spec_file: Path,
    spark: SparkSession | None = None,
    *,
    names: Sequence[str] = (),
) -> tuple[Columns, str]:
    """The columns of a source, and a name for it in messages. Given the `names` the spec
    reads, Parquet and Spark sources read those columns only (all of them when one is missing,
    so that the error lists what is there): a wide table costs only the columns used, and a
    column that cannot be read but is not used (a partition whose value is null in some
    folders, which pyarrow cannot combine) does not stop training."""
    kind, _, rest = source.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            raise SpecError(
                f"{spec_file}: data.source: unknown builtin data set {rest!r}; "
                f"known: {', '.join(sorted(BUILTIN))}"
            )
        return BUILTIN[rest](seed), source
    if kind == "spark" or (kind == "parquet" and spark is not None):
        return _read_with_spark(kind, rest, base_dir, spec_file, spark, names=names), rest
    path = local_file(rest, base_dir, spec_file)
    try:
        import pyarrow.csv
        import pyarrow.parquet

        table = pyarrow.csv.read_csv(path) if kind == "csv" else _read_parquet(path, names)
    except Exception as e:  # pyarrow raises several untyped errors for unreadable files
        raise SpecError(f"{spec_file}: data.source: cannot read {rest} as {kind}: {e}") from e
    try:
        return arrow_columns(table), rest
    except ValueError as e:
        raise SpecError(f"{spec_file}: data.source: {rest}: {e}") from None


def _read_parquet(path: Path, names: Sequence[str]) -> Any:
    import pyarrow
    import pyarrow.parquet

    if names:
        try:
            return pyarrow.parquet.read_table(path, columns=list(dict.fromkeys(names)))
        except pyarrow.ArrowInvalid:  # a column is missing: read them all, to name what is there
            pass
    return pyarrow.parquet.read_table(path)


def local_file(rest: str, base_dir: Path, spec_file: Path) -> Path:
    path = (base_dir / rest).resolve()
    if not path.exists():
        raise SpecError(f"{spec_file}: data.source: {rest} not found (looked in {base_dir})")
    return path


def check(spec: Spec, spec_file: Path) -> None:
    """What can be checked of the spec's data without reading its rows, and without torch or
    Spark: a known builtin, a local file that is there and readable, and (from a CSV header or
    a Parquet footer) the feature and label columns. `load` checks the rest."""
    kind, _, rest = spec.data.source.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            read_source(spec.data.source, spec.data.seed, spec_file.parent, spec_file)
        return
    if kind == "spark" or "://" in rest:
        return  # a catalog table or a remote path: Spark's to find
    path = local_file(rest, spec_file.parent, spec_file)
    if path.is_dir():
        return  # a partitioned Parquet folder: Spark's (or pyarrow's) to read
    try:
        import pyarrow.csv
        import pyarrow.parquet

        if kind == "csv":
            with pyarrow.csv.open_csv(path) as reader:
                names = reader.schema.names
        else:
            names = pyarrow.parquet.read_schema(path).names
    except Exception as e:  # pyarrow raises several untyped errors for unreadable files
        raise SpecError(f"{spec_file}: data.source: cannot read {rest} as {kind}: {e}") from e
    for key, wanted in (("data.features", spec.data.features), ("data.label", label_names(spec))):
        for name in wanted:
            if name not in names:
                raise SpecError(
                    f"{spec_file}: {key}: column {name!r} is not in {rest}; "
                    f"columns: {', '.join(names)}"
                )


def _read_with_spark(
    kind: str,
    rest: str,
    base_dir: Path,
    spec_file: Path,
    spark: SparkSession | None,
    *,
    names: Sequence[str] = (),
) -> Columns:
    """A catalog table (`spark:`) or Parquet (`parquet:`), read by Spark, collected as Arrow."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import AnalysisException, PySparkException
    from pyspark.sql import functions as F

    from training.spark import active_session, error_line

    local = base_dir / rest if "://" not in rest else None
    if kind == "parquet" and local is not None and not local.exists():
        raise SpecError(f"{spec_file}: data.source: {rest} not found (looked in {base_dir})")
    session = spark or active_session()
    try:
        if kind == "spark":
            frame = session.table(rest)
        else:
            frame = session.read.parquet(str(local.resolve()) if local is not None else rest)
        if names and set(names) <= set(frame.columns):  # else all: the error lists them
            frame = frame.select(
                *[F.col(f"`{n.replace('`', '``')}`") for n in dict.fromkeys(names)]
            )
        return arrow_columns(frame.toArrow())
    except (PySparkException, Py4JJavaError) as e:  # a missing table, an unreadable file
        missing_table = kind == "spark" and isinstance(e, AnalysisException)
        what = f"no table or view {rest!r} in the Spark catalog" if missing_table else ""
        reason = what or f"Spark cannot read {rest} as {'a table' if kind == 'spark' else kind}"
        raise SpecError(f"{spec_file}: data.source: {reason} ({error_line(e)})") from e


def arrow_columns(table: Any) -> Columns:
    """A pyarrow table's columns as numpy arrays; a list column (an image or a sequence per
    row, nested or flat) as a 2-D array of each row's values in order."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if _is_list(column.type):
            columns[name] = _list_column(column.combine_chunks(), name)
        else:
            columns[name] = column.to_numpy(zero_copy_only=False)
    return columns


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _list_column(column: Any, name: str) -> np.ndarray:
    """Rows of equal size as (rows, size); a ValueError names the first row of another size."""
    import pyarrow.compute as pc

    row_of = pc.list_parent_indices(column).to_numpy()
    values = pc.list_flatten(column)
    while _is_list(values.type):  # a nested list (rows of an image): flatten it row by row
        row_of = row_of[pc.list_parent_indices(values).to_numpy()]
        values = pc.list_flatten(values)
    sizes = np.bincount(row_of, minlength=len(column))
    if len(sizes) and (sizes != sizes[0]).any():
        bad = int(np.flatnonzero(sizes != sizes[0])[0])
        raise ValueError(
            f"column {name!r}: row {bad} holds {sizes[bad]} values and row 0 {sizes[0]}; every "
            "row of an array-valued feature must hold as many (a missing row holds 0)"
        )
    size = int(sizes[0]) if len(sizes) else 0
    result: np.ndarray = values.to_numpy(zero_copy_only=False).reshape(len(column), size)
    return result


def load(spec: Spec, spec_file: Path, spark: SparkSession | None = None) -> Dataset:
    """The spec's data set: features by name, labels encoded for its loss."""
    columns, where = read_source(
        spec.data.source,
        spec.data.seed,
        spec_file.parent,
        spec_file,
        spark,
        names=spec_columns(spec),
    )
    features = features_of(spec, spec_file, columns, where)
    labels, classes = encode_labels(
        spec, spec_file, raw_labels(spec, spec_file, columns, where), spec.data.classes, where
    )
    if classes is not None:
        check_classes_present(spec_file, np.unique(labels), len(labels), classes, where)
    return Dataset(features, labels, list(spec.data.features), classes)


def _column(columns: Columns, name: str, key: str, where: str, spec_file: Path) -> np.ndarray:
    if name not in columns:
        raise SpecError(
            f"{spec_file}: {key}: column {name!r} is not in {where}; columns: {', '.join(columns)}"
        )
    return columns[name]


def label_names(spec: Spec) -> list[str]:
    return [spec.data.label] if isinstance(spec.data.label, str) else spec.data.label


def spec_columns(spec: Spec) -> tuple[str, ...]:
    """The columns a spec reads: its features, then its labels."""
    return (*spec.data.features, *label_names(spec))


def features_of(spec: Spec, spec_file: Path, columns: Columns, where: str) -> np.ndarray:
    """The feature columns side by side as float32 (rows, values), checked against the spec."""
    features = np.column_stack(
        [
            _numeric(_column(columns, n, "data.features", where, spec_file), n, where, spec_file)
            for n in spec.data.features
        ]
    ).astype(np.float32)
    _check_width(spec, spec_file, features.shape[1])
    _check_ids(spec, spec_file, features)
    return features


def raw_labels(spec: Spec, spec_file: Path, columns: Columns, where: str) -> list[np.ndarray]:
    """The label columns as read; a classifier takes exactly one."""
    raw = [_column(columns, n, "data.label", where, spec_file) for n in label_names(spec)]
    if spec.is_classifier and len(raw) != 1:
        raise SpecError(f"{spec_file}: data.label: a classifier takes one label column")
    return raw


def encode_labels(
    spec: Spec, spec_file: Path, raw: list[np.ndarray], classes: list[str] | None, where: str
) -> tuple[np.ndarray, list[str] | None]:
    """Labels for the loss: class indices (classes named by `classes`, or found in `raw`) for a
    classifier; float32 (rows, outputs) otherwise, with no classes."""
    if spec.is_classifier:
        return _encode_classes(raw[0], classes, where, spec_file)
    names = label_names(spec)
    labels = np.column_stack(
        [_numeric(c, n, where, spec_file) for c, n in zip(raw, names, strict=True)]
    ).astype(np.float32)
    return labels, None


def check_classes_present(
    spec_file: Path, present: np.ndarray, rows: int, classes: list[str], where: str
) -> None:
    """A classifier needs rows of two classes at least: with one, it would learn to answer that
    class, whatever the input."""
    if len(present) == 1:
        raise SpecError(
            f"{spec_file}: data.label: all {rows} rows of {where} are of class "
            f"{classes[present[0]]!r}; a classifier needs rows of at least two classes"
        )


def _check_width(spec: Spec, spec_file: Path, width: int) -> None:
    """The values of a row (array-valued features count each value) fill model.input_shape."""
    shape = spec.network.resolved_input_shape
    if shape is None and width != len(spec.data.features):
        raise SpecError(
            f"{spec_file}: model.input_shape: the features give {width} values per row; set "
            f"input_shape to lay them out (e.g. [{width}], or [8, 8, 1] for an 8x8 image)"
        )
    if shape is not None and math.prod(shape) != width:
        raise SpecError(
            f"{spec_file}: model.input_shape {shape} takes {math.prod(shape)} values per row, "
            f"but the features give {width}"
        )


def _check_ids(spec: Spec, spec_file: Path, features: np.ndarray) -> None:
    """Token ids for a first embedding layer: whole numbers in [0, input_dim)."""
    first = spec.network.layers[0]
    if not isinstance(first, EmbeddingSpec):
        return
    bad = np.flatnonzero(
        ((features != np.round(features)) | (features < 0) | (features >= first.input_dim)).any(
            axis=1
        )
    )
    if bad.size:
        row = features[bad[0]]
        value = row[(row != np.round(row)) | (row < 0) | (row >= first.input_dim)][0]
        raise SpecError(
            f"{spec_file}: data.features: the first layer (embedding) takes token ids, whole "
            f"numbers from 0 to {first.input_dim - 1} (its input_dim is {first.input_dim}); "
            f"{bad.size} row(s) hold others, the first at row {bad[0]}: {value:g}"
        )


def split(data: Dataset, validation_split: float, seed: int) -> tuple[Dataset, Dataset]:
    """Shuffle with `seed`, then keep the last `validation_split` of the rows for validation."""
    order = np.random.default_rng(seed).permutation(len(data))
    split_at = math.floor(len(data) * (1.0 - validation_split))
    return data.take(order[:split_at]), data.take(order[split_at:])


def _numeric(values: np.ndarray, name: str, where: str, spec_file: Path) -> np.ndarray:
    try:
        result = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SpecError(
            f"{spec_file}: data: column {name!r} in {where} is not numeric ({e})"
        ) from e
    bad = np.flatnonzero(~np.isfinite(result))
    if bad.size:
        raise SpecError(
            f"{spec_file}: data: column {name!r} in {where} has {bad.size} missing or non-finite "
            f"value(s), first at row {bad[0]}"
        )
    return result


def class_names(values: np.ndarray, where: str, spec_file: Path) -> list[str]:
    """The classes that labels imply when `data.classes` names none: 0 to the largest for
    integer labels, the names found, sorted, for names."""
    if values.dtype.kind in "iuf":
        return [str(i) for i in range(int(_class_indices(values, where, spec_file).max()) + 1)]
    return sorted(set(values.astype(str).tolist()))


def _class_indices(values: np.ndarray, where: str, spec_file: Path) -> np.ndarray:
    numeric = _numeric(values, "label", where, spec_file)
    if not np.all(numeric == np.round(numeric)) or numeric.min() < 0:
        raise SpecError(f"{spec_file}: data.label: class labels must be names or integers from 0")
    return numeric.astype(np.int64)


def _encode_classes(
    values: np.ndarray, classes: list[str] | None, where: str, spec_file: Path
) -> tuple[np.ndarray, list[str]]:
    """Class indices from labels given as names (mapped by `classes`) or as integers."""
    names = classes or class_names(values, where, spec_file)
    if values.dtype.kind in "iuf":
        indices = _class_indices(values, where, spec_file)
        if indices.max() >= len(names):
            raise SpecError(
                f"{spec_file}: data.label: label {indices.max()} but data.classes names only "
                f"{len(names)} classes"
            )
        return indices, names
    text = values.astype(str)
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(text.tolist()) - set(lookup))
    if unknown:
        raise SpecError(
            f"{spec_file}: data.label: label(s) {', '.join(map(repr, unknown[:5]))} are not in "
            f"data.classes ({', '.join(names)})"
        )
    return np.array([lookup[t] for t in text], np.int64), names
