"""The friendly protocol for application developers (KServe v1 / TensorFlow Serving's REST
formats): `{"instances": [...]}` in, one readable prediction per instance out; or
`{"inputs": ...}` (columnar) in, `{"outputs": ...}` out.

For a tabular model an instance is an object of named features (`{"age": 70}`), a row of values
in the model's feature order (`[70]`), or, for a one-feature model, a bare value (`70`). For any
other model an instance is one example's tensor as nested lists (a model of one input), or an
object of input name → nested lists (several inputs). Columnar `inputs` are the whole batch: the
one input's nested lists, or an object of input name → nested lists.

A classifier's prediction is `{"label": ..., "class_index": ..., "scores": {label: score, ...}}`;
a regressor's is its value (or list of values); any other model's is its one output's value for
the instance, or an object of output name → value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import inference
from inference import InvalidInputError, inputs
from serving.core.errors import BadRequest
from serving.http.routes import ERRORS, dataplane, document_body
from serving.ops.metrics import note_model
from serving.protocol.codec import (
    Body,
    EncodedResponse,
    mentions_booleans,
    parse_json,
    split_body,
)
from serving.protocol.schemas import ModelStatus, PredictResponse

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
    n_features = len(inputs.feature_names(signature))
    if n_features == 1 and not any(isinstance(i, list) for i in instances):
        return _bare_values(instances, signature, may_hold_booleans)
    return inputs.as_feature_matrix(
        instances, signature, check=False, may_hold_booleans=may_hold_booleans
    )


def _bare_values(
    values: list[Any], signature: inference.metadata.InputInfo, may_hold_booleans: bool
) -> np.ndarray:
    """A one-feature model's bare values as its column: read flat and reshaped, not as one
    list per value (which cost 4x the memory, and numpy's slow path for nested lists), with
    the checks and messages of rows."""
    column = inputs.as_array(values)  # flat: never ragged
    numbers = column.size and column.dtype.kind in "iuf"
    if numbers and may_hold_booleans and inputs.holds_booleans(values):
        raise InvalidInputError("features must be numbers, got true/false among them")
    return inputs.as_feature_matrix(column.reshape(-1, 1), signature, check=False)


def instances_to_feeds(instances: Any, model: inference.Model) -> dict[str, Any]:
    """A non-tabular model's instances (one example each) as named batches, for
    `Model.check` to convert and check."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list, one example each")
    infos = model.metadata.inputs
    if len(infos) == 1 and not all(isinstance(i, dict) for i in instances):
        return {infos[0].name: instances}
    names = [i.name for i in infos]
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or sorted(instance) != sorted(names):
            got = sorted(instance) if isinstance(instance, dict) else type(instance).__name__
            raise BadRequest(
                f"instance {index}: expected an object of the model's inputs "
                f"({', '.join(map(repr, names))}), got {got}"
            )
    return {name: [instance[name] for instance in instances] for name in names}


def columns_to_feeds(columns: Any, model: inference.Model) -> dict[str, Any]:
    """Columnar `inputs`: the one input's batch, or an object of input name → batch (for a
    tabular model also of feature name → column)."""
    infos = model.metadata.inputs
    if not isinstance(columns, dict):
        if len(infos) != 1:
            raise BadRequest(
                f"'inputs' must be an object of this model's inputs: "
                f"{', '.join(repr(i.name) for i in infos)}"
            )
        return {infos[0].name: columns}
    tabular = model.tabular
    if tabular is not None and tabular.name not in columns:
        return {tabular.name: inputs.from_columns(columns, tabular)}
    return columns


def format_predictions(outputs: dict[str, np.ndarray], meta: inference.BundleMetadata) -> list[Any]:
    classifier = meta.class_outputs
    if classifier is not None:
        scores_name, index_name, labels = classifier
        scores, index = outputs[scores_name], outputs[index_name]
        indices = (index if index.ndim == 1 else index.reshape(-1)).tolist()
        if scores.shape[1] == 1:  # one unit: the score of the second class
            return [
                {"label": labels[i], "class_index": i, "score": s[0]}
                for i, s in zip(indices, scores.tolist(), strict=True)
            ]
        return [
            {"label": labels[i], "class_index": i, "scores": dict(zip(labels, row, strict=True))}
            for i, row in zip(indices, scores.tolist(), strict=True)
        ]
    values = outputs.get(info.name) if (info := meta.output("predictions")) else None
    if values is not None and values.ndim == 2:
        result: list[Any] = values[:, 0].tolist() if values.shape[1] == 1 else values.tolist()
        return result
    return per_instance(outputs)


def per_instance(outputs: dict[str, np.ndarray]) -> list[Any]:
    """Each example's outputs: its one output's value, or an object of output name → value."""
    lists = {name: _listed(array) for name, array in outputs.items()}
    if len(lists) == 1:
        return next(iter(lists.values()))
    rows = {len(values) for values in lists.values()}
    if len(rows) != 1:  # outputs without a batch axis: no way to tell the examples apart
        raise BadRequest("this model's outputs are not one per instance: use 'inputs' instead")
    return [dict(zip(lists, values, strict=True)) for values in zip(*lists.values(), strict=True)]


def _listed(array: np.ndarray) -> list[Any]:
    """An output as nested lists (scalars for a 0-d output)."""
    value = array.tolist()
    return value if isinstance(value, list) else [value]


async def predict(request: Request, name: str, version: str | None = None) -> Response:
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
    feeds, columnar = decode(body, model)
    answer: dict[str, Any] = {"model_name": name, "model_version": str(model.version)}
    outputs = await plane.infer(model, feeds, None)
    if columnar:
        answer["outputs"] = {n: _listed(v) for n, v in outputs.items()}
        return EncodedResponse(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))
    answer["predictions"] = format_predictions(outputs, model.metadata)
    return EncodedResponse(orjson.dumps(answer))


def decode(body: Body, model: inference.Model) -> tuple[dict[str, Any], bool]:
    """The request's feeds for `Model.check`, and whether they came columnar (`inputs`)."""
    document = parse_json(body.header)
    if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
        raise BadRequest(
            'the request body must be a JSON object {"instances": [...]} (one example each) '
            'or {"inputs": ...} (columnar)'
        )
    if "inputs" in document:
        return columns_to_feeds(document["inputs"], model), True
    tabular = model.tabular
    if tabular is None:
        return instances_to_feeds(document["instances"], model), False
    matrix = instances_to_matrix(
        document["instances"], tabular, may_hold_booleans=mentions_booleans(body)
    )
    return {tabular.name: matrix}, False


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
            inputs=[
                {"name": i.name, "datatype": i.datatype, "shape": i.shape} for i in meta.inputs
            ],
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
