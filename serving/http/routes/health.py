"""Health probes (Open Inference Protocol v2): live while the process answers; ready once the
startup load has finished and until shutdown begins. Not ready is a 503, as Kubernetes wants."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.core.errors import ModelNotReady
from serving.http.routes import ERRORS, dataplane
from serving.protocol.schemas import LiveResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", response_model=LiveResponse)
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready", response_model=ReadyResponse, responses={503: ERRORS[503]})
async def ready(request: Request) -> JSONResponse:
    plane = dataplane(request)
    if not plane.ready:
        reason = "shutting down" if plane.stopping else "still loading models"
        raise ModelNotReady(f"the server is not ready: {reason}")
    return JSONResponse({"ready": True})
