"""tei-serve's gRPC listener: TEI's tei.v1 services, health checking and server reflection, on the
asyncio loop Sanic runs. It starts once the engine has warmed up (before HTTP listens) and, on
shutdown, stops taking calls when HTTP does, finishes its calls in flight alongside HTTP's, and
is gone before the engine drains."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sanic import Sanic

from tei_ort.serve.app import GRACEFUL_SHUTDOWN_S
from tei_ort.serve.grpc import tei_pb2 as pb
from tei_ort.serve.grpc.health import ModelHealth
from tei_ort.serve.grpc.servicer import Context, TeiServicer
from tei_ort.serve.grpc.status import MalformedMessage
from tei_ort.serve.operations import ServeContext
from tei_ort.serve.telemetry import Telemetry

logger = logging.getLogger(__name__)

# Seconds calls in flight get to finish after SIGTERM: HTTP's, spent in parallel with HTTP's.
GRACE_S = GRACEFUL_SHUTDOWN_S
# (client streams, server streams) -> grpc's handler for that kind of method.
_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _message(descriptor: Descriptor) -> Any:
    return getattr(pb, descriptor.name)


def tei_handlers(servicer: TeiServicer) -> list[grpc.GenericRpcHandler]:
    """One handler per service of tei.proto, each method bound to its code in services(); a
    method without code is a KeyError at start-up, never a silent UNIMPLEMENTED."""
    code = servicer.services()
    handlers: list[grpc.GenericRpcHandler] = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        methods = {
            method.name: _HANDLER_KINDS[(method.client_streaming, method.server_streaming)](
                _decoding(
                    code[service.full_name][method.name],
                    _message(method.input_type),
                    streams=method.client_streaming,
                    answers_stream=method.server_streaming,
                ),
                response_serializer=_message(method.output_type).SerializeToString,
            )
            for method in service.methods
        }
        handlers.append(grpc.method_handlers_generic_handler(service.full_name, methods))
    return handlers


def _decoding(
    handler: Callable[..., Any], message: type[Message], *, streams: bool, answers_stream: bool
) -> Callable[..., Any]:
    """Requests arrive as bytes and are parsed here: grpc's own deserializer would answer a
    malformed message UNKNOWN with a Python exception name; TEI (tonic) answers INTERNAL with
    "failed to decode Protobuf message", and so do we."""
    if streams:

        async def parsed(raw: AsyncIterator[bytes]) -> AsyncIterator[Message]:
            async for data in raw:
                yield _parse(message, data)

        # grpc tells a response stream from a single response by the function's kind.
        async def stream_in_out(raw: AsyncIterator[bytes], context: Context) -> Any:
            async for response in handler(parsed(raw), context):
                yield response

        async def stream_in(raw: AsyncIterator[bytes], context: Context) -> Any:
            return await handler(parsed(raw), context)

        return stream_in_out if answers_stream else stream_in

    async def unary(data: bytes, context: Context) -> Any:
        try:
            request = _parse(message, data)
        except MalformedMessage as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return await handler(request, context)

    return unary


def _parse(message: type[Message], data: bytes) -> Message:
    try:
        return message.FromString(data)
    except DecodeError as exc:
        raise MalformedMessage(f"failed to decode Protobuf message: {exc}") from exc


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcListener:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None  # the bound port, once started (port 0: the OS's choice)
        self._server: grpc.aio.Server | None = None
        self._health: ModelHealth | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self, ctx: ServeContext, telemetry: Telemetry, api_key: str | None) -> None:
        # Half the admission limit for stream messages (see TeiServicer): streams wait for it,
        # unary calls and HTTP keep the other half.
        slots = max(1, ctx.engine.config.max_concurrent_requests // 2)
        servicer = TeiServicer(ctx, telemetry, api_key, stream_slots=slots)
        # No SO_REUSEPORT (grpc's default on Linux): a second server on a taken port must fail,
        # not silently share its calls with the first.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(tei_handlers(servicer))
        self._health = ModelHealth(ctx.engine)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [s.full_name for s in pb.DESCRIPTOR.services_by_name.values()]
        reflection.enable_server_reflection(
            (*names, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
        )
        address = listen_address(self.host, self.requested_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
        await self._health.start()
        await server.start()
        self._server = server
        logger.info("gRPC (tei.v1) listening on %s", listen_address(self.host, self.port))

    def begin_stop(self) -> None:
        """Refuse new calls now; calls in flight get GRACE_S to finish (see finish_stop)."""
        if self._server is None or self._stopping is not None:
            return
        self._stopping = asyncio.get_running_loop().create_task(self._stop(self._server))

    async def finish_stop(self) -> None:
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping

    async def _stop(self, server: grpc.aio.Server) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await server.stop(GRACE_S)
        logger.info("gRPC listener stopped")


def attach_grpc(app: Sanic, host: str, port: int) -> GrpcListener:  # type: ignore[type-arg]
    """Serve tei.v1 on `port` beside the app's HTTP, sharing its engine, telemetry and API key.
    Call after create_app: start-up listeners run in order (the engine first), shut-down ones in
    reverse (this listener is gone before the engine drains)."""
    listener = GrpcListener(host, port)

    async def start(app: Sanic) -> None:  # type: ignore[type-arg]
        await listener.start(app.ctx.serve, app.ctx.telemetry, app.ctx.access.api_key)

    async def begin_stop(app: Sanic) -> None:  # type: ignore[type-arg]
        listener.begin_stop()

    async def finish_stop(app: Sanic) -> None:  # type: ignore[type-arg]
        await listener.finish_stop()

    app.before_server_start(start)
    app.before_server_stop(begin_stop)
    app.after_server_stop(finish_stop)
    return listener
