"""Every refusal the CLI can make before Spark starts, in plain Python (no pyspark, no JVM): the
model loads, the arguments fit together, the input is there and readable, the output can be
written and does not overlap the input, no other run is writing it.

Local paths (no scheme, or `file:`) are checked here when the executors are this machine; a
remote URI (s3a://, hdfs://, ...) is checked for overlap here and for existence by Spark's file
system once it runs (`batch.job`), since only Spark knows its credentials and configuration.
"""

from __future__ import annotations

import csv
import os
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

import inference
from batch.columns import missing_column
from batch.errors import JobError, ScoringError
from batch.model_spec import spec_for
from batch.spec import ScoringSpec
from batch.staging import clean_stale

FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".json", ".orc", ".avro", ".gz")
"""An output named like one of these looks like a file, and Spark writes a folder."""
_SAME_STORE = {"s3a": "s3", "s3n": "s3"}
"""Schemes that name the same store (Hadoop's S3 connectors and S3 itself)."""


def local_master(master: str | None) -> bool:
    """Whether the executors will run on this machine (local mode), known before Spark starts."""
    if master is None:
        return "PYSPARK_GATEWAY_PORT" not in os.environ  # spark-submit's master is unknown here
    return master.startswith("local")


def input_format(path: str, given: str | None) -> str:
    """`parquet` or `csv`: `given`, or told by the extension."""
    if given is not None:
        if given not in ("parquet", "csv"):
            raise JobError(f"unknown input format {given!r}; known: parquet, csv")
        return given
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq", "") or Path(local_path(path)).is_dir():
        return "parquet"
    raise JobError(f"cannot tell the format of {path!r} from its extension; pass --format")


def check_model(
    model: str,
    version: int | None,
    outputs: Sequence[str] | None,
    features_column: str | None,
    input_columns: Mapping[str, str] | None,
) -> ScoringSpec:
    """The bundle loads (checksum, signature) and the asked outputs and columns fit it."""
    loaded = inference.load(model, version=version)
    known = [o.name for o in loaded.metadata.outputs]
    unknown = [n for n in outputs or [] if n not in known]
    if unknown:
        raise ScoringError(f"unknown output(s) {unknown}; the model has: {', '.join(known)}")
    return spec_for(loaded, outputs, features_column, input_columns=input_columns)


def check_io(io: str, in_format: str, output_format: str, local_master: bool) -> None:
    """`--io arrow` where it can never run."""
    if io != "arrow":
        return
    if "csv" in (in_format, output_format):
        raise JobError(
            "--io arrow reads and writes Parquet only; CSV is read and written by Spark "
            "(--io spark, or auto)"
        )
    if not local_master:
        raise JobError("--io arrow needs a local master (executors may not see these files)")


def check_paths(input_path: str, output_path: str, mode: str, *, local: bool) -> None:
    """The output's name, overlap with the input (symlinks and `..` resolved), and, for paths on
    this machine when `local`, the input readable and the output writable."""
    if overlaps(input_path, output_path):
        raise JobError(
            f"the output {output_path} is, holds or is inside the input {input_path}; "
            "write the scores somewhere else"
        )
    suffix = posixpath.splitext(urlsplit(output_path).path)[1].lower()
    if suffix in FILE_SUFFIXES:  # a trailing / says "a folder" and is taken at its word
        folder = output_path[: -len(suffix)]
        raise JobError(
            f"--output {output_path}: Spark writes a folder of part files, not one file; name "
            f"a folder: --output {folder}/ (or {output_path}/ to keep the name)"
        )
    if local and is_local(output_path):
        _check_output(Path(local_path(output_path)), output_path, mode)
    if local and is_local(input_path):
        _check_input(Path(local_path(input_path)), input_path)
    if local and is_local(output_path):
        clean_stale(Path(os.path.abspath(local_path(output_path.rstrip("/")))))


