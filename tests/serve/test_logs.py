"""Logs: JSON lines with --json-output (timestamp, level, target, message, fields), one start-up
summary, and no secret (API key, hub token) in any line, even at debug level."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tei_ort.serve.logs import JsonFormatter
from tests.conftest import REPO
from tests.serve.live import free_port

API_KEY = "sk-very-secret-api-key-1234"
HF_TOKEN = "hf_secretTokenNeverLogged5678"
HF_API_TOKEN = "hf_aliasSecretNeverLogged9012"


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tei_ort.serve.x", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_json_line_shape() -> None:
    line = json.loads(JsonFormatter().format(_record("batch done", batch_size=4, path="/embed")))
    assert set(line) == {"timestamp", "level", "target", "message", "fields"}
    assert line["level"] == "INFO" and line["target"] == "tei_ort.serve.x"
    assert line["message"] == "batch done"
    assert line["fields"] == {"batch_size": 4, "path": "/embed"}
    assert line["timestamp"].endswith("+00:00")


def test_json_line_carries_the_trace_id() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        line = json.loads(JsonFormatter().format(_record("hello")))
    context = span.get_span_context()
    assert line["fields"]["trace_id"] == format(context.trace_id, "032x")
    assert line["fields"]["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in json.loads(JsonFormatter().format(_record("outside")))["fields"]
    assert trace.get_current_span().get_span_context().is_valid is False


@pytest.mark.parametrize(("argv", "spans"), [([], True), (["--disable-spans"], False)])
def test_tei_serve_passes_disable_spans_to_its_json_logs(
    argv: list[str], spans: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tei_ort.errors import PackageError
    from tei_ort.serve import cli

    seen: dict[str, object] = {}

    def configure(level: str, **kwargs: object) -> None:
        seen.update(kwargs)

    def build(settings: object) -> None:
        raise PackageError("stop here")

    monkeypatch.setattr(cli, "configure_logging", configure)
    monkeypatch.setattr(cli, "build", build)
    with pytest.raises(SystemExit):
        cli.main(["--json-output", *argv])
    assert seen == {"json_output": True, "spans": spans}


def test_disable_spans_leaves_the_ids_out() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request"):
        line = json.loads(JsonFormatter(spans=False).format(_record("hello", batch_size=2)))
    assert line["fields"] == {"batch_size": 2}
    assert line["message"] == "hello"


@pytest.mark.slow
def test_cli_json_logs_have_no_secrets(minilm_package: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LOG_LEVEL": "debug",
        "HF_TOKEN": HF_TOKEN,
        "HF_API_TOKEN": HF_API_TOKEN,  # TEI's deprecated alias: HF_TOKEN wins, neither is logged
    }
    command = [sys.executable, "-m", "tei_ort.serve.cli", "--model-id", str(minilm_package)]
    command += ["--hostname", "127.0.0.1", "--port", str(port), "--json-output"]
    command += ["--api-key", API_KEY, "--prometheus-port", "0", "--variant", "fp32"]
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[str] = []
    try:
        url = f"http://127.0.0.1:{port}"
        assert process.stdout is not None
        for line in process.stdout:  # until the start-up summary
            seen.append(line)
            if "Ready:" in line:
                break
        else:
            raise AssertionError("no start-up summary")
        auth = {"authorization": f"Bearer {API_KEY}"}
        assert httpx.post(f"{url}/embed", json={"inputs": "a"}, headers=auth).status_code == 200
        wrong = {"authorization": f"Bearer {API_KEY}x"}
        assert httpx.post(f"{url}/embed", json={"inputs": "a"}, headers=wrong).status_code == 401
        assert httpx.post(f"{url}/embed", json={"inputs": 3}, headers=auth).status_code == 422
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, rest
    output = "".join(seen) + rest
    lines = [json.loads(text) for text in output.splitlines() if text.strip()]
    assert lines, output
    for parsed in lines:
        assert {"timestamp", "level", "target", "message", "fields"} <= set(parsed), parsed
    assert sum("Ready:" in parsed["message"] for parsed in lines) == 1
    assert any("<redacted>" in parsed["message"] for parsed in lines)  # the debug settings line
    assert API_KEY not in output and HF_TOKEN not in output and HF_API_TOKEN not in output
