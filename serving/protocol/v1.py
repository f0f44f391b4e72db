"""The friendly protocol for application developers: `{"instances": [...]}` in, one readable
prediction per instance out.

An instance is an object of named features (`{"age": 70}`), a row of values in the model's
feature order (`[70]`), or, for a one-feature model, a bare value (`70`). A classifier's
prediction is `{"label": ..., "class_index": ..., "scores": {label: score, ...}}`; a regressor's
is its value (or list of values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import inference
from inference import inputs
from serving.errors import BadRequest
from serving.metrics import note_model
from serving.protocol import ERRORS, dataplane, document_body
from serving.protocol.codec import EncodedResponse, mentions_booleans, parse_json, split_body
from serving.schemas import ModelStatus, PredictResponse

router = APIRouter(tags=["friendly v1"], responses=ERRORS)


def instances_to_matrix(
    instances: Any, signature: inference.metadata.InputInfo, *, may_hold_booleans: bool = True
) -> np.ndarray:
    """The feature matrix of the instances; their rows are checked by `DataPlane.infer`."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of feature objects or rows")
    if all(isinstance(i, dict) for i in instances):
        return inputs.from_records(
            instances, signature, check=False, may_hold_booleans=may_hold_booleans
        )
    if any(isinstance(i, dict) for i in instances):
        raise BadRequest("'instances' mixes feature objects and rows; use one form")
    n_features = len(signature.feature_names)
    if n_features == 1 and not any(isinstance(i, list) for i in instances):
        instances = [[value] for value in instances]  # bare values for a one-feature model
    return inputs.as_feature_matrix(
        instances, signature, check=False, may_hold_booleans=may_hold_booleans
    )


def format_predictions(outputs: dict[str, np.ndarray], meta: inference.BundleMetadata) -> list[Any]:
    if meta.task == "classification" and meta.classes:
        scores = outputs["scores"]
        indices = outputs["class_index"].tolist()
        labels = meta.classes
        if scores.shape[1] == 1:  # one unit: the score of the second class
            return [
                {"label": labels[i], "class_index": i, "score": s[0]}
                for i, s in zip(indices, scores.tolist(), strict=True)
            ]
        return [
            {"label": labels[i], "class_index": i, "scores": dict(zip(labels, row, strict=True))}
            for i, row in zip(indices, scores.tolist(), strict=True)
        ]
    values = outputs["predictions"]
    result: list[Any] = values[:, 0].tolist() if values.shape[1] == 1 else values.tolist()
    return result


async def predict(request: Request, name: str, version: str | None = None) -> Response:
    plane = dataplane(request)
    model = plane.model(name, version)
    note_model(request.state, name, model.version)
    body = split_body(await request.body(), request.headers, plane.settings.max_body_bytes)
    document = parse_json(body.header)
    if not isinstance(document, dict) or "instances" not in document:
        raise BadRequest('the request body must be a JSON object {"instances": [...]}')
    matrix = instances_to_matrix(
        document["instances"], model.metadata.input, may_hold_booleans=mentions_booleans(body)
    )
    outputs = await plane.infer(model, matrix, None)
    answer = {
        "model_name": name,
        "model_version": str(model.version),
        "predictions": format_predictions(outputs, model.metadata),
    }
    return EncodedResponse(orjson.dumps(answer))


def status(request: Request, name: str) -> JSONResponse:
    plane = dataplane(request)
    entry = plane.repository.entry(name)
    default = entry.default_version
    answer: dict[str, Any] = {
        "name": name,
        "version": str(default) if default else None,
        "versions": [str(v) for v in entry.ready_versions],
        "ready": default is not None,
        "reason": "" if default else plane.repository.describe_failure(entry),
    }
    if default is not None:
        model = plane.repository.get(name)
        meta = model.metadata
        answer.update(
            task=meta.task,
            description=meta.description,
            features=meta.feature_names,
            classes=meta.classes,
            outputs=[o.name for o in meta.outputs],
            metrics=meta.metrics,
            providers=model.providers,
        )
    return JSONResponse(answer)


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse({"models": [e.name for e in dataplane(request).repository.entries()]})


router.add_api_route("/v1/models/{name}", status, methods=["GET"], response_model=ModelStatus)
PREDICT_DOC = document_body("PredictRequest")
for path in ("/v1/models/{name}:predict", "/v1/models/{name}/versions/{version}:predict"):
    router.add_api_route(
        path,
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        openapi_extra=PREDICT_DOC,
        summary="Predict from named features or rows",
    )
