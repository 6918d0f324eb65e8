"""The tei.v1 methods, over the engine the HTTP routes use (ServeContext.engine is the
ObservedEngine, so te_* metrics and spans count gRPC calls too): the same validation, admission
and errors. Each unary call and each stream message is one request to telemetry, as an HTTP
request is; TEI's timing headers (x-compute-time, ...) come back as initial metadata.

`services()` is the one table from the proto's (service, method) to the code that serves it."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from tei_ort.engine.types import EmbedRequest, Metadata, RerankRequest
from tei_ort.errors import WrongModelType
from tei_ort.package import Task
from tei_ort.serve.grpc import convert
from tei_ort.serve.grpc import tei_pb2 as pb
from tei_ort.serve.grpc.rerank_stream import rank_stream
from tei_ort.serve.grpc.status import status_of
from tei_ort.serve.grpc.streams import ordered
from tei_ort.serve.operations import ServeContext
from tei_ort.serve.replies import metadata_headers
from tei_ort.serve.telemetry import Telemetry

Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]
Answer = tuple[R, Metadata | None]
# Messages of one stream that may be outstanding at once (TEI's GRPC_MAX_PARALLEL_STREAM_REQUESTS
# default): enough to fill the engine's batches, bounded when the client reads slowly.
STREAM_WINDOW = 1024


@dataclass(frozen=True)
class Rpc(Generic[Q, R]):
    """One request message in, one answer out: what a unary call and a stream message share."""

    answer: Callable[[Q], Coroutine[Any, Any, Answer[R]]]
    method: str = "single"  # te_request_count's `method` label
    metered: bool = True  # TEI does not count Info, Tokenize or Decode


def _optional(message: Message, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _headers(context: Context) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    code, text = status_of(exc)
    await context.abort(code, text)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class TeiServicer:
    def __init__(
        self, ctx: ServeContext, telemetry: Telemetry, api_key: str | None, stream_slots: int
    ) -> None:
        self._ctx = ctx
        self._engine = ctx.engine
        self._telemetry = telemetry
        self._api_key = api_key
        # Stream messages wait for one of these before they call the engine, as TEI's streams wait
        # for a permit, so that streams alone never fill admission (RESOURCE_EXHAUSTED); the
        # rest of --max-concurrent-requests stays for unary calls and HTTP.
        self._stream_slots = asyncio.Semaphore(stream_slots)

    def services(self) -> dict[str, dict[str, Callable[..., Any]]]:
        unary, stream = self._unary, self._stream
        embed = Rpc(self._embed)
        sparse = Rpc(self._embed_sparse)
        embed_all = Rpc(self._embed_all)
        predict, predict_pair = Rpc(self._predict), Rpc(self._predict_pair)
        tokenize = Rpc(self._tokenize, metered=False)
        decode = Rpc(self._decode, metered=False)
        return {
            "tei.v1.Info": {"Info": unary("Info", Rpc(self._info, metered=False))},
            "tei.v1.Embed": {
                "Embed": unary("Embed", embed),
                "EmbedStream": stream("EmbedStream", embed),
                "EmbedSparse": unary("EmbedSparse", sparse),
                "EmbedSparseStream": stream("EmbedSparseStream", sparse),
                "EmbedAll": unary("EmbedAll", embed_all),
                "EmbedAllStream": stream("EmbedAllStream", embed_all),
            },
            "tei.v1.Predict": {
                "Predict": unary("Predict", predict),
                "PredictPair": unary("PredictPair", predict_pair),
                "PredictStream": stream("PredictStream", predict),
                "PredictPairStream": stream("PredictPairStream", predict_pair),
            },
            "tei.v1.Rerank": {
                "Rerank": unary("Rerank", Rpc(self._rerank, method="batch")),
                "RerankStream": self._rerank_stream,
            },
            "tei.v1.Tokenize": {
                "Tokenize": unary("Tokenize", tokenize),
                "TokenizeStream": stream("TokenizeStream", tokenize),
                "Decode": unary("Decode", decode),
                "DecodeStream": stream("DecodeStream", decode),
            },
        }

    # -- one message -> one answer --------------------------------------------------------------

    async def _info(self, request: pb.InfoRequest) -> Answer[pb.InfoResponse]:
        return convert.info(self._ctx), None

    async def _embed(self, request: pb.EmbedRequest) -> Answer[pb.EmbedResponse]:
        normalize = _optional(request, "normalize")
        tokenization = convert.tokenization(
            request.truncate, request.truncation_direction, _optional(request, "prompt_name")
        )
        result = await self._engine.embed(
            EmbedRequest(
                [request.inputs],
                tokenization,
                normalize=True if normalize is None else normalize,
                dimensions=_optional(request, "dimensions"),
            )
        )
        return convert.embed_response(result), result.metadata

    async def _embed_sparse(self, request: pb.EmbedSparseRequest) -> Answer[pb.EmbedSparseResponse]:
        result = await self._engine.embed_sparse(self._tokens_request(request))
        return convert.sparse_response(result), result.metadata

    async def _embed_all(self, request: pb.EmbedAllRequest) -> Answer[pb.EmbedAllResponse]:
        result = await self._engine.embed_all(self._tokens_request(request))
        return convert.all_response(result), result.metadata

    @staticmethod
    def _tokens_request(request: pb.EmbedSparseRequest | pb.EmbedAllRequest) -> EmbedRequest:
        tokenization = convert.tokenization(
            request.truncate, request.truncation_direction, _optional(request, "prompt_name")
        )
        return EmbedRequest([request.inputs], tokenization)

    async def _predict(self, request: pb.PredictRequest) -> Answer[pb.PredictResponse]:
        return await self._predict_one(request.inputs, request)

    async def _predict_pair(self, request: pb.PredictPairRequest) -> Answer[pb.PredictResponse]:
        return await self._predict_one(convert.pair(list(request.inputs)), request)

    async def _predict_one(
        self, inputs: str | tuple[str, str], request: pb.PredictRequest | pb.PredictPairRequest
    ) -> Answer[pb.PredictResponse]:
        result = await self._engine.predict(
            convert.predict_request(
                inputs, request.truncate, request.raw_scores, request.truncation_direction
            )
        )
        labels = self._engine.model.manifest.id2label
        predictions = convert.predictions(result.scores[0], labels)  # (num_labels,)
        meta = result.metadata
        return pb.PredictResponse(predictions=predictions, metadata=convert.metadata(meta)), meta

    async def _rerank(self, request: pb.RerankRequest) -> Answer[pb.RerankResponse]:
        texts = list(request.texts)
        tokenization = convert.tokenization(request.truncate, request.truncation_direction)
        result = await self._engine.rerank(
            RerankRequest(request.query, texts, tokenization, raw_scores=request.raw_scores)
        )
        ranks = convert.ranks(result.scores, texts if request.return_text else None)
        meta = result.metadata
        return pb.RerankResponse(ranks=ranks, metadata=convert.metadata(meta)), meta

    async def _tokenize(self, request: pb.EncodeRequest) -> Answer[pb.EncodeResponse]:
        prompt_name = _optional(request, "prompt_name")
        tokens = await self._engine.tokenize(
            [request.inputs], request.add_special_tokens, prompt_name
        )
        return convert.encode_response(tokens[0]), None

    async def _decode(self, request: pb.DecodeRequest) -> Answer[pb.DecodeResponse]:
        texts = await self._engine.decode([list(request.ids)], request.skip_special_tokens)
        return pb.DecodeResponse(text=texts[0]), None

    # -- RerankStream: many (query, text) messages, one ranking -------------------------------

    async def _rerank_stream(
        self, requests: AsyncIterator[pb.RerankStreamRequest], context: Context
    ) -> pb.RerankResponse:
        await self._authorize(context)
        try:
            if self._engine.model.task is not Task.RERANKER:  # before reading, as TEI
                raise WrongModelType("model is not a re-ranker model")
            response, meta = await self._observed(
                "RerankStream",
                "batch",
                True,
                lambda: rank_stream(self._engine, requests, self._stream_slots),
                context,
            )
        except Exception as exc:
            await _abort(context, exc)
        if meta is not None:
            await context.send_initial_metadata(tuple(metadata_headers(meta).items()))
        return response

    # -- the handlers grpc calls ----------------------------------------------------------------

    def _unary(self, name: str, rpc: Rpc[Q, R]) -> Callable[[Q, Context], Coroutine[Any, Any, R]]:
        async def handle(request: Q, context: Context) -> R:
            await self._authorize(context)
            try:
                response, meta = await self._observed(
                    name, rpc.method, rpc.metered, lambda: rpc.answer(request), context
                )
            except Exception as exc:
                await _abort(context, exc)
            if meta is not None:
                await context.send_initial_metadata(tuple(metadata_headers(meta).items()))
            return response

        return handle

    def _stream(
        self, name: str, rpc: Rpc[Q, R]
    ) -> Callable[[AsyncIterator[Q], Context], AsyncIterator[R]]:
        async def one(request: Q, context: Context) -> R:
            async with self._stream_slots:
                call = self._observed(
                    name, rpc.method, rpc.metered, lambda: rpc.answer(request), context
                )
                response, _ = await call
            return response

        async def handle(requests: AsyncIterator[Q], context: Context) -> AsyncIterator[R]:
            await self._authorize(context)
            answers = ordered(requests, lambda request: one(request, context), STREAM_WINDOW)
            async with aclosing(answers):
                try:
                    async for response in answers:
                        yield response
                except Exception as exc:
                    await _abort(context, exc)

        return handle

    async def _observed(
        self,
        name: str,
        method: str,
        metered: bool,
        call: Callable[[], Coroutine[Any, Any, Answer[R]]],
        context: Context,
    ) -> Answer[R]:
        telemetry = self._telemetry
        span = f"{_SERVICE_OF[name]}/{name}"
        with telemetry.request(span, _headers(context), metered=metered) as record:
            telemetry.count(record, method)
            response, meta = await call()
            record.metadata = meta
        return response, meta

    async def _authorize(self, context: Context) -> None:
        """TEI's interceptor: `authorization: Bearer <key>`; the bare key is accepted too, as on
        HTTP (tei_ort/serve/access.py), and compared in constant time."""
        if self._api_key is None:
            return
        given = _headers(context).get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else given
        if not hmac.compare_digest(token.encode(), self._api_key.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "No valid auth token")


# The span name is "<package>.<Service>/<Method>", OpenTelemetry's convention for RPC spans.
_SERVICE_OF: Mapping[str, str] = {
    method.name: service.full_name
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
