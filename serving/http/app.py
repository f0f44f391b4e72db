"""`create_app(settings)`: the FastAPI application, built by a factory, never at import time.

Models load in the background when the app starts, so the live probe answers at once and the
ready probe turns true only when every model has been loaded, verified and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

import inference
from serving.core.batching import BatchingConfig
from serving.core.dataplane import DataPlane
from serving.core.repository import ModelRepository
from serving.http.errors import install_handlers
from serving.http.fast_front import HotStack, ServingApp, hot_routes
from serving.http.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from serving.http.routes import extensions, health, repository_api, v1, v2
from serving.ops import logs, tracing
from serving.ops.cheap_metrics import SharedMetrics
from serving.ops.collector import ServerCollector
from serving.ops.metrics import Metrics, MetricsMiddleware
from serving.ops.settings import Settings
from serving.process.supervisor import stop_with_supervisor
from serving.protocol import schemas
from serving.protocol.answers import server_version

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from serving.grpc import GrpcServer

log = logging.getLogger("serving")


def runtime_options(settings: Settings) -> inference.RuntimeOptions:
    return inference.RuntimeOptions(
        providers=tuple(settings.providers),
        allow_cpu_fallback=settings.allow_cpu_fallback,
        intra_op_threads=settings.session_threads,
        allow_spinning=settings.allow_spinning,
        allow_tf32=settings.allow_tf32,
    )


def create_app(
    settings: Settings, *, tune_gc: bool = False, span_exporter: SpanExporter | None = None
) -> ServingApp:
    """The service; `tune_gc` where it owns its process (`python -m serving`, the uvicorn
    factory): the process's garbage collector is set for serving while the app runs
    (`serving/ops/collector.py`). `span_exporter` (tests) turns tracing on, its spans sent
    there (`serving/ops/tracing.py`)."""
    shared = SharedMetrics(settings.metrics_dir) if settings.metrics_dir is not None else None
    metrics = Metrics(shared)
    repository = ModelRepository(
        settings.repo,
        runtime_options(settings),
        settings.models,
        on_load=metrics.model_loaded,
        batching=BatchingConfig(settings.max_batch_size, settings.max_delay_us),
    )
    collector = ServerCollector() if tune_gc else None
    plane = DataPlane(  # tracing None when off
        repository, settings, metrics, collector, tracing.from_settings(settings, span_exporter)
    )
    grpc_server = _grpc_server(plane, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane.start()
        if grpc_server is not None:
            await grpc_server.start()
        if collector is not None:
            collector.start()
        loading = None if plane.loaded else asyncio.create_task(asyncio.to_thread(plane.load_all))
        if loading is None:  # started again: the models stay, stopping let the collector go
            await asyncio.to_thread(plane.settle)
        sharing = None
        if shared is not None:
            sharing = asyncio.create_task(metrics.share(settings.metrics_flush_s))
        try:
            yield
        finally:
            plane.stopping = True
            if grpc_server is not None:  # after HTTP drained: gRPC calls in flight finish too
                await grpc_server.stop()
            if loading is not None:
                await loading
            plane.close()
            if sharing is not None:  # its last flush has the requests that just drained
                sharing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sharing
            if collector is not None:
                collector.stop()

    app = ServingApp(
        title="ONNX bundle serving",
        version=server_version(),
        summary="Open Inference Protocol v2 and a friendly v1 API over ONNX model bundles.",
        lifespan=lifespan,
    )
    app.dataplane = plane  # an attribute, not `app.state`: `State` finds it only after a miss
    # extensions first: its /v2/models/stats must win over v2's /v2/models/{name}
    routers = (health.router, extensions.router, v2.router, repository_api.router, v1.router)
    for router in routers:
        app.include_router(router)

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def prometheus() -> Response:
        # in a thread: with several workers a scrape writes and reads files
        text = await asyncio.to_thread(metrics.exposition)
        return Response(text, media_type="text/plain; version=0.0.4")

    install_handlers(app)
    # The same protection and metrics, in the same order, in front of FastAPI's routes and of
    # the hot routes that bypass FastAPI (see serving/http/fast_front.py).
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    if key is not None:
        app.add_middleware(ApiKeyMiddleware, key=key)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.hot_stack = _trace(app, HotStack(metrics, settings.max_body_bytes, key), plane.tracing)
    app.hot_routes = hot_routes(routers)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def _trace(app: ServingApp, hot_stack: HotStack, traces: tracing.Tracing | None) -> ASGIApp:
    """The hot routes' stack; with tracing on, a span per request around it and around
    FastAPI's stack (outside their metrics and protection). Off, nothing is in the way."""
    if traces is None:
        return hot_stack
    app.add_middleware(tracing.TracedHttp, tracing=traces)
    hot_stack.tracing = traces  # its errors on the span
    return traces.http(hot_stack)


def _grpc_server(plane: DataPlane, settings: Settings) -> GrpcServer | None:
    """The gRPC service over the same data plane, with `grpc_port` set."""
    if settings.grpc_port is None:
        return None
    from serving.grpc import GrpcServer  # grpcio is imported only where gRPC is on

    return GrpcServer(plane, settings)


def create_app_from_env() -> ServingApp:
    """For `uvicorn --factory` with several workers: settings from `SERVING_*` env vars.
    Logging stays uvicorn's (its `--log-config`, `--log-level`, access log)."""
    return _app_owning_its_process(Settings.load())


def create_worker_app() -> ServingApp:
    """A worker of `python -m serving --workers N`: `create_app_from_env`, with logging set
    from the settings as the parent set its own. A worker is a process of its own; without
    this it would print only warnings, unformatted, and never JSON."""
    settings = Settings.load()
    logs.configure(settings.log_level, settings.log_json, settings.access_log)
    return _app_owning_its_process(settings)


def _app_owning_its_process(settings: Settings) -> ServingApp:
    """The service in a process of its own, started by a supervisor: the collector set for
    serving, and the process stopping if its supervisor dies (`serving/process/supervisor.py`)."""
    app = create_app(settings, tune_gc=True)
    stop_with_supervisor()
    return app


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the bodies that routes read themselves (see `document_body`)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (schemas.InferenceRequest, schemas.PredictRequest):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    app.openapi_schema = schema
    return schema
