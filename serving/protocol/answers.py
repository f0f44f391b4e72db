"""What the protocol's calls other than inference answer, the same over HTTP (`serving.http`)
and gRPC (`serving.grpc`, which parses this JSON into Triton's messages): the server's
identity, the model repository extension (index, load), and Triton's model configuration and
statistics extensions.

The configuration is what Triton's auto-complete would write for the graph, in
`model_config.proto`'s JSON: platform `onnxruntime_onnx`; `max_batch_size` the most rows a
request may carry (`max_batch_rows`) where every input and output has a batch axis, and then
`dims` leave that axis out, 0 and the full shapes otherwise; `dynamic_batching` while the
adaptive batcher is on for the model (its `max_batch_size` as the preferred size, its delay as
the queue delay); `output` the outputs a request gets when it names none, and the hidden-layer
outputs that it may still name in `parameters.hidden_outputs`, as model metadata lists them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import inference
from serving.core.dataplane import DataPlane
from serving.core.errors import BadRequest, ModelNotReady
from serving.core.repository import VersionPolicy

SERVER_NAME = "onnx-bundle-serving"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]
PLATFORM = "onnx_onnxv1"


def server_version() -> str:
    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "0+unknown"


CONFIG_PLATFORM = "onnxruntime_onnx"
"""The platform in model configuration (Triton's name for its onnxruntime backend)."""
BACKEND = "onnxruntime"
TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}  # fmt: skip
"""Open Inference Protocol datatypes as `model_config.proto`'s `DataType` names."""
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


def index_rows(plane: DataPlane, only_ready: bool) -> list[dict[str, str]]:
    """The repository index, as HTTP and gRPC answer it."""
    rows = []
    for entry in plane.repository.entries():
        if not entry.versions:
            rows.append({"name": entry.name, "state": "UNAVAILABLE", "reason": entry.reason})
        for state in entry.versions.values():
            rows.append(
                {
                    "name": entry.name,
                    "version": str(state.version),
                    "state": state.state,
                    "reason": state.reason,
                }
            )
    return [r for r in rows if r["state"] == "READY" or not only_ready]


async def load_model(plane: DataPlane, name: str, parameters: Iterable[str]) -> None:
    """(Re)load a model by name (HTTP and gRPC); `parameters` are the request's keys."""
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise BadRequest(
            "loading with an override config or files is not supported; "
            "put the bundle in the repository and load it by name"
        )
    entry = await asyncio.to_thread(plane.load, name)
    if entry.default_version is None:
        raise BadRequest(
            f"model {name!r} failed to load: {plane.repository.describe_failure(entry)}"
        )


def model_config(plane: DataPlane, name: str, version: str | None = None) -> dict[str, Any]:
    """A model's configuration, as Triton's JSON (HTTP) and `ModelConfig` (gRPC) carry it."""
    model = plane.model(name, version)  # 404 unknown, 503 not ready
    meta = model.metadata
    batchable = meta.batchable
    axis = 1 if batchable else 0
    config: dict[str, Any] = {
        "name": name,
        "platform": CONFIG_PLATFORM,
        "backend": BACKEND,
        "version_policy": _policy(plane.repository.entry(name).policy),
        "max_batch_size": plane.settings.max_batch_rows if batchable else 0,
        "input": [
            {
                "name": i.name,
                "data_type": TYPES[i.datatype],
                "format": "FORMAT_NONE",
                "dims": i.shape[axis:],
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for i in meta.inputs
        ],
        "output": [
            {
                "name": o.name,
                "data_type": TYPES[o.datatype],
                "dims": o.shape[axis:],
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for o in meta.outputs
            if o.role != "layer"
        ],
        "instance_group": [_instances(plane, model)],
        "default_model_filename": meta.onnx.file,
        "parameters": _parameters(meta),
    }
    batching = plane.repository.batching(model)
    if batching.enabled and batchable:
        config["dynamic_batching"] = {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": batching.max_delay_us,
        }
    return config


def _policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": policy.specific}}
    return {"latest": {"num_versions": policy.latest or 1}}


def _instances(plane: DataPlane, model: inference.Model) -> dict[str, Any]:
    """One instance group: `inference_workers` runs of a model may overlap, on its provider."""
    gpu = any(p in GPU_PROVIDERS for p in model.providers)
    return {
        "name": f"{model.name}_0",
        "kind": "KIND_GPU" if gpu else "KIND_CPU",
        "count": plane.settings.inference_workers,
    }


def _parameters(meta: inference.metadata.BundleMetadata) -> dict[str, Any]:
    """Triton's string parameters: the hidden-layer outputs a request may name (a JSON list)."""
    hidden = [o.name for o in meta.outputs if o.role == "layer"]
    return {"hidden_outputs": {"string_value": json.dumps(hidden)}} if hidden else {}


def statistics(plane: DataPlane, name: str = "", version: str = "") -> dict[str, Any]:
    """Triton's statistics of every ready version of every model (no name), of one model's
    ready versions (no version), or of one version."""
    if not name:
        entries = [e for e in plane.repository.entries() if e.ready_versions]
        chosen = [(e.name, v) for e in entries for v in e.ready_versions]
    elif version:
        chosen = [(name, plane.model(name, version).version)]  # 400, 404, 503 as elsewhere
    else:
        entry = plane.repository.entry(name)
        if not entry.ready_versions:
            raise ModelNotReady(
                f"model {name!r} is not ready: {plane.repository.describe_failure(entry)}"
            )
        chosen = [(name, v) for v in entry.ready_versions]
    stats = []
    for model_name, number in chosen:
        model = plane.repository.get(model_name, number)
        lane = plane.lane(model)
        stats.append(lane.stats.report(model_name, number, model.metadata.batchable))
    return {"model_stats": stats}
