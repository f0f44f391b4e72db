"""Find a bundle in the model repository and describe it from its graph and its overlay.

A model folder holds numbered version folders; each version folder is a bundle: `model.onnx`,
and optionally `metadata.json`. The graph says what it takes and gives (names, datatypes,
shapes), as Triton's auto-complete reads it; the overlay adds what a graph cannot say (feature
names, classes, output roles, provenance) and may record the graph's sha256. A bundle is refused
when the overlay contradicts the graph or its checksum: serving a model whose metadata lies would
give wrong answers silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from pydantic import ValidationError

from inference.errors import BundleError, describe_problems
from inference.metadata import METADATA_FILE, ONNX_FILE, BundleMetadata

ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
ZIPMAP_HINT = (
    "a scikit-learn classifier converted with skl2onnx gives its probabilities as a ZipMap "
    "unless told not to: convert with to_onnx(model, X[:1], options={id(classifier): "
    "{'zipmap': False}}) (or options={'zipmap': False} for a pipeline's last step)"
)


def list_versions(model_dir: Path) -> list[int]:
    """The bundle versions in a model folder, ascending: numbered folders holding a graph (or
    an overlay naming one)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and _is_bundle(p))


def _is_bundle(folder: Path) -> bool:
    return (folder / ONNX_FILE).is_file() or (folder / METADATA_FILE).is_file()


def resolve_bundle_dir(path: str | Path, version: int | None = None) -> Path:
    """A version folder from a version folder, or from a model folder (latest or `version`)."""
    path = Path(path)
    if version is None and _is_bundle(path):
        return path
    if not path.is_dir():
        raise BundleError(f"{path}: no such model folder")
    versions = list_versions(path)
    if not versions:
        raise BundleError(
            f"{path}: no bundle here: expected {ONNX_FILE} (and optionally {METADATA_FILE}) in "
            "this folder or in numbered version folders such as 1/ (export one, or train one "
            "with 'python -m training <model folder>')"
        )
    if version is None:
        return path / str(versions[-1])
    if version not in versions:
        raise BundleError(
            f"{path}: no version {version}; versions: {', '.join(map(str, versions))}"
        )
    return path / str(version)


def read_overlay(bundle_dir: Path) -> dict[str, Any]:
    """`metadata.json` as a JSON object; empty where the folder has none."""
    file = bundle_dir / METADATA_FILE
    if not file.is_file():
        return {}
    inside(file, bundle_dir)
    try:
        overlay = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{file}: not valid JSON: {e}") from e
    if not isinstance(overlay, dict):
        raise BundleError(f"{file}: expected a JSON object, got {type(overlay).__name__}")
    return overlay


def onnx_path(bundle_dir: Path, overlay: dict[str, Any]) -> Path:
    """The graph's file: `model.onnx`, or the plain file name the overlay gives."""
    onnx = overlay.get("onnx")
    name = onnx.get("file", ONNX_FILE) if isinstance(onnx, dict) else ONNX_FILE
    if not isinstance(name, str) or not re.fullmatch(r"[^/\\]+\.onnx", name) or name[0] == ".":
        raise BundleError(
            f"{bundle_dir / METADATA_FILE}: onnx.file must name a .onnx file in the version "
            f"folder itself, got {name!r}"
        )
    file = bundle_dir / name
    if not file.is_file():
        raise BundleError(f"{file}: missing")
    inside(file, bundle_dir)
    return file


def inside(file: Path, bundle_dir: Path) -> None:
    """Refuse a file of the bundle that is a link to a file outside its version folder: a
    bundle is the folder, and nothing it says may read, serve or describe a file elsewhere.
    Links within the folder (as a Kubernetes volume's `..data/`) are followed. The message
    names the bundle's own file only, never where the link points."""
    if not file.resolve().is_relative_to(bundle_dir.resolve()):
        raise BundleError(
            f"{file}: a link to a file outside the version folder; a bundle's files must be "
            "in its version folder"
        )


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(onnx_file: Path, overlay: dict[str, Any]) -> str:
    """The graph's sha256, checked against the one the overlay records (if it does)."""
    actual = sha256_of(onnx_file)
    onnx = overlay.get("onnx")
    recorded = onnx.get("sha256") if isinstance(onnx, dict) else None
    if recorded is not None and actual != recorded:
        raise BundleError(
            f"{onnx_file}: its sha256 does not match the one recorded in {METADATA_FILE}; the "
            "file was changed or corrupted after export"
        )
    return actual


