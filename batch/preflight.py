"""Every refusal the CLI can make before Spark starts, in plain Python (no pyspark, no JVM): the
model loads, the arguments fit together, the input is there and readable, the output can be
written and does not overlap the input, no other run is writing it.

Local paths (no scheme, or `file:`) are checked here when the executors are this machine; a
remote URI (s3://, gs://, hdfs://, ...) is checked here through pyarrow's file systems
(`batch.storage`, credentials from the environment) as a local one is: the input there, its
footers and columns, the output's bucket there and the output absent under `--mode error`.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import inference
from batch.columns import missing_column
from batch.errors import JobError, ScoringError
from batch.model_spec import spec_for
from batch.spec import ScoringSpec
from batch.staging import clean_stale
from batch.storage import (
    Location,
    check_bucket,
    exists,
    info,
    is_local,
    local_path,
    locate,
    visible,
)

FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".json", ".orc", ".avro", ".gz")
"""An output named like one of these looks like a file, and Spark writes a folder."""
_SAME_STORE = {"s3a": "s3", "s3n": "s3"}
"""Schemes that name the same store (Hadoop's S3 connectors and S3 itself)."""


def local_master(master: str | None) -> bool:
    """Whether the executors will run on this machine (local mode), known before Spark starts."""
    if master is None:
        return "PYSPARK_GATEWAY_PORT" not in os.environ  # spark-submit's master is unknown here
    return master.startswith("local")


def local_remote(remote: str) -> bool:
    """Whether a Spark Connect server's executors are this machine, as far as the client can
    tell: a `local[...]` remote (a server the client starts) or one on the loopback address
    (whose master the job asks once connected)."""
    if remote.startswith("local"):
        return True
    host = (urlsplit(remote).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1")


def check_remote(remote: str, timeout: float = 5.0) -> None:
    """A Spark Connect server answers at `sc://host:port` (pyspark's client would retry for
    minutes before saying it cannot)."""
    if not remote.startswith("sc://"):
        return
    parts = urlsplit(remote.split(";", 1)[0])
    host, port = parts.hostname or "localhost", parts.port or 15002
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise JobError(f"no Spark Connect server answers at {host}:{port} ({reason})") from e


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


def check_io(
    io: str,
    in_format: str,
    output_format: str,
    local_master: bool,
    paths: Sequence[str] = (),
) -> None:
    """`--io arrow` where it can never run: CSV, or a local path with executors elsewhere."""
    if io != "arrow":
        return
    if "csv" in (in_format, output_format):
        raise JobError(
            "--io arrow reads and writes Parquet only; CSV is read and written by Spark "
            "(--io spark, or auto)"
        )
    if not local_master and (not paths or any(is_local(p) for p in paths)):
        raise JobError(
            "--io arrow needs a local master for local paths (executors may not see these "
            "files); name the data in a store (s3://...) or use --io spark"
        )


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
        clean_stale(locate(output_path.rstrip("/")))
    if not is_local(output_path):
        _check_remote_output(locate(output_path), mode)
        clean_stale(locate(output_path.rstrip("/")))
    if not is_local(input_path) and not exists(locate(input_path)):
        raise JobError(f"input {input_path} does not exist")


def _check_remote_output(output: Location, mode: str) -> None:
    check_bucket(output, "output")
    if mode == "error" and exists(output):
        raise JobError(f"output {output.uri} exists; pass --mode overwrite to replace it")


def check_columns(input_path: str, in_format: str, spec: ScoringSpec) -> None:
    """An input's files are readable (every Parquet footer) and hold the columns the model
    reads, by name (their types are checked once Spark reads the schema), on this machine or in
    a store. Partitioned folders are left to Spark, whose reader adds their columns."""
    root = locate(input_path)
    files = [(input_path, root.path)]
    partitioned = False
    if info(root).type == pafs.FileType.Directory:
        shown = visible(root)
        if not shown:
            raise JobError(f"input {input_path} is an empty folder")
        named = [(f"{input_path.rstrip('/')}/{f.base_name}", f) for f in shown]
        files = [(name, f.path) for name, f in named if f.type == pafs.FileType.File]
        partitioned = len(files) < len(shown)
    if in_format == "parquet":
        names: list[str] | None = _parquet_columns(root.fs, files)
    else:
        names = _csv_columns(root.fs, files[:1])
    if names is not None and not partitioned:
        problem = missing_column(names, spec)
        if problem is not None:
            raise ScoringError(problem)


def _parquet_columns(fs: pafs.FileSystem, files: list[tuple[str, str]]) -> list[str]:
    """Every column name of any of the files (name as shown, path in `fs`), whose footers must
    all read."""
    names: dict[str, None] = {}
    for shown, path in files:
        try:
            schema = pq.read_metadata(path, filesystem=fs).schema.to_arrow_schema()
        except (pa.ArrowInvalid, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise JobError(f"input {shown} is not a readable Parquet file: {reason}") from e
        names.update(dict.fromkeys(schema.names))
    return list(names)


CSV_HEADER_BYTES = 1 << 20


def _csv_columns(fs: pafs.FileSystem, files: list[tuple[str, str]]) -> list[str] | None:
    """The header of the first CSV file, as Spark's reader names the columns; None where that
    cannot be told here (not UTF-8, repeated names, which Spark renames)."""
    if not files:
        return None
    shown, path = files[0]
    try:
        with fs.open_input_stream(path) as stream:
            head = stream.read(CSV_HEADER_BYTES)
    except OSError as e:
        raise JobError(f"input {shown} cannot be read: {e.strerror or e}") from e
    if len(head) == CSV_HEADER_BYTES:
        head = head[: head.rfind(b"\n") + 1]
    try:
        header = next(csv.reader(io.StringIO(head.decode("utf-8-sig"), newline="")), [])
    except (UnicodeDecodeError, csv.Error):
        return None
    return header if len(set(header)) == len(header) else None


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
