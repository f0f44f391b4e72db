"""One module per protocol, each registering its routes over the shared `DataPlane`."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from serving.core.dataplane import DataPlane
from serving.protocol.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Bad request: the message names the problem",
        401: "Missing or wrong API key (when one is configured)",
        404: "Unknown model or version",
        413: "Body or batch over the limit",
        415: "Unsupported content type or encoding",
        503: "Model or server not ready",
        504: "Inference took longer than the request timeout",
    }.items()
}
"""Every route may answer these; documented so clients and schema checkers know them."""


def dataplane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.dataplane  # set by create_app
    return plane


def document_body(schema_name: str, *media_types: str) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself (to accept requests without a Content-Type)."""
    schema = {"$ref": f"#/components/schemas/{schema_name}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": schema} for media in media_types or ("application/json",)
            },
        }
    }
