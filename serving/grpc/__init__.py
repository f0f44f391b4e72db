"""The Open Inference Protocol over gRPC, beside HTTP: grpcio's asyncio server in the same process
and event loop as uvicorn, over the same `DataPlane` (`--grpc-port`; off unless set).

The app's lifespan starts it before the models load (its ServerReady turns true with the HTTP
ready probe) and stops it on shutdown, after HTTP has drained: new calls are refused and calls in
flight get `drain_timeout_s` to finish. Messages over `max_body_bytes` are refused by grpcio
(RESOURCE_EXHAUSTED), as HTTP refuses such bodies with 413. With several worker processes each
binds the port with SO_REUSEPORT and the kernel spreads connections over them; with one, a port
in use is an error at start.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc

from serving.core.dataplane import DataPlane
from serving.grpc.service import InferenceService
from serving.ops.settings import Settings

log = logging.getLogger("serving")


class GrpcServer:
    def __init__(self, plane: DataPlane, settings: Settings):
        assert settings.grpc_port is not None
        self.plane = plane
        self.settings = settings
        self.address = f"{_host(settings.host)}:{settings.grpc_port}"
        self._server: Any = None

    async def start(self) -> None:
        """Bind and serve; an address that cannot be bound is a RuntimeError naming it."""
        settings = self.settings
        limit = settings.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", int(settings.workers > 1)),  # every worker binds it
            ]
        )
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.plane, key), server
        )
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen for gRPC on {self.address}: {e}") from e
        if port == 0:  # older grpcio answers 0 instead of raising
            raise RuntimeError(f"cannot listen for gRPC on {self.address}")
        await server.start()
        self._server = server
        log.info("serving the Open Inference Protocol over gRPC on %s", self.address)

    async def stop(self) -> None:
        """Refuse new calls; calls in flight may take `drain_timeout_s` to finish."""
        if self._server is not None:
            await self._server.stop(self.settings.drain_timeout_s)
            self._server = None


def _host(host: str) -> str:
    """An IPv6 address in brackets, as gRPC's target syntax wants it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