def describe(
    bundle_dir: Path,
    session: ort.InferenceSession,
    overlay: dict[str, Any],
    onnx_file: Path,
    sha256: str,
) -> BundleMetadata:
    """The bundle's metadata: the graph's signature with the overlay laid over it. A numbered
    version folder's number is the version (a bundle copied to `2/` is version 2 wherever its
    overlay came from), as the repository and its clients know it."""
    meta = session.get_modelmeta()
    onnx = overlay.get("onnx")
    merged: dict[str, Any] = {
        "name": _default_name(bundle_dir),
        "version": 1,
        "description": meta.description or "",
        **overlay,
        **({"version": int(bundle_dir.name)} if bundle_dir.name.isdigit() else {}),
        "inputs": _merge(session.get_inputs(), overlay.get("inputs"), "input", onnx_file),
        "outputs": _merge(session.get_outputs(), overlay.get("outputs"), "output", onnx_file),
        "onnx": {
            "producer": meta.producer_name or "",
            **(onnx if isinstance(onnx, dict) else {}),
            "file": onnx_file.name,
            "sha256": sha256,
        },
    }
    try:
        return BundleMetadata.model_validate(merged)
    except ValidationError as e:
        where = bundle_dir / METADATA_FILE if overlay else onnx_file
        raise BundleError(
            f"{where}: invalid bundle metadata: {describe_problems(e.errors())}"
        ) from e


def _default_name(bundle_dir: Path) -> str:
    """The model folder's name (`<repo>/<name>/<version>/`), made a valid model name."""
    folder = bundle_dir.resolve()
    name = folder.parent.name if folder.name.isdigit() else folder.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip("_.-") or "model"


def _merge(
    graph: Sequence[ort.NodeArg], declared: Any, kind: str, where: Path
) -> list[dict[str, Any]] | Any:
    """The graph's tensors in its order, each with what the overlay says of it; an overlay
    entry that names no tensor of the graph, or gives it another datatype or shape, is refused.
    A malformed overlay list is passed through for the metadata's validation to name."""
    tensors = {arg.name: _tensor(arg, kind, where) for arg in graph}
    if declared is None:
        return list(tensors.values())
    if not isinstance(declared, list) or not all(isinstance(d, dict) for d in declared):
        return declared
    by_name: dict[str, dict[str, Any]] = {}
    for entry in declared:
        name = entry.get("name")
        if name not in tensors:
            raise BundleError(
                f"{where}: {kind} {name!r} in {METADATA_FILE} is not in the graph; the graph's "
                f"{kind}s: {', '.join(map(repr, tensors))}"
            )
        graph_tensor = tensors[name]
        for key in ("datatype", "shape"):
            if key in entry and entry[key] != graph_tensor[key]:
                raise BundleError(
                    f"{where}: {kind} {name!r} is {graph_tensor['datatype']} "
                    f"{graph_tensor['shape']} in the graph but "
                    f"{entry.get('datatype', graph_tensor['datatype'])} "
                    f"{entry.get('shape', graph_tensor['shape'])} in {METADATA_FILE}"
                )
        by_name[name] = entry
    return [{**tensor, **by_name.get(name, {})} for name, tensor in tensors.items()]


def _tensor(arg: ort.NodeArg, kind: str, where: Path) -> dict[str, Any]:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        what = "not a tensor" if not arg.type.startswith("tensor(") else "a type we cannot carry"
        hint = (
            ZIPMAP_HINT
            if arg.type.startswith(("seq(map", "map("))
            else ("change the graph to take and give tensors of a numeric, boolean or string type")
        )
        raise BundleError(f"{where}: {kind} {arg.name!r} is {arg.type}, {what}; {hint}")
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return {"name": arg.name, "datatype": datatype, "shape": shape}
