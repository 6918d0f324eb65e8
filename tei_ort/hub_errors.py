"""A failed hub download, as one PackageError naming the repo and saying what to do: used by
tei-export (export/hub.py) and tei-serve (serve/model_source.py). huggingface_hub's own message
(with its URL, never the token) is kept at the end."""

from __future__ import annotations

import importlib.util

from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tei_ort.errors import PackageError


def _unreachable() -> tuple[type[Exception], ...]:
    """Failures that mean "the hub could not be asked", as opposed to "the hub said no".
    huggingface_hub < 1 raises requests' errors and 1.x httpx's; a serving install may have only
    one of the two libraries, so each is imported only where it is installed."""
    found: list[type[Exception]] = [OfflineModeIsEnabled]
    if importlib.util.find_spec("requests") is not None:
        import requests

        found += [requests.ConnectionError, requests.Timeout]
    if importlib.util.find_spec("httpx") is not None:
        import httpx

        found.append(httpx.TransportError)
    return tuple(found)


UNREACHABLE = _unreachable()


def describe(exc: Exception, repo_id: str, revision: str | None) -> PackageError:
    """Most specific first: the hub's error classes subclass one another (a cache miss,
    LocalEntryNotFoundError, is an EntryNotFoundError)."""
    rev = revision or "main"
    where = constants.ENDPOINT
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, GatedRepoError):
        message = (
            f"{repo_id}: a gated repo on {where}; accept its conditions on its hub page and pass "
            "a token of that account (HF_TOKEN, --token)"
        )
    elif isinstance(exc, RepositoryNotFoundError):
        message = (
            f"{repo_id}: no such repo on {where}, or it is private and no token with access was "
            "given (HF_TOKEN, --token)"
        )
    elif isinstance(exc, RevisionNotFoundError):
        message = f"{repo_id}: revision {rev!r} not found (a branch, tag, commit or refs/pr/N)"
    elif isinstance(exc, (LocalEntryNotFoundError, *UNREACHABLE)):
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        message = (
            f"{repo_id}: the hub at {where} cannot be reached{offline} and the cache has no "
            f"copy of revision {rev!r}"
        )
    elif isinstance(exc, EntryNotFoundError):
        message = f"{repo_id}: a file is missing at revision {rev!r}"
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        message = f"{repo_id}: the hub at {where} answered {status}"
        if status == 403:
            message += "; the token does not grant access to this repo"
    else:
        message = f"{repo_id}: not a local folder, and the hub download failed"
    return PackageError(f"{message} ({detail})")
