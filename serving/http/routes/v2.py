"""Open Inference Protocol v2 (KServe v2 / Triton REST): metadata, readiness and inference.

The infer route reads the body itself: tritonclient sends no Content-Type and binary tensors
after the JSON header, neither of which a declared pydantic body would accept.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import inference
from serving.http.routes import ERRORS, dataplane, document_body
from serving.ops.metrics import note_model
from serving.protocol.answers import EXTENSIONS, PLATFORM, SERVER_NAME, server_version
from serving.protocol.codec import EncodedResponse, decode_request, encode_response, split_body
from serving.protocol.schemas import (
    InferenceResponse,
    ModelMetadata,
    ModelReadyResponse,
    ServerMetadata,
)

router = APIRouter(tags=["Open Inference Protocol v2"], responses=ERRORS)


@router.get("/v2", response_model=ServerMetadata)
@router.get("/v2/", response_model=ServerMetadata, include_in_schema=False)  # the spec's YAML
async def server_metadata() -> JSONResponse:
    return JSONResponse(
        {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}
    )


def model_metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
    """The model's signature. `outputs` are what a request that names none gets (the spec's
    rule); hidden-layer outputs, which a request may still name, are listed apart in
    `parameters.hidden_outputs`: returned by default, they would multiply a tabular model's
    answer (side_effects: 41 values a row instead of 3)."""
    plane = dataplane(request)
    model = plane.model(name, version)
    entry = plane.repository.entry(name)
    meta = model.metadata
    return JSONResponse({
        "name": name,
        "versions": [str(v) for v in entry.ready_versions],
        "platform": PLATFORM,
        "inputs": [_tensor(t) for t in meta.inputs],
        "outputs": [_tensor(t) for t in meta.outputs if t.role != "layer"],
        "parameters": {
            "version": str(meta.version),
            "feature_names": meta.feature_names,
            "classes": meta.classes,
            "hidden_outputs": [_tensor(t) for t in meta.outputs if t.role == "layer"],
            "providers": model.providers,
        },
    })  # fmt: skip


def _tensor(info: inference.metadata.TensorInfo) -> dict[str, object]:
    return {"name": info.name, "datatype": info.datatype, "shape": info.shape}


def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    model = dataplane(request).model(name, version)  # 404 unknown, 503 not ready (with reason)
    return JSONResponse({"name": name, "version": str(model.version), "ready": True})


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    plane = dataplane(request)
    model = plane.model(name, version)
    note_model(request.state, name, model.version)
    settings = plane.settings
    body = split_body(
        await request.body(),
        request.headers,
        settings.max_body_bytes,
        settings.max_json_body_bytes,
    )
    decoded = decode_request(body, model.metadata)
    outputs = await plane.infer(model, decoded.inputs, decoded.outputs)
    content, headers = encode_response(outputs, model.metadata, decoded, name)
    return EncodedResponse(content, headers)


INFER_DOC = document_body("InferenceRequest", "application/json", "application/octet-stream")
for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    router.add_api_route(prefix, model_metadata, methods=["GET"], response_model=ModelMetadata)
    router.add_api_route(
        f"{prefix}/ready", model_ready, methods=["GET"], response_model=ModelReadyResponse
    )
    router.add_api_route(
        f"{prefix}/infer",
        infer,
        methods=["POST"],
        response_model=InferenceResponse,
        openapi_extra=INFER_DOC,
        summary="Infer (JSON or binary tensors)",
    )
