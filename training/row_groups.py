"""Parquet that the ranks of a Spark run read themselves, each its share, instead of the driver.

    python -m training models/<name> --spark     # data.source: parquet:<file or folder>

The driver reads only the files' footers (`plan`): the files in the order of their paths, their
row groups and how many rows each holds. That numbers every row of the data set. A folder is
read as `pyarrow.parquet.read_table` reads it (through `pyarrow.dataset`): columns that only the
folder names hold (Hive partitions, `species=setosa/`) come with the same names, values and
types, so the ranks read the rows and columns that the driver would. Rank r of N reads rows
[r*n/N, (r+1)*n/N) in that order: the row groups that overlap them (a row group on a boundary
is read by both neighbours, each keeping its own rows).

The validation split is decided row by row: row i is held out when a hash of (data.seed, i),
as a number in [0, 1), is below `validation_split`. A row's side therefore depends neither on
the number of processes nor on which rank reads it, and two runs of a spec split alike. About
(not exactly) that fraction of the rows is held out; data read by the driver is shuffled and
cut instead (`training.data.split`).

What is fitted on the data is combined from the ranks' parts, never from all rows in one place:
the classes (the names found on any rank, sorted, or 0 to the largest integer label), the
scaler's statistics (`FeatureStats`, added up), and the first held-out rows for the parity check.
A data error found by any rank (a value that is not a number, an unknown class) stops every rank
with that one error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from training import data as datasets
from training.fit import Shard
from training.preprocessing import FeatureStats
from training.spec import FitSpec, Spec, SpecError
from training.trainer import PARITY_HELD_OUT_ROWS, DataSummary, Run

T = TypeVar("T")
Gather = Callable[[Any], list[Any]]
"""A collective: every rank's value, in rank order, on every rank (`all_gather_object`)."""

PYARROW_SCHEMES = ("file", "s3", "gs", "gcs", "abfs", "abfss")
"""URI schemes the ranks read with pyarrow; others (s3a, hdfs) are Spark's to read."""


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int
    """Its number in its file."""
    first: int
    """The number of its first row in the whole data set."""
    rows: int
    partition: Any = None
    """The values its file's folder names give (a pyarrow expression), None for none."""


@dataclass(frozen=True)
class Plan:
    """The files and row groups of a Parquet source, and the columns a model needs of them."""

    source: str
    """The path as the spec gives it, for messages."""
    root: str
    filesystem: Any
    schema: Any
    """The pyarrow schema every file is read as: the first file's, and the folder names'."""
    groups: tuple[RowGroup, ...]
    columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(group.rows for group in self.groups)

    def span(self, rank: int, world: int) -> tuple[int, int]:
        """The rows rank `rank` of `world` reads: from the first up to (not including) the last."""
        return self.rows * rank // world, self.rows * (rank + 1) // world

    def inside(self, file: str) -> str:
        """A file's path inside the source's folder ("" for the source itself)."""
        return file[len(self.root) :].lstrip("/")

    def name(self, file: str) -> str:
        """A file as the user knows it: the spec's path, then the file's path inside a folder."""
        inside = self.inside(file)
        return f"{self.source.rstrip('/')}/{inside}" if inside else self.source


@dataclass(frozen=True)
class ParquetRun:
    """What the ranks need to read and fit their shares: the spec and the plan, no rows."""

    spec: Spec
    spec_file: Path
    fit_config: FitSpec
    plan: Plan


