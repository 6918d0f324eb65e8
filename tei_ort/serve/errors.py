"""One table from error class to HTTP status and TEI `error_type`, and the two error bodies:
TEI's `{error, error_type}` on native routes, OpenAI's `{error: {message, type, param, code}}` on
the OpenAI routes (the official client unwraps `error`). No stack trace ever reaches a client."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pydantic
from pydantic_core import ErrorDetails
from sanic import exceptions as sanic_exceptions

from tei_ort import errors

logger = logging.getLogger(__name__)


class MalformedBody(errors.ValidationError):
    """The body is not JSON at all (axum answers 400 here; wrong types are 422)."""


class Unauthorized(errors.TeiOrtError):
    pass


class ModelNotFound(errors.TeiOrtError):
    """A request's `model` names none of the models this server serves (several are served)."""


@dataclass(frozen=True)
class ErrorKind:
    status: int
    error_type: str  # TEI's ErrorType, capitalised as TEI serializes it
    openai_type: str


_INVALID = "invalid_request_error"

# Looked up along the exception's MRO, so a subclass row (EmptyInput) wins over its base's.
ERROR_TABLE: dict[type[BaseException], ErrorKind] = {
    errors.EmptyInput: ErrorKind(400, "Empty", _INVALID),
    MalformedBody: ErrorKind(400, "Validation", _INVALID),
    errors.ValidationError: ErrorKind(422, "Validation", _INVALID),
    pydantic.ValidationError: ErrorKind(422, "Validation", _INVALID),
    errors.TokenizationError: ErrorKind(422, "Tokenizer", _INVALID),
    errors.Overloaded: ErrorKind(429, "Overloaded", "rate_limit_error"),
    errors.WrongModelType: ErrorKind(424, "Backend", _INVALID),
    errors.BackendError: ErrorKind(424, "Backend", "server_error"),
    errors.Unhealthy: ErrorKind(503, "Unhealthy", "server_error"),
    Unauthorized: ErrorKind(401, "Unauthorized", "authentication_error"),
    ModelNotFound: ErrorKind(404, "NotFound", _INVALID),
    sanic_exceptions.PayloadTooLarge: ErrorKind(413, "Validation", _INVALID),
    sanic_exceptions.NotFound: ErrorKind(404, "NotFound", "not_found_error"),
    sanic_exceptions.MethodNotAllowed: ErrorKind(405, "MethodNotAllowed", _INVALID),
}
_INTERNAL = ErrorKind(500, "Backend", "server_error")
_CLIENT = ErrorKind(400, "Validation", _INVALID)


def classify(exc: BaseException) -> ErrorKind:
    for cls in type(exc).__mro__:
        kind = ERROR_TABLE.get(cls)
        if kind is not None:
            return kind
    if isinstance(exc, sanic_exceptions.SanicException) and 400 <= exc.status_code < 500:
        return ErrorKind(exc.status_code, _CLIENT.error_type, _CLIENT.openai_type)
    return _INTERNAL


def message(exc: BaseException, kind: ErrorKind) -> str:
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(_describe(error) for error in exc.errors(include_url=False)[:5])
    if kind is _INTERNAL:
        # Logged once here, where it is caught; the client learns nothing about our internals.
        logger.error("unexpected error", exc_info=exc)
        return "internal server error"
    return str(exc)


def _describe(error: ErrorDetails) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{location}: {error['msg']}"


def tei_body(exc: BaseException) -> tuple[int, dict[str, object]]:
    kind = classify(exc)
    return kind.status, {"error": message(exc, kind), "error_type": kind.error_type}


def openai_body(exc: BaseException) -> tuple[int, dict[str, object]]:
    kind = classify(exc)
    return kind.status, {
        "error": {
            "message": message(exc, kind),
            "type": kind.openai_type,
            "param": None,
            "code": kind.status,  # TEI's OpenAI route reports the HTTP status here
        }
    }
