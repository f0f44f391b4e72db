"""Triton's model configuration and statistics extensions, over HTTP (routes here) and gRPC
(`serving/grpc/service.py` parses the same JSON into Triton's messages).

The configuration is what Triton's auto-complete would write for the graph, in
`model_config.proto`'s JSON: platform `onnxruntime_onnx`; `max_batch_size` the most rows a
request may carry (`max_batch_rows`) where every input and output has a batch axis, and then
`dims` leave that axis out, 0 and the full shapes otherwise; `dynamic_batching` while the
adaptive batcher is on for the model (its `max_batch_size` as the preferred size, its delay as
the queue delay); `output` the outputs a request gets when it names none, and the hidden-layer
outputs that it may still name in `parameters.hidden_outputs`, as model metadata lists them.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

import inference
from serving.dataplane import DataPlane
from serving.errors import ModelNotReady
from serving.protocol import ERRORS, dataplane
from serving.repository import VersionPolicy

router = APIRouter(tags=["model configuration and statistics extensions"], responses=ERRORS)
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}  # fmt: skip
"""Open Inference Protocol datatypes as `model_config.proto`'s `DataType` names."""
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


class ModelConfigResponse(BaseModel):
    """Triton's `ModelConfig` in JSON (the fields this server fills; see model_config.proto)."""

    model_config = ConfigDict(extra="allow")
    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    version_policy: dict[str, Any]


class Duration(BaseModel):
    count: int
    ns: int


class InferStats(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration
    cache_miss: Duration


class BatchStat(BaseModel):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStat(BaseModel):
    name: str
    version: str
    last_inference: int
    """Milliseconds since the epoch; 0 before the first request."""
    inference_count: int
    execution_count: int
    inference_stats: InferStats
    batch_stats: list[BatchStat]


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStat]


def model_config(plane: DataPlane, name: str, version: str | None = None) -> dict[str, Any]:
    """A model's configuration, as Triton's JSON (HTTP) and `ModelConfig` (gRPC) carry it."""
    model = plane.model(name, version)  # 404 unknown, 503 not ready
    meta = model.metadata
    batchable = meta.batchable
    axis = 1 if batchable else 0
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORM,
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


@router.get("/v2/models/stats", response_model=StatisticsResponse)
async def all_statistics(request: Request) -> JSONResponse:
    return JSONResponse(statistics(dataplane(request)))


async def model_statistics(request: Request, name: str, version: str | None = None) -> JSONResponse:
    return JSONResponse(statistics(dataplane(request), name, version or ""))


async def config(request: Request, name: str, version: str | None = None) -> JSONResponse:
    return JSONResponse(model_config(dataplane(request), name, version))


for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    router.add_api_route(
        f"{prefix}/config", config, methods=["GET"], response_model=ModelConfigResponse
    )
    router.add_api_route(
        f"{prefix}/stats", model_statistics, methods=["GET"], response_model=StatisticsResponse
    )
