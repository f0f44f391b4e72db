"""The model repository extension (as Triton defines it): list, (re)load and unload models.

A load re-reads the model folder, builds and warms up new sessions, then swaps them in
atomically; requests in flight finish on the old sessions.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.core.errors import BadRequest
from serving.http.routes import ERRORS, dataplane
from serving.protocol.answers import index_rows, load_model
from serving.protocol.codec import parse_json
from serving.protocol.schemas import RepositoryActionResponse, RepositoryModel

router = APIRouter(tags=["model repository extension"], responses=ERRORS)


@router.post("/v2/repository/index", response_model=list[RepositoryModel])
async def index(request: Request) -> JSONResponse:
    body = await request.body()
    only_ready = _object(body).get("ready", False) if body.strip() else False
    if not isinstance(only_ready, bool):
        raise BadRequest(f"'ready' must be true or false, got {json_type(only_ready)}")
    return JSONResponse(index_rows(dataplane(request), only_ready))


@router.post("/v2/repository/models/{name}/load", response_model=RepositoryActionResponse)
async def load(request: Request, name: str) -> JSONResponse:
    body = await request.body()
    parameters = _object(body).get("parameters") if body.strip() else None
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(
            f"'parameters' must be a JSON object of parameter name to value, got "
            f"{json_type(parameters)}"
        )
    await load_model(dataplane(request), name, parameters or {})
    return JSONResponse({"name": name, "load": True})


@router.post("/v2/repository/models/{name}/unload", response_model=RepositoryActionResponse)
async def unload(request: Request, name: str) -> JSONResponse:
    await asyncio.to_thread(dataplane(request).unload, name)
    return JSONResponse({"name": name, "unload": True})


def json_type(value: object) -> str:
    """A parsed JSON value's type, in JSON's words."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "a list" if isinstance(value, list) else "null")


def _object(body: bytes) -> dict:  # type: ignore[type-arg]
    document = parse_json(body)
    if not isinstance(document, dict):
        raise BadRequest("the request body must be a JSON object")
    return document
