"""Package integrity: every file a manifest lists is checked against its size and sha256 before the
package is served, so that a truncated copy, a disk error or an altered graph is refused with an
error naming the file rather than served (or crashing in ONNX Runtime with its own message).

Hashing is the cost (a few hundred MB/s per core), so a verified digest is remembered, per file,
under the file's identity: (size, mtime_ns, ctime_ns, inode, device). Every write to a file moves
its ctime, and user space cannot set ctime back (utime sets only atime and mtime), so a file whose
identity is unchanged since it was hashed holds the same bytes; an edit, a copy or a restore is
hashed again. A restart of an unchanged package then reads one small JSON file and stats its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tei_ort.errors import PackageError
from tei_ort.package import (
    CHECKS_FILE,
    EXPORT_RECORD_FILE,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    FileDigest,
    Manifest,
    read_manifest,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
# Not covered by the digests: the manifest holds them, export.json is the exporter's cache key,
# and checks.json is rewritten by every server that measures the package.
UNCOVERED = frozenset({MANIFEST_FILE, EXPORT_RECORD_FILE, CHECKS_FILE})


@dataclass(frozen=True)
class Report:
    files: int  # files checked; 0 for a package from before the digests, which is not checked
    hashed: int  # of which read and hashed now (the rest matched the cache)
    bytes_hashed: int
    seconds: float

    def describe(self) -> str:
        if self.files == 0:
            return (
                f"not verified: {MANIFEST_FILE} lists no file digests (exported before tei_ort "
                "recorded them); re-export the package to have its files verified at load"
            )
        cached = self.files - self.hashed
        return (
            f"{self.files} files verified against the manifest's sha256 "
            f"({self.hashed} hashed, {self.bytes_hashed / 1e6:.1f} MB, {cached} unchanged since "
            f"last verified) in {self.seconds:.2f} s"
        )


def sha256(path: Path) -> str:
    # hashlib.file_digest would do this, but only from Python 3.11; the package supports 3.10.
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def package_files(package: Path) -> list[str]:
    """Every file of a package the digests cover, as relative POSIX paths, sorted."""
    return sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*")
        if path.is_file() and path.relative_to(package).as_posix() not in UNCOVERED
    )


def digest_files(package: Path) -> dict[str, FileDigest]:
    """What an export records in the manifest: each covered file's size and sha256."""
    return {
        name: FileDigest(sha256=sha256(package / name), size=(package / name).stat().st_size)
        for name in package_files(package)
    }


def verify(package: Path, cache_file: Path | None = None) -> Report:
    """Check every file the manifest lists; PackageError naming the first bad one. A package from
    before the digests (no `files` in its manifest) cannot be checked: Report.files is 0, and the
    caller says so (refusing it would strand every package exported before this check)."""
    started = time.perf_counter()
    manifest = read_manifest(package)
    if not manifest.files:
        return Report(0, 0, 0, time.perf_counter() - started)
    _check_listed(manifest)
    cache = _load_cache(cache_file)
    hashed = bytes_hashed = 0
    for name, expected in sorted(manifest.files.items()):
        path = package / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise PackageError(
                f"{path}: missing (listed in {MANIFEST_FILE}); re-export the package"
            ) from None
        if stat.st_size != expected.size:
            raise PackageError(
                f"{path}: {stat.st_size} bytes, the manifest says {expected.size} (truncated or "
                "replaced); re-export the package or copy it again"
            )
        identity = _identity(stat)
        key = str(path.resolve())
        if cache.get(key) == [*identity, expected.sha256]:
            continue
        digest = sha256(path)
        hashed += 1
        bytes_hashed += stat.st_size
        if digest != expected.sha256:
            raise PackageError(
                f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                f"{expected.sha256[:16]}... (the file was altered or is corrupt); re-export the "
                "package or copy it again"
            )
        cache[key] = [*identity, digest]
    if cache_file is not None and hashed:
        _save_cache(cache_file, cache)
    return Report(len(manifest.files), hashed, bytes_hashed, time.perf_counter() - started)


def _check_listed(manifest: Manifest) -> None:
    for name in manifest.files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise PackageError(f"{MANIFEST_FILE}: {name!r} is not a path inside the package")
    needed = [
        TOKENIZER_FILE,
        *(v.file for v in manifest.variants),
        *(name for v in manifest.variants for name in v.data_files),
        *(d.file for d in manifest.dense),
    ]
    for name in needed:
        if name not in manifest.files:
            raise PackageError(f"{MANIFEST_FILE}: {name} is used but has no digest")


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _load_cache(cache_file: Path | None) -> dict[str, list[int | str]]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(cache_file: Path, cache: dict[str, list[int | str]]) -> None:
    """Best effort: a cache that cannot be written costs the next start a full hash, no more."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": cache}), encoding="utf-8")
        tmp.replace(cache_file)
    except OSError as exc:
        logger.debug("could not write the integrity cache %s: %s", cache_file, exc)
