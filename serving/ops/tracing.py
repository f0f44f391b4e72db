"""OpenTelemetry traces, opt-in: `--tracing otlp|console`, or the standard `OTEL_*` environment.

With tracing on, each inference request is a server span whose parent is the caller's W3C
`traceparent` (and `tracestate`), from the HTTP headers or the gRPC metadata; the data plane
adds the model, its version and the rows; each run of the adaptive batcher is a span of its own,
the child of its oldest request's span and linked to every request span it serves (one run,
many parents: what span links are for). HTTP responses carry the server span's `traceparent`,
so that a caller without a tracer can still find its request in the backend.

Off (the default), `from_settings` answers None, OpenTelemetry is never imported, and no hook
calls into it: the HTTP and gRPC wrappers are installed only when on, and the data plane and the
batcher test one attribute for None once per request. The `tracing` extra installs the SDK and
the OTLP exporters (`pip install 'onnx-bundle-serving[tracing]'`).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    import inference
    from serving.ops.settings import Settings

SERVICE_NAME = "onnx-bundle-serving"
"""`service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) names another."""
INSTALL = "pip install 'onnx-bundle-serving[tracing]'"
UNTRACED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
"""Probes and scrapes: a span every few seconds per pod that says nothing."""
GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
"""The gRPC codes that mark a server span as failed (OpenTelemetry's gRPC conventions); the
others are the caller's errors, recorded in `error.type` only, as HTTP's 4xx."""


def exporter_choice(setting: str, env: Mapping[str, str]) -> str | None:
    """'otlp', 'console', or None (off): the `tracing` setting, or with `auto` the standard
    environment (`OTEL_TRACES_EXPORTER`, else an `OTEL_EXPORTER_OTLP_*ENDPOINT`)."""
    if setting != "auto":
        return None if setting == "off" else setting
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = env.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip().lower()
    if named:
        if named in ("otlp", "console"):
            return named
        if named == "none":
            return None
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={named!r}: this server exports otlp or "
            "console (or pass --tracing off)"
        )
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def otlp_protocol(env: Mapping[str, str]) -> str:
    """`grpc` or `http/protobuf` (the specification's default)."""
    named = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (named or "http/protobuf").strip().lower()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTLP protocol {protocol!r}: this server sends grpc or http/protobuf")
    return protocol


def check(setting: str, env: Mapping[str, str]) -> None:
    """Fail, in one line, where tracing is asked for and the `tracing` extra is missing."""
    choice = exporter_choice(setting, env)
    if choice is None:
        return
    needed = ["opentelemetry.sdk.trace"]
    if choice == "otlp":
        kind = "grpc" if otlp_protocol(env) == "grpc" else "http"
        needed.append(f"opentelemetry.exporter.otlp.proto.{kind}")
    for module in needed:
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ValueError(f"tracing ({choice}) needs {module}: {INSTALL}")


def from_settings(settings: Settings, exporter: SpanExporter | None = None) -> Tracing | None:
    """The service's tracing, or None when off. `exporter` (tests): where spans go, at once,
    whatever the settings say."""
    if exporter is not None:
        return Tracing(exporter, batched=False)
    choice = exporter_choice(settings.tracing, os.environ)
    if choice is None:
        return None
    check(settings.tracing, os.environ)
    return Tracing(_exporter(choice), batched=choice == "otlp")


def _exporter(choice: str) -> SpanExporter:
    """The exporter named; each reads its own `OTEL_EXPORTER_OTLP_*` settings."""
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if otlp_protocol(os.environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


class Getter:
    """Reads a carrier of (name, value) pairs for OpenTelemetry's propagators: the raw ASGI
    headers (lower-case bytes) or the gRPC metadata (lower-case str, bytes for binary keys)."""

    def get(self, carrier: Sequence[tuple[Any, Any]], key: str) -> list[str] | None:
        values = [_text(v) for k, v in carrier if _text(k) == key]
        return values or None

    def keys(self, carrier: Sequence[tuple[Any, Any]]) -> list[str]:
        return [_text(k) for k, _ in carrier]


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Tracing:
    """The tracer and what the hooks call; built only when tracing is on."""

    def __init__(self, exporter: SpanExporter, *, batched: bool):
        from opentelemetry import context, propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # Not the global provider: FastAPI 0.165 traces its own routes once one is set, and
        # each app (tests build several) keeps its own exporter.
        name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": name})
        )
        processor = BatchSpanProcessor if batched else SimpleSpanProcessor
        self.provider.add_span_processor(processor(exporter))
        self.tracer = self.provider.get_tracer("serving")
        self._propagator = propagate.get_global_textmap()  # OTEL_PROPAGATORS; W3C by default
        self._getter = Getter()
        self._trace = trace
        self._context = context
        self._error = trace.StatusCode.ERROR

    def close(self) -> None:
        """Send the spans still buffered (the app's shutdown)."""
        self.provider.force_flush()

    def _start(self, name: str, carrier: Sequence[tuple[Any, Any]], attrs: dict[str, Any]) -> Span:
        parent = self._propagator.extract(carrier, getter=self._getter)  # type: ignore[arg-type]
        kind = self._trace.SpanKind.SERVER
        return self.tracer.start_span(name, context=parent, kind=kind, attributes=attrs)

    @contextmanager
    def _current(self, span: Span) -> Iterator[Span]:
        """`span` as the current one (the data plane and the batcher read it), then ended."""
        token = self._context.attach(self._trace.set_span_in_context(span))
        try:
            yield span
        finally:
            self._context.detach(token)
            span.end()

    def note(self, model: inference.Model, rows: int) -> None:
        """The data plane's hook: the current request's model, version and rows."""
        self._trace.get_current_span().set_attributes({
            "serving.model.name": model.name,
            "serving.model.version": str(model.version),
            "serving.rows": rows,
        })  # fmt: skip

    def record(self, error: BaseException) -> None:
        """The fronts' hook for an error turned into an answer: an event on the request span."""
        self._trace.get_current_span().record_exception(error)

    def link(self) -> SpanContext | None:
        """The current request span's context, for the batch that will serve it."""
        context = self._trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def http(self, app: ASGIApp) -> ASGIApp:
        """`app` (the hot routes' stack, or FastAPI's as a middleware) with a span per request."""
        return TracedHttp(app, self)

    def grpc(self, method: str, call: Callable[[Any, Any], Awaitable[Any]]) -> Any:
        """The servicer's `method` with a span per call."""
        attrs = {"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": method}

        async def traced(request: Any, context: Any) -> Any:
            metadata = context.invocation_metadata() or ()
            span = self._start(f"{GRPC_SERVICE}/{method}", metadata, dict(attrs))
            span.set_attribute("serving.protocol", "grpc")
            with self._current(span):
                try:
                    return await call(request, context)
                finally:
                    self._grpc_status(span, context.code(), context.details())

        return traced

    def _grpc_status(self, span: Span, code: Any, details: str | None) -> None:
        name = getattr(code, "name", "OK")  # None: the call returned, which is OK
        span.set_attribute("rpc.grpc.status_code", code.value[0] if code is not None else 0)
        if name != "OK":
            span.set_attribute("error.type", name)
        if name in GRPC_SERVER_ERRORS:
            span.set_status(self._error, details or name)

    def batch(
        self, model: inference.Model, links: Sequence[SpanContext | None], rows: int, inline: bool
    ) -> BatchSpan:
        """A span for one merged run of `rows` rows for len(`links`) requests: the child of the
        oldest request's span, linked to each."""
        trace = self._trace
        contexts = [c for c in links if c is not None]
        parent = None
        if contexts:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        span = self.tracer.start_span(
            f"batch {model.name}",
            context=parent,
            links=[trace.Link(c) for c in contexts],
            attributes=_batch_attributes(model, rows, len(links), inline),
        )
        return BatchSpan(span, self._error)

    @contextmanager
    def run_at_once(self, model: inference.Model, rows: int) -> Iterator[None]:
        """A span for a request that the batcher runs alone at once: a batch of one, on the
        event loop, the child of the request's span."""
        attrs = _batch_attributes(model, rows, 1, inline=True)
        with self.tracer.start_as_current_span(f"batch {model.name}", attributes=attrs):
            yield


def _batch_attributes(
    model: inference.Model, rows: int, requests: int, inline: bool
) -> dict[str, Any]:
    return {
        "serving.model.name": model.name,
        "serving.model.version": str(model.version),
        "serving.batch.rows": rows,
        "serving.batch.requests": requests,
        "serving.batch.run": "inline" if inline else "executor",
    }


class BatchSpan:
    """A merged run's span, ended when its answers are handed back."""

    __slots__ = ("_error", "span")

    def __init__(self, span: Span, error: Any):
        self.span = span
        self._error = error

    def end(self, results: Iterable[object]) -> None:
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self.span.record_exception(failed[0])
            self.span.set_status(self._error, f"{len(failed)} request(s) failed")
        self.span.end()


class TracedHttp:
    """ASGI: a server span around each HTTP request, named by its route template once known
    (`POST /v2/models/{name}/infer`), with its status code; 5xx mark it failed."""

    def __init__(self, app: ASGIApp, tracing: Tracing):
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        tracing = self.tracing
        method, path = scope["method"], scope["path"]
        attrs = {"http.request.method": method, "url.path": path}
        if path.startswith(("/v1/", "/v2/")):
            attrs["serving.protocol"] = path[1:3]
        span = tracing._start(_route_name(scope), scope["headers"], attrs)
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"traceparent", traceparent(span).encode()))
                message = {**message, "headers": headers}
            await send(message)

        with tracing._current(span):
            try:
                await self.app(scope, receive, sending)
            finally:
                _http_status(span, scope, status, tracing._error)


def _route_name(scope: Scope) -> str:
    route = getattr(scope.get("route"), "path", None)
    return f"{scope['method']} {route}" if route else scope["method"]


def _http_status(span: Span, scope: Scope, status: int, error: Any) -> None:
    route = getattr(scope.get("route"), "path", None)
    if route:  # FastAPI's router finds it only after the span began
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_attribute("error.type", str(status))
    if status >= 500:
        span.set_status(error)


def traceparent(span: Span) -> str:
    """The W3C `traceparent` of `span`."""
    c = span.get_span_context()
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}"
