"""API-key check and CORS, as TEI applies them: the key guards inference routes only (probes and
scrapers keep working), CORS allows GET and POST with a content-type header, any origin unless
--cors-allow-origin lists some."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sanic import Request
from sanic.response import HTTPResponse

from tei_ort.serve.errors import Unauthorized

OPEN_GET_PATHS = frozenset({"/health", "/", "/ping", "/metrics", "/docs", "/api-doc/openapi.json"})


@dataclass(frozen=True)
class AccessPolicy:
    api_key: str | None
    allowed_origins: tuple[str, ...]  # empty: any origin

    def check(self, request: Request) -> None:
        if self.api_key is None or request.method == "OPTIONS":
            return
        if request.method in ("GET", "HEAD") and request.path in OPEN_GET_PATHS:
            return
        given = request.headers.get("authorization", "")
        # llama-index's TEI reranker sends the bare key; TEI's "Bearer <key>" is the norm.
        token = given[7:] if given[:7].lower() == "bearer " else given
        # Constant time: the comparison must not tell an attacker how much of a guess was right.
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    def cors_headers(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None:
            return {}
        if not self.allowed_origins or "*" in self.allowed_origins:
            allowed = "*"
        elif origin in self.allowed_origins:
            allowed = origin
        else:
            return {}
        return {
            "access-control-allow-origin": allowed,
            "access-control-allow-methods": "GET, POST",
            "access-control-allow-headers": "content-type, authorization",
            "vary": "origin",
        }

    def preflight(self, request: Request) -> HTTPResponse | None:
        if request.method != "OPTIONS":
            return None
        return HTTPResponse(status=204, headers=self.cors_headers(request))