def plan(spec: Spec, spec_file: Path) -> Plan | None:
    """The row groups of a `parquet:` source from the files' footers; None for another source,
    or a URI pyarrow does not read (those go through Spark and the driver)."""
    kind, _, rest = spec.data.source.partition(":")
    scheme = rest.partition("://")[0] if "://" in rest else None
    if kind != "parquet" or (scheme is not None and scheme not in PYARROW_SCHEMES):
        return None
    filesystem, root = _filesystem(rest, spec_file)
    columns = datasets.spec_columns(spec)
    partial = Plan(rest, root, filesystem, None, (), columns)
    dataset = _dataset(partial, spec_file)
    groups, first = [], 0
    for fragment in sorted(dataset.get_fragments(), key=lambda fragment: fragment.path):
        for index, rows in enumerate(_row_groups(partial, fragment, spec, spec_file)):
            groups.append(
                RowGroup(fragment.path, index, first, rows, fragment.partition_expression)
            )
            first += rows
    return dataclasses.replace(partial, schema=dataset.schema, groups=tuple(groups))


def _filesystem(rest: str, spec_file: Path) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" not in rest:
        return pyarrow.fs.LocalFileSystem(), str(
            datasets.local_file(rest, spec_file.parent, spec_file)
        )
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(rest)
    except Exception as e:  # pyarrow raises several untyped errors (no credentials, no network)
        raise SpecError(f"{spec_file}: data.source: cannot open {rest}: {_line(e)}") from e
    return filesystem, str(root)


def _dataset(plan: Plan, spec_file: Path) -> Any:
    """The Parquet file, or the files under the folder, as `pyarrow.parquet.read_table` finds
    them: names that start with `_` or `.` left out (as Spark does: _SUCCESS, .crc files), and
    Hive partitions discovered as it discovers them (dictionary-encoded). Only the first file's
    footer is read here, for the schema."""
    import pyarrow.dataset as ds
    import pyarrow.fs

    info = plan.filesystem.get_file_info(plan.root)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise SpecError(f"{spec_file}: data.source: {plan.source} not found")
    folder = info.type == pyarrow.fs.FileType.Directory  # a file's own path is no partition
    hive = ds.HivePartitioning.discover(infer_dictionary=True) if folder else None
    try:
        dataset = ds.dataset(
            plan.root, format="parquet", filesystem=plan.filesystem, partitioning=hive
        )
    except Exception as e:  # pyarrow raises several untyped errors for unreadable files
        raise SpecError(
            f"{spec_file}: data.source: cannot read {plan.source} as parquet: {_line(e)}"
        ) from e
    if not dataset.files:
        raise SpecError(f"{spec_file}: data.source: {plan.source} holds no Parquet files")
    return dataset


def _row_groups(plan: Plan, fragment: Any, spec: Spec, spec_file: Path) -> list[int]:
    """The rows of each row group of a file, from its footer, once its columns (those in the
    file and those its folder names give) are checked."""
    import pyarrow.dataset as ds

    try:
        names = fragment.physical_schema.names
        rows = [group.num_rows for group in fragment.row_groups]
    except Exception as e:  # pyarrow raises several untyped errors for unreadable files
        raise SpecError(
            f"{spec_file}: data.source: cannot read {plan.name(fragment.path)} as parquet: "
            f"{_line(e)}"
        ) from e
    names = [*names, *ds.get_partition_keys(fragment.partition_expression)]
    for name in plan.columns:
        if name not in names:
            key = "data.features" if name in spec.data.features else "data.label"
            raise SpecError(
                f"{spec_file}: {key}: column {name!r} is not in {plan.name(fragment.path)}; "
                f"columns: {', '.join(names)}"
            )
    return rows


def _line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class OwnRows(Shard):
    """A rank's part of the fit when it holds only its own rows: each epoch it steps through a
    permutation of them padded (wrapping around) to `most`, the most any rank holds, so that
    all ranks run the same number of steps. Each rank evaluates its own held-out rows; the
    validation logs all ranks agree on are the means over all of them."""

    most: int = 0
    validation_rows: tuple[int, ...] = ()
    """Each rank's held-out rows."""
    gather: Gather = lambda value: [value]

    def rows(self, n: int) -> int:
        return self.most

    def take(self, order: Tensor) -> Tensor:
        return order[torch.arange(self.most) % len(order)]

    def agree(self, logs: dict[str, float]) -> dict[str, float]:
        every: list[dict[str, float]] = self.gather(logs)
        agreed = {k: v for k, v in every[0].items() if not k.startswith("val_")}  # all-reduced
        held = [(n, ranks) for n, ranks in zip(self.validation_rows, every, strict=True) if n]
        total = sum(n for n, _ in held)
        for key in [k for k in held[0][1] if k.startswith("val_")] if held else []:
            agreed[key] = sum(n * ranks[key] for n, ranks in held) / total
        return agreed


