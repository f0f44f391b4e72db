"""Find a bundle in the model repository and check that it is what it says it is.

A model folder holds numbered version folders; each version folder is a bundle
(`model.onnx` + `metadata.json`). A bundle is refused when its checksum or its signature does
not match its graph: serving a model whose metadata lies would give wrong answers silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort
from pydantic import ValidationError

from inference.errors import BundleError, describe_problems
from inference.metadata import METADATA_FILE, BundleMetadata, TensorInfo

ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def list_versions(model_dir: Path) -> list[int]:
    """The bundle versions in a model folder, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.name.isdigit() and (p / METADATA_FILE).is_file()
    )


def resolve_bundle_dir(path: str | Path, version: int | None = None) -> Path:
    """A version folder from a version folder, or from a model folder (latest or `version`)."""
    path = Path(path)
    if (path / METADATA_FILE).is_file() and version is None:
        return path
    if not path.is_dir():
        raise BundleError(f"{path}: no such model folder")
    versions = list_versions(path)
    if not versions:
        raise BundleError(
            f"{path}: no bundle here: expected {METADATA_FILE} in this folder or in numbered "
            "version folders (train one with 'python -m training <model folder>')"
        )
    if version is None:
        return path / str(versions[-1])
    if version not in versions:
        raise BundleError(
            f"{path}: no version {version}; versions: {', '.join(map(str, versions))}"
        )
    return path / str(version)


def read_metadata(bundle_dir: Path) -> BundleMetadata:
    file = bundle_dir / METADATA_FILE
    try:
        return BundleMetadata.model_validate(json.loads(file.read_text()))
    except FileNotFoundError as e:
        raise BundleError(f"{file}: missing") from e
    except json.JSONDecodeError as e:
        raise BundleError(f"{file}: not valid JSON: {e}") from e
    except ValidationError as e:
        raise BundleError(
            f"{file}: invalid bundle metadata: {describe_problems(e.errors())}"
        ) from e


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(bundle_dir: Path, metadata: BundleMetadata) -> Path:
    onnx_file = bundle_dir / metadata.onnx.file
    if not onnx_file.is_file():
        raise BundleError(f"{onnx_file}: missing")
    actual = sha256_of(onnx_file)
    if actual != metadata.onnx.sha256:
        raise BundleError(
            f"{onnx_file}: sha256 {actual} does not match {metadata.onnx.sha256} recorded in "
            f"{METADATA_FILE}; the file was changed or corrupted after export"
        )
    return onnx_file


def verify_signature(session: ort.InferenceSession, metadata: BundleMetadata, where: Path) -> None:
    """The graph's inputs and outputs must be exactly those the metadata describes."""
    _compare(session.get_inputs(), metadata.inputs, "input", where)
    _compare(session.get_outputs(), metadata.outputs, "output", where)


def _compare(
    graph: list[ort.NodeArg], declared: Sequence[TensorInfo], kind: str, where: Path
) -> None:
    in_graph = {a.name: a for a in graph}
    names = {t.name for t in declared}
    if set(in_graph) != names:
        raise BundleError(
            f"{where}: {kind}s in the graph {sorted(in_graph)} do not match the metadata's "
            f"{sorted(names)}"
        )
    for tensor in declared:
        arg = in_graph[tensor.name]
        datatype = ORT_TYPES.get(arg.type, arg.type)
        graph_shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        if datatype != tensor.datatype or graph_shape != tensor.shape:
            raise BundleError(
                f"{where}: {kind} {tensor.name!r} is {datatype} {graph_shape} in the graph but "
                f"{tensor.datatype} {tensor.shape} in the metadata"
            )
