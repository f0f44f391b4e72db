"""`inference.GRPCInferenceService` over the shared `DataPlane`: the Open Inference Protocol's gRPC
methods (as Triton's `grpc_service.proto` spells them, which tritonclient's stubs carry).

Each method does gRPC only: it calls the same data plane and repository functions as the HTTP
routes, and an error becomes the gRPC status of its HTTP status with the same message (400
INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE, ...). Our own bugs are INTERNAL, logged with
their traceback. With an API key set, every method but the server's health probes needs
`authorization: Bearer <key>` or `x-api-key: <key>` metadata, as over HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inference import InvalidInputError
from serving.core.dataplane import DataPlane
from serving.core.errors import ModelNotFound, ModelNotReady, ServingError
from serving.grpc.codec import decode_request, encode_response
from serving.protocol import answers
from serving.protocol.answers import index_rows, load_model, model_config, statistics

log = logging.getLogger("serving")
T = TypeVar("T")
Context = Any
"""`grpc.aio.ServicerContext` (grpcio ships no type hints)."""

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
SHARED_MEMORY = "the shared-memory extension", "send tensors in the request"
UNAUTHORIZED = (
    "missing or wrong API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>' metadata"
)


@dataclass(slots=True)
class Call:
    """What the request metrics label a call with, once a model answered it."""

    model: str = ""
    version: str = ""


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane, api_key: str | None = None):
        self.plane = plane
        self.key = api_key.encode() if api_key is not None else None
        if plane.tracing is not None:  # a span per inference call (serving/ops/tracing.py)
            traced = plane.tracing.grpc("ModelInfer", self.ModelInfer)
            self.ModelInfer = traced  # type: ignore[method-assign]

    async def ServerLive(self, request: Any, context: Context) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            try:
                self.plane.model(request.name, request.version or None)
            except (ModelNotFound, ModelNotReady):
                return pb.ModelReadyResponse(ready=False)  # as Triton answers
            return pb.ModelReadyResponse(ready=True)

        return await self._answer(context, "ModelReady", work)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            return pb.ServerMetadataResponse(
                name=answers.SERVER_NAME,
                version=answers.server_version(),
                extensions=answers.EXTENSIONS,
            )

        return await self._answer(context, "ServerMetadata", work)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            model = self.plane.model(request.name, request.version or None)
            entry = self.plane.repository.entry(request.name)
            meta = model.metadata
            return pb.ModelMetadataResponse(
                name=request.name,
                versions=[str(v) for v in entry.ready_versions],
                platform=answers.PLATFORM,
                inputs=[_tensor(t) for t in meta.inputs],
                outputs=[_tensor(t) for t in meta.outputs if t.role != "layer"],  # as over HTTP
            )

        return await self._answer(context, "ModelMetadata", work)

    async def ModelInfer(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            model = self.plane.model(request.model_name, request.model_version or None)
            call.model, call.version = request.model_name, str(model.version)
            decoded = decode_request(request, model.metadata)
            outputs = await self.plane.infer(model, decoded.inputs, decoded.outputs)
            response = pb.ModelInferResponse(
                model_name=request.model_name, model_version=call.version, id=request.id
            )
            return encode_response(response, outputs, model.metadata, decoded)

        return await self._answer(context, "ModelInfer", work)

    async def RepositoryIndex(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            rows = index_rows(self.plane, request.ready)
            models = [pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
            return pb.RepositoryIndexResponse(models=models)

        return await self._answer(context, "RepositoryIndex", work)

    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            await load_model(self.plane, request.model_name, request.parameters.keys())
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            await asyncio.to_thread(self.plane.unload, request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, "RepositoryModelUnload", work)

    async def ModelStreamInfer(self, request_iterator: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, "streaming inference (ModelStreamInfer)", "call ModelInfer")

    async def ModelConfig(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            config = model_config(self.plane, request.name, request.version or None)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

        return await self._answer(context, "ModelConfig", work)

    async def ModelStatistics(self, request: Any, context: Context) -> Any:  # noqa: N802
        async def work(call: Call) -> Any:
            stats = statistics(self.plane, request.name, request.version)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

        return await self._answer(context, "ModelStatistics", work)

    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, *SHARED_MEMORY)

    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, *SHARED_MEMORY)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, *SHARED_MEMORY)

    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, *SHARED_MEMORY)

    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, *SHARED_MEMORY)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, *SHARED_MEMORY)

    async def TraceSetting(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, "the trace extension (TraceSetting)")

    async def LogSettings(self, request: Any, context: Context) -> Any:  # noqa: N802
        await _unimplemented(context, "the logging extension (LogSettings)", "set --log-level")

    async def _answer(
        self, context: Context, method: str, work: Callable[[Call], Awaitable[T]]
    ) -> T:
        """Run `work` as one call: the API key, the request metrics, errors as statuses."""
        call, status, start = Call(), 500, time.perf_counter()
        metrics = self.plane.metrics
        metrics.answering += 1
        try:
            if self.key is not None and not self._authorized(context):
                status = 401
                await context.abort(CODES[401], UNAUTHORIZED)
            result = await work(call)
            status = 200
            return result
        except (ServingError, InvalidInputError) as e:
            status = e.status if isinstance(e, ServingError) else 400
            if self.plane.tracing is not None:
                self.plane.tracing.record(e)
            log.info("gRPC %s -> %d: %s", method, status, e)
            await context.abort(CODES.get(status, grpc.StatusCode.UNKNOWN), str(e))
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            log.exception("unhandled error on gRPC %s", method)
            if self.plane.tracing is not None:
                self.plane.tracing.record(e)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal server error (logged on the server)"
            )
        finally:
            metrics.answering -= 1
            endpoint = f"grpc {method}"
            metrics.observe_request(
                call.model, call.version, endpoint, status, time.perf_counter() - start
            )
        raise AssertionError("context.abort returned")  # it raises

    def _authorized(self, context: Context) -> bool:
        assert self.key is not None
        offered: bytes | None = None
        for key, value in context.invocation_metadata() or ():
            text = value.encode() if isinstance(value, str) else bytes(value)
            if key == "x-api-key":
                offered = text
            elif key == "authorization" and offered is None and text[:7].lower() == b"bearer ":
                offered = text[7:].strip()
        return offered is not None and hmac.compare_digest(offered, self.key)


def _tensor(info: Any) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=info.name, datatype=info.datatype, shape=info.shape
    )


async def _unimplemented(context: Context, what: str, instead: str = "") -> None:
    message = f"{what} is not implemented by this server" + (f"; {instead}" if instead else "")
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
