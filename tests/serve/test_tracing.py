"""Traces exported over OTLP/HTTP to a real receiver on loopback (an HTTP server that decodes the
protobuf ExportTraceServiceRequest, as a collector does): one span per request, tokenization /
queue / inference children, the service name, and an incoming W3C traceparent honoured."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tei_ort.package import Task
from tei_ort.serve import tracing
from tei_ort.serve.telemetry import Telemetry, TelemetryOptions
from tests.serve.conftest import real_engine
from tests.serve.fakes import FakeModel
from tests.serve.live import context, serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    status_code: int
    attributes: dict[str, object]


def _value(value: AnyValue) -> object:
    return getattr(value, value.WhichOneof("value"))


class Receiver:
    """POST /v1/traces, application/x-protobuf, as OTLP/HTTP specifies."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.paths.append(self.path)
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        for s in scope.spans:
                            received.spans.append(
                                ReceivedSpan(
                                    str(attrs["service.name"]),
                                    s.name,
                                    s.trace_id.hex(),
                                    s.span_id.hex(),
                                    s.parent_span_id.hex(),
                                    s.start_time_unix_nano,
                                    s.end_time_unix_nano,
                                    s.status.code,
                                    {a.key: _value(a.value) for a in s.attributes},
                                )
                            )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_spans_reach_a_real_otlp_receiver(receiver: Receiver, fake_models: dict[Task, FakeModel]) -> None:  # fmt: skip
    ctx = context(real_engine(fake_models[Task.EMBEDDING]))
    options = TelemetryOptions(otlp_endpoint=receiver.url, otlp_service_name="tei-test")
    with (
        serve(ctx, telemetry=Telemetry.build(ctx, options)) as url,
        httpx.Client(base_url=url) as c,
    ):
        traced = c.post(
            "/embed",
            json={"inputs": ["a b c", "d"]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert traced.status_code == 200
        assert c.post("/embed", json={"inputs": []}).status_code == 400
        assert c.get("/health").status_code == 200  # probes are not traced
    # Stopping the server flushed the exporter.
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    spans = receiver.spans
    assert {s.service for s in spans} == {"tei-test"}
    requests = [s for s in spans if s.name == "POST /embed"]
    assert len(requests) == 2
    ok = next(s for s in requests if s.trace_id == TRACE_ID)
    assert ok.parent_id == PARENT_ID  # the caller's span is the parent
    assert ok.attributes["http.response.status_code"] == 200
    assert ok.attributes["compute_tokens"] == int(traced.headers["x-compute-tokens"])
    assert ok.attributes["compute_chars"] == 6
    children = {s.name: s for s in spans if s.parent_id == ok.span_id}
    assert set(children) == {"tokenization", "queue", "inference"}
    assert all(s.trace_id == TRACE_ID for s in children.values())
    # Laid end to end, inside the request span.
    assert ok.start <= children["tokenization"].start
    assert children["tokenization"].end == children["queue"].start
    assert children["queue"].end == children["inference"].start
    assert children["inference"].end <= ok.end
    failed = next(s for s in requests if s is not ok)
    assert failed.trace_id != TRACE_ID and failed.parent_id == ""
    assert failed.attributes["http.response.status_code"] == 400
    assert failed.status_code == 2  # STATUS_CODE_ERROR


def test_endpoint_url() -> None:
    assert tracing.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/custom/traces") == "http://c:4318/custom/traces"


def test_no_endpoint_records_nothing() -> None:
    off = tracing.Tracing(None, "x")
    span = off.start_request("POST /embed", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert not off.is_enabled and not span.is_recording()
