"""Log output: text lines, or JSON lines with --json-output (TEI's Docker images pass it).

Each JSON line is one object: timestamp (ISO 8601, UTC), level, target (the logger's name),
message, and fields: whatever a call passed with `extra=`, plus the trace and span ids of the
request being handled (not with --disable-spans), so that a log line can be found from its
trace and back. Secrets never reach a log line: Settings.redacted() is what is logged of the
configuration."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from opentelemetry import trace

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, *, spans: bool = True) -> None:
        super().__init__()
        self.spans = spans  # False: --disable-spans, as TEI drops its span lists

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        span = trace.get_current_span().get_span_context()
        if self.spans and span.is_valid:
            fields["trace_id"] = format(span.trace_id, "032x")
            fields["span_id"] = format(span.span_id, "016x")
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
            "fields": fields,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, *, json_output: bool, spans: bool = True) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(spans=spans)
        if json_output
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
