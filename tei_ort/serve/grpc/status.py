"""Which gRPC status code each error becomes. TEI's table (`From<ErrorResponse> for Status` in
router/src/grpc/server.rs), keyed by the `error_type` serve/errors.py gives each exception, so one
classification serves both transports and the message is the one HTTP clients see."""

from __future__ import annotations

import grpc

from tei_ort import errors as core_errors
from tei_ort.serve import errors


class MalformedMessage(core_errors.ValidationError):
    """The bytes are not the method's message (TEI answers INTERNAL, from tonic's decoder)."""


STATUS_BY_ERROR_TYPE: dict[str, grpc.StatusCode] = {
    "Unhealthy": grpc.StatusCode.UNAVAILABLE,
    "Backend": grpc.StatusCode.FAILED_PRECONDITION,
    "Overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Validation": grpc.StatusCode.INVALID_ARGUMENT,
    "Tokenizer": grpc.StatusCode.FAILED_PRECONDITION,
    "Empty": grpc.StatusCode.INVALID_ARGUMENT,
    "Unauthorized": grpc.StatusCode.UNAUTHENTICATED,
}
# Ours: a bug, not a failure TEI names (HTTP 500; the details stay in our log).
_INTERNAL_STATUS = 500


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, MalformedMessage):
        return grpc.StatusCode.INTERNAL, str(exc)
    kind = errors.classify(exc)
    text = errors.message(exc, kind)  # logs an unexpected error once, here where it is caught
    if kind.status == _INTERNAL_STATUS:
        return grpc.StatusCode.INTERNAL, text
    return STATUS_BY_ERROR_TYPE.get(kind.error_type, grpc.StatusCode.INVALID_ARGUMENT), text