# What each rank does: steps that every rank takes, each followed by a collective.


@dataclass(frozen=True)
class Share:
    """The rows one rank read, checked: features as float32, raw labels, their row numbers."""

    features: np.ndarray
    labels: list[np.ndarray]
    index: np.ndarray


def read_share(plan: Plan, spec: Spec, spec_file: Path, rank: int, world: int) -> Share:
    """Rank `rank`'s rows: the row groups that overlap its span, each checked as a whole (so
    that a message names the row group and the row in it), then cut to the span."""
    start, end = plan.span(rank, world)
    pieces = []
    for group in plan.groups:
        if group.first + group.rows <= start or group.first >= end:
            continue
        where = f"{plan.name(group.file)} (row group {group.index})"
        columns = _read_group(plan, group, spec_file, where)
        features = datasets.features_of(spec, spec_file, columns, where)
        labels = datasets.raw_labels(spec, spec_file, columns, where)
        keep = slice(
            max(start, group.first) - group.first, min(end, group.first + group.rows) - group.first
        )
        index = np.arange(group.first, group.first + group.rows)[keep]
        pieces.append(Share(features[keep], [label[keep] for label in labels], index))
    return Share(
        np.concatenate([p.features for p in pieces]),
        [np.concatenate(columns) for columns in zip(*(p.labels for p in pieces), strict=True)],
        np.concatenate([p.index for p in pieces]),
    )


def _read_group(plan: Plan, group: RowGroup, spec_file: Path, where: str) -> datasets.Columns:
    import pyarrow.dataset as ds

    try:  # as the driver would read it: the folder names' columns too, and the same types
        fragment = ds.ParquetFileFormat().make_fragment(
            group.file, plan.filesystem, group.partition, row_groups=[group.index]
        )
        table = fragment.to_table(schema=plan.schema, columns=list(plan.columns))
    except Exception as e:  # pyarrow raises several untyped errors for unreadable files
        raise SpecError(f"{spec_file}: data.source: cannot read {where}: {_line(e)}") from e
    try:
        return datasets.arrow_columns(table)
    except ValueError as e:
        raise SpecError(f"{spec_file}: data.source: {where}: {e}") from None


