"""Where the job's files live, through pyarrow's file systems (no JVM, so on classic Spark and
Spark Connect alike): a local path, `s3://` (and Hadoop's spellings `s3a://`, `s3n://`), and
whatever else pyarrow opens (`gs://`, `hdfs://`, `abfs://`) or fsspec does where its package
for that scheme is installed.

S3 is configured from the standard environment: credentials by the AWS SDK's usual chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `~/.aws`, an instance role),
the region from `AWS_REGION` (or `AWS_DEFAULT_REGION`), the endpoint from `AWS_ENDPOINT_URL_S3`
or `AWS_ENDPOINT_URL`, which pyarrow's `S3FileSystem` does not read itself (apache/arrow#49643).

An object store has no folder rename, so a result is committed by copying its files (a
server-side copy), `_SUCCESS` last, and a commit that fails removes what it copied: the output
is complete (with `_SUCCESS`) or absent, as with a local rename.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from batch.errors import JobError

SUCCESS = "_SUCCESS"
_S3 = ("s3", "s3a", "s3n")
_RENAMES = (pafs.LocalFileSystem, pafs.HadoopFileSystem)
"""File systems whose folder rename is one step (so a commit is a rename)."""


class StorageError(JobError):
    """A store refused or could not be reached; the message names the URI and why."""

    exit_code = 1


@dataclass(frozen=True)
class Location:
    """A path as given (`uri`), its file system and the path within it."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, name: str) -> Location:
        return Location(f"{self.uri.rstrip('/')}/{name}", self.fs, f"{self.path}/{name}")

    def sibling(self, name: str) -> Location:
        """`<this>.<suffix>`-style names beside it: `name` replaces the last component."""
        parent = posixpath.dirname(self.path.rstrip("/"))
        uri_parent = self.uri.rstrip("/").rsplit("/", 1)[0]
        return Location(f"{uri_parent}/{name}", self.fs, f"{parent}/{name}")


def is_local(path: str) -> bool:
    scheme = urlsplit(path).scheme
    return len(scheme) <= 1 or scheme.lower() == "file"  # one letter: a Windows drive


def local_path(path: str) -> str:
    """A local path without its `file:` scheme."""
    parts = urlsplit(path)
    return unquote(parts.path) if parts.scheme.lower() == "file" else path


def locate(uri: str) -> Location:
    """The file system that holds `uri`; a StorageError when none can open it."""
    if is_local(uri):
        return Location(uri, pafs.LocalFileSystem(), os.path.abspath(local_path(uri)))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in _S3:
        path = f"{parts.netloc}/{parts.path.lstrip('/')}".rstrip("/")
        return Location(uri, s3_filesystem(), path)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as first:  # pyarrow's ArrowInvalid is a ValueError
        fs, path = _fsspec(uri, scheme, first)
    return Location(uri, fs, path.rstrip("/"))


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 as the environment describes it (see the module docstring). Short connection
    timeouts and few retries, so an unreachable endpoint is an error in seconds."""
    options: dict[str, object] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(
        connect_timeout=5,
        request_timeout=60,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        **options,
    )


def _fsspec(uri: str, scheme: str, first: Exception) -> tuple[pafs.FileSystem, str]:
    """fsspec's file system for `scheme`, wrapped for pyarrow, when pyarrow has none."""
    try:
        import fsspec  # type: ignore[import-untyped]
    except ImportError:
        raise StorageError(f"cannot open {uri}: {_first_line(first)}") from first
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise StorageError(
            f"cannot open {uri}: no file system for {scheme}:// here ({_first_line(e)})"
        ) from e
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), str(path)


def info(location: Location) -> pafs.FileInfo:
    """What is at `location` (type NotFound when nothing), or a StorageError saying why the
    store could not tell."""
    try:
        return location.fs.get_file_info(location.path)
    except OSError as e:
        raise StorageError(describe(e, location.uri)) from e


def exists(location: Location) -> bool:
    return bool(info(location).type != pafs.FileType.NotFound)


def entries(location: Location) -> list[pafs.FileInfo]:
    """A folder's entries (not recursive), sorted by path."""
    try:
        found = location.fs.get_file_info(pafs.FileSelector(location.path))
    except OSError as e:
        raise StorageError(describe(e, location.uri)) from e
    return sorted(found, key=lambda f: f.path)


def visible(location: Location) -> list[pafs.FileInfo]:
    """What Spark's reader reads in a folder: names not starting with '_' or '.'."""
    return [f for f in entries(location) if not f.base_name.startswith(("_", "."))]


def check_bucket(location: Location, role: str) -> None:
    """An object store's bucket (container) of `location` exists: writing to a missing one
    fails only at the end otherwise."""
    if not location.remote or isinstance(location.fs, pafs.HadoopFileSystem):
        return
    bucket = location.path.split("/", 1)[0]
    found = info(Location(location.uri, location.fs, bucket))
    if found.type == pafs.FileType.NotFound:
        raise StorageError(f"{role} {location.uri}: the bucket {bucket!r} does not exist")


def delete(location: Location) -> None:
    """Remove a folder (or a file) and everything in it; nothing there is fine."""
    found = info(location)
    try:
        if found.type == pafs.FileType.Directory:
            location.fs.delete_dir(location.path)
        elif found.type == pafs.FileType.File:
            location.fs.delete_file(location.path)
    except OSError as e:
        raise StorageError(describe(e, location.uri)) from e


def mark_success(folder: Location) -> None:
    with folder.fs.open_output_stream(folder.child(SUCCESS).path):
        pass


def commit(staging: Location, target: Location) -> None:
    """Put the finished `staging` folder in place of `target` (removed first when there), with
    `_SUCCESS` written last; on failure nothing is left at `target`."""
    delete(target)
    if isinstance(staging.fs, _RENAMES):
        try:
            staging.fs.move(staging.path, target.path)
        except OSError as e:
            raise StorageError(
                f"could not move the result from {staging.uri} to {target.uri}: {_first_line(e)}"
            ) from e
        return
    try:
        _copy_tree(staging, target)
    except (OSError, StorageError) as e:
        delete(target)
        raise StorageError(
            f"could not copy the result to {target.uri} (nothing was left there): "
            f"{describe(e, target.uri) if isinstance(e, OSError) else e}"
        ) from e
    delete(staging)


def _copy_tree(source: Location, target: Location) -> None:
    files = source.fs.get_file_info(pafs.FileSelector(source.path, recursive=True))
    files = [f for f in files if f.type == pafs.FileType.File]
    files.sort(key=lambda f: f.base_name == SUCCESS)  # the marker last
    for f in files:
        relative = f.path[len(source.path) :].lstrip("/")
        source.fs.copy_file(f.path, f"{target.path}/{relative}")


def describe(e: OSError, uri: str) -> str:
    """A store's error as one line that says what to check."""
    text = _first_line(e)
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        bucket = urlsplit(uri).netloc
        return f"{uri}: the bucket {bucket!r} does not exist"
    if any(k in upper for k in ("ACCESS_DENIED", "INVALIDACCESSKEYID", "SIGNATURE", "FORBIDDEN")):
        return (
            f"{uri}: access denied; check the credentials (AWS_ACCESS_KEY_ID, "
            f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role) and their permissions ({text})"
        )
    if "NETWORK_CONNECTION" in upper or "COULD NOT CONNECT" in upper or "RESOLVE" in upper:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f" at {endpoint}" if endpoint else ""
        return f"{uri}: cannot reach the store{where} ({text})"
    return f"{uri}: {text}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
