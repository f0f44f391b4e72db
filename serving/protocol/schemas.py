"""Request and response schemas of both protocols, for validation of structure and for OpenAPI.

Tensor `data` is typed loosely (`Any`) on purpose: pydantic never walks a tensor element by
element; the codec turns it into numpy in one call and checks it there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, str | int | float | bool]
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class ErrorResponse(BaseModel):
    error: str = Field(examples=["unknown model 'sideeffects'; models: iris, side_effects"])


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class ModelReadyResponse(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[Annotated[int, Field(ge=0, strict=True)]] = Field(max_length=16)
    datatype: Datatype
    parameters: Parameters | None = None
    data: Any = None
    """Row-major values, nested or flat; absent when sent as binary (`binary_data_size`)."""


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    """An Open Inference Protocol v2 request. Extra keys (e.g. `model_name`) are ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "features",
                            "shape": [2, 1],
                            "datatype": "FP32",
                            "data": [[70.0], [20.0]],
                        }
                    ],
                    "outputs": [{"name": "scores"}, {"name": "class_index"}],
                }
            ]
        },
    )
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, min_length=1)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(BaseModel):
    ready: bool = False


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str = ""


class RepositoryActionResponse(BaseModel):
    name: str
    load: bool | None = None
    unload: bool | None = None


class PredictRequest(BaseModel):
    """Friendly prediction: `instances`, one example each (an object of named features, a row of
    values, an example's tensor as nested lists, or an object of input name → nested lists), or
    `inputs`, the whole batch by column (an input's nested lists, or an object of them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"instances": [{"age": 70}, {"age": 20}]},
                {"instances": [[70], [20]]},
                {"inputs": {"input_ids": [[5, 7, 9]], "attention_mask": [[1, 1, 1]]}},
            ]
        }
    )
    instances: list[Any] | None = Field(default=None, min_length=1)
    inputs: dict[str, Any] | list[Any] | None = None


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    outputs: dict[str, Any] | None = None
    """The answer to columnar `inputs`: output name → the batch's values."""
    predictions: list[Any] | None = Field(
        default=None,
        examples=[
            [
                {
                    "label": "side_effects",
                    "class_index": 1,
                    "scores": {"no_side_effects": 0.26, "side_effects": 0.74},
                }
            ]
        ],
    )


class ModelStatus(BaseModel):
    name: str
    version: str | None
    versions: list[str]
    ready: bool
    reason: str = ""
    task: str | None = None
    description: str = ""
    inputs: list[TensorMetadata] = []
    features: list[str] = []
    classes: list[str] | None = None
    outputs: list[str] = []
    metrics: dict[str, float] = {}
    providers: list[str] = []