def check_columns(input_path: str, in_format: str, spec: ScoringSpec) -> None:
    """A local input's files are readable (every Parquet footer) and hold the columns the model
    reads, by name (their types are checked once Spark reads the schema). Partitioned folders
    are left to Spark, whose reader adds their columns."""
    root = Path(local_path(input_path))
    files = [root]
    if root.is_dir():
        visible = sorted(p for p in root.iterdir() if not p.name.startswith(("_", ".")))
        if not visible:
            raise JobError(f"input {input_path} is an empty folder")
        files = [p for p in visible if p.is_file()]
        partitioned = len(files) < len(visible)
    else:
        partitioned = False
    names = _parquet_columns(files) if in_format == "parquet" else _csv_columns(files[:1])
    if names is not None and not partitioned:
        problem = missing_column(names, spec)
        if problem is not None:
            raise ScoringError(problem)


def _parquet_columns(files: list[Path]) -> list[str]:
    """Every column name of any of the files, whose footers must all read."""
    names: dict[str, None] = {}
    for file in files:
        try:
            names.update(dict.fromkeys(pq.read_metadata(file).schema.to_arrow_schema().names))
        except (pa.ArrowInvalid, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise JobError(f"input {file} is not a readable Parquet file: {reason}") from e
    return list(names)


def _csv_columns(files: list[Path]) -> list[str] | None:
    """The header of the first CSV file, as Spark's reader names the columns; None where that
    cannot be told here (not UTF-8, repeated names, which Spark renames)."""
    if not files:
        return None
    try:
        with files[0].open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error):
        return None
    except OSError as e:
        raise JobError(f"input {files[0]} cannot be read: {e.strerror}") from e
    return header if len(set(header)) == len(header) else None


def is_local(path: str) -> bool:
    scheme = urlsplit(path).scheme
    return len(scheme) <= 1 or scheme.lower() == "file"  # one letter: a Windows drive


def local_path(path: str) -> str:
    """A local path without its `file:` scheme."""
    parts = urlsplit(path)
    return unquote(parts.path) if parts.scheme.lower() == "file" else path


def normalised(path: str) -> str:
    """One spelling per location: a local path resolved (symlinks, `..`, relative to the working
    folder) as `file://...`; a URI with its scheme and host in lower case, `.`, `..` and repeated
    slashes collapsed, and Hadoop's `s3a`/`s3n` read as `s3`."""
    if is_local(path):
        return "file://" + os.path.realpath(local_path(path))
    parts = urlsplit(path)
    scheme = parts.scheme.lower()
    folder = posixpath.normpath("/" + unquote(parts.path)).lstrip("/")
    return f"{_SAME_STORE.get(scheme, scheme)}://{parts.netloc.lower()}/{folder}".rstrip("/")


def overlaps(a: str, b: str) -> bool:
    """Whether `a` and `b` are the same place or one holds the other."""
    x, y = normalised(a), normalised(b)
    return x == y or x.startswith(y.rstrip("/") + "/") or y.startswith(x.rstrip("/") + "/")


def _check_input(path: Path, given: str) -> None:
    if not path.exists():
        raise JobError(f"input {given} does not exist")
    entries = [path]
    if path.is_dir():
        try:
            entries += [p for p in path.iterdir() if not p.name.startswith(("_", "."))]
        except OSError as e:
            raise JobError(f"input {given} cannot be listed: {e.strerror}") from e
    for entry in entries:
        need = os.R_OK | (os.X_OK if entry.is_dir() else 0)
        if not os.access(entry, need):
            raise JobError(f"input {entry} is not readable (permission denied)")


def _check_output(path: Path, given: str, mode: str) -> None:
    if path.exists() or path.is_symlink():
        if mode == "error":
            raise JobError(f"output {given} exists; pass --mode overwrite to replace it")
        _check_writable(path.absolute().parent, given)
        for folder, _, _ in os.walk(path) if path.is_dir() else ():
            _check_writable(Path(folder), given, probe=False)  # to delete what the old output holds
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise JobError(f"output {given}: {ancestor} is a file, not a folder")
    _check_writable(ancestor, given)


def _check_writable(folder: Path, given: str, probe: bool = True) -> None:
    """Whether a folder can be made in `folder`: asked of the permissions, then (`probe`) tried,
    since only trying tells a read-only or special file system, ACLs or a root-squashing
    share."""
    problem = None if os.access(folder, os.W_OK | os.X_OK) else "permission denied"
    if problem is None and probe:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".batch-probe-", dir=folder))
        except OSError as e:
            problem = e.strerror or str(e)
    if problem is not None:
        raise JobError(
            f"output {given}: cannot write in {folder} ({problem}); choose an output where you "
            "can write"
        )
