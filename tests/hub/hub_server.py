"""A Hugging Face hub on loopback for the tests: the HTTP protocol huggingface_hub speaks for model
repos (selected with HF_ENDPOINT), serving folders as commits, not a mock of our functions.

    GET  /api/models/{repo}/revision/{rev}     model info: sha, siblings (snapshot_download)
    GET  /api/models/{repo}/tree/{rev}[/path]  the file tree (list_repo_files)
    HEAD /{repo}/resolve/{rev}/{file}          X-Repo-Commit, ETag, size (hf_hub_download)
    GET  /{repo}/resolve/{rev}/{file}          the bytes; `Range: bytes=N-` resumes

Revisions are branches, tags, commit hashes or `refs/pr/N` (URL-quoted in a path segment). Errors
carry the hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) and status
(404; 401 without a valid token; 403 for a token without access to a gated repo). Every request
is logged with its method, path, Range and whether a Bearer token came, never the token itself.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, Path]  # 40-hex commit -> folder holding the files at that commit
    refs: dict[str, str]  # branch, tag or refs/pr/N -> commit
    private: bool = False  # 401 RepoNotFound without a token in `tokens`
    gated: bool = False  # 401 GatedRepo without a token, 403 with one not in `tokens`
    tokens: frozenset[str] = frozenset()
    # Listed in the tree but 404 on download: a file removed between listing and fetching.
    vanished: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # unquoted
    range: str | None
    authorized: bool  # a Bearer token came (its value is never recorded)
    status: int


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    # file path -> bytes after which the next GET of it is cut off (once), to test resumes
    cut_after: dict[str, int] = field(default_factory=dict)
    url: str = ""

    def downloads(self, repo: str) -> list[str]:
        """Files fetched with GET from `repo`, in order."""
        prefix = f"/{repo}/resolve/"
        return [
            r.path[len(prefix) :].split("/", 1)[1]
            for r in self.log
            if r.method == "GET" and r.path.startswith(prefix) and r.status in (200, 206)
        ]


def commit_of(folder: Path) -> str:
    """A stable 40-hex id for a folder's content, as a git commit would be."""
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: the Hub keeps its log
        return

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        status = self._route(path, body)
        self.hub.log.append(
            Request(
                self.command,
                unquote(path),
                self.headers.get("Range"),
                (self.headers.get("Authorization") or "").startswith("Bearer "),
                status,
            )
        )

    def _route(self, path: str, body: bool) -> int:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            return self._api(f"{parts[2]}/{parts[3]}", parts[4], parts[5], "/".join(parts[6:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
        return self._error(404, "EntryNotFound", f"no route {path}")

    def _access(self, repo_id: str, revision: str) -> tuple[Repo, str, Path] | int:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if repo.private and token not in repo.tokens:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.gated and token is None:
            return self._error(401, "GatedRepo", "Access to this model is restricted")
        if repo.gated and token not in repo.tokens:
            return self._error(403, "GatedRepo", "Access to this model is restricted")
        commit = revision if revision in repo.commits else repo.refs.get(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit, repo.commits[commit]

    def _api(self, repo_id: str, kind: str, revision: str, subpath: str) -> int:
        access = self._access(repo_id, revision)
        if isinstance(access, int):
            return access
        repo, commit, folder = access
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if kind == "revision":
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "siblings": [{"rfilename": name} for name in files],
            }
            return self._json(info)
        listed = [name for name in files if not subpath or name.startswith(subpath + "/")]
        tree = [
            {
                "type": "file",
                "oid": _etag(folder / name),
                "size": (folder / name).stat().st_size,
                "path": name,
            }
            for name in listed
        ]
        return self._json(tree)

    def _file(self, repo_id: str, revision: str, name: str, body: bool) -> int:
        access = self._access(repo_id, revision)
        if isinstance(access, int):
            return access
        repo, commit, folder = access
        path = folder / name
        if not path.is_file() or name in repo.vanished:
            return self._error(404, "EntryNotFound", f"{name} does not exist at {revision}")
        data = path.read_bytes()
        start = 0
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start = int(ranged.removeprefix("bytes=").split("-", 1)[0] or 0)
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{_etag(path)}"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return status
        cut = self.hub.cut_after.pop(name, None) if not start else None
        if cut is not None:
            self.wfile.write(data[:cut])  # then drop the connection: a network failure mid-file
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return status
        self.wfile.write(data[start:])
        return status

    def _json(self, value: object) -> int:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return 200

    def _error(self, status: int, code: str, message: str) -> int:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return status


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HubServer:
    """`with HubServer(hub) as url:` serves `hub` on 127.0.0.1 on a free port until the block ends."""

    def __init__(self, hub: Hub) -> None:
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return self.hub.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
