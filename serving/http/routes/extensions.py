"""Triton's model configuration and statistics extensions over HTTP: routes and their
documented bodies; the answers are `serving.protocol.answers`'.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from serving.http.routes import ERRORS, dataplane
from serving.protocol.answers import model_config, statistics

router = APIRouter(tags=["model configuration and statistics extensions"], responses=ERRORS)


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