def held_out(index: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True for the rows (by their numbers in the data set) that validation holds out: those
    whose splitmix64 hash of (seed, number), as a number in [0, 1), is below `fraction`."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    result: np.ndarray = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction
    return result


def combined_classes(
    spec: Spec, spec_file: Path, found: list[tuple[bool, list[str]] | None]
) -> list[str] | None:
    """The classes of the whole data set from each rank's (integer labels?, classes found)."""
    if not spec.is_classifier:
        return None
    if spec.data.classes:
        return spec.data.classes
    parts = [part for part in found if part is not None]
    if len({numeric for numeric, _ in parts}) > 1:
        raise SpecError(
            f"{spec_file}: data.label: the labels are integers in some files and names in others"
        )
    if parts[0][0]:  # integers: 0 to the largest label of all
        return max((names for _, names in parts), key=len)
    return sorted(set().union(*(names for _, names in parts)))


@dataclass(frozen=True)
class Part:
    """What a rank tells the others of its encoded share."""

    stats: FeatureStats
    present: np.ndarray | None
    train_rows: int
    validation_rows: int
    held_out: np.ndarray
    """Its first held-out rows' features."""


def load_share(work: ParquetRun, rank: int, world: int, gather: Gather) -> tuple[Run, Shard]:
    """Rank `rank`'s share of the data as a `Run` (its rows, the whole's summary), and the
    `Shard` that steps through it; `gather` is the collective that combines the ranks' parts."""
    spec, spec_file, source = work.spec, work.spec_file, work.plan.source
    share = _together(gather, lambda: read_share(work.plan, spec, spec_file, rank, world))
    found = _public(gather, lambda: _classes_found(spec, spec_file, share, source))
    classes = combined_classes(spec, spec_file, found)
    train, validation = _together(gather, lambda: _split(spec, spec_file, share, classes, source))
    parts: list[Part] = _public(gather, lambda: _part(spec, train, validation))
    summary = _summary(spec_file, parts, world)
    if classes is not None:
        present = np.unique(np.concatenate([p.present for p in parts if p.present is not None]))
        datasets.check_classes_present(spec_file, present, work.plan.rows, classes, source)
    run = Run(spec, spec_file, work.fit_config, classes, train, validation, summary)
    most = max(part.train_rows for part in parts)
    return run, OwnRows(rank, world, most, tuple(p.validation_rows for p in parts), gather)


def _classes_found(
    spec: Spec, spec_file: Path, share: Share, where: str
) -> tuple[bool, list[str]] | None:
    if not spec.is_classifier or spec.data.classes:
        return None
    labels = share.labels[0]
    return labels.dtype.kind in "iuf", datasets.class_names(labels, where, spec_file)


def _split(
    spec: Spec, spec_file: Path, share: Share, classes: list[str] | None, where: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    labels, _ = datasets.encode_labels(spec, spec_file, share.labels, classes, where)
    data = datasets.Dataset(share.features, labels, list(spec.data.features), classes)
    mask = held_out(share.index, spec.data.seed, spec.validation_split)
    return data.take(np.flatnonzero(~mask)), data.take(np.flatnonzero(mask))


def _part(spec: Spec, train: datasets.Dataset, validation: datasets.Dataset) -> Part:
    present = None
    if spec.is_classifier:
        present = np.unique(np.concatenate([train.labels, validation.labels]))
    return Part(
        FeatureStats.of(train.features),
        present,
        len(train),
        len(validation),
        validation.features[:PARITY_HELD_OUT_ROWS],
    )


def _summary(spec_file: Path, parts: list[Part], world: int) -> DataSummary:
    """The whole data set's summary from the ranks' parts (the held-out rows in row order:
    rank r's rows all come before rank r+1's)."""
    stats = parts[0].stats
    for part in parts[1:]:
        stats = stats + part.stats
    if stats.rows == 0:
        raise SpecError(f"{spec_file}: data: no training rows left after the validation split")
    empty = [rank for rank, part in enumerate(parts) if part.train_rows == 0]
    if empty:
        raise SpecError(
            f"{spec_file}: data: process {empty[0]} of {world} got no training rows from its "
            f"share of the data; use fewer processes (--num-processes)"
        )
    held = np.concatenate([part.held_out for part in parts])[:PARITY_HELD_OUT_ROWS]
    return DataSummary(stats.rows, sum(part.validation_rows for part in parts), stats, held)


def _together(gather: Gather, step: Callable[[], T]) -> T:
    """`step` on every rank; if it fails on any with a data error, that error on all of them
    (so that no rank waits forever for another in the next collective)."""
    return _run_together(gather, step, public=False)[0]


def _public(gather: Gather, step: Callable[[], T]) -> list[T]:
    """`step` on every rank, and every rank's answer in rank order (or the first error)."""
    return _run_together(gather, step, public=True)[1]


def _run_together(gather: Gather, step: Callable[[], T], *, public: bool) -> tuple[T, list[T]]:
    value: Any = None
    error = None
    try:
        value = step()
    except SpecError as e:
        error = str(e)
    answers = gather((error, value if public else None))
    errors = [error for error, _ in answers if error is not None]
    if errors:
        raise SpecError(errors[0])
    return value, [answer for _, answer in answers]
