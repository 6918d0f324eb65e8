"""How an export reaches its folder whole or not at all, and one at a time.

- A lock file beside the target (`.NAME.lock`, the `filelock` library: an flock the kernel drops
  when its process dies, SIGKILL included), so that of two processes exporting the same model
  into the same place one exports and the other waits, then finds the result and reuses it.
- A staging folder beside the target (`.NAME.staging-XXXX`, same file system), where the whole
  package is written; every file and the folder are fsynced, then it is renamed into place. A
  package folder therefore holds either a complete export or nothing: an export killed at any
  point leaves only a staging folder, which is not a package (no manifest at the target) and is
  removed by the next export under the lock.
- Replacing an older package takes two renames (old aside, new in); a crash between them leaves no
  package, and the next run exports again.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from tei_ort.durable import fsync
from tei_ort.errors import PackageError
from tei_ort.package import is_package

logger = logging.getLogger(__name__)

STAGING_INFIX = ".staging-"
OLD_INFIX = ".old-"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """Held for the whole export; a second process waits here for the first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(out))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("%s: another process is exporting this package; waiting for it", out)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def check_target(out: Path) -> None:
    """Refuse a target that holds something other than a package: replacing it would delete it."""
    if out.exists() and not out.is_dir():
        raise PackageError(f"{out}: exists and is not a folder")
    if out.is_dir() and not is_package(out) and any(out.iterdir()):
        raise PackageError(
            f"{out}: a folder that is not a tei_ort package and not empty; export into a new "
            "or empty folder (an export replaces the whole folder)"
        )


def staging_folder(out: Path) -> Path:
    """A fresh staging folder beside `out`, after removing what killed exports left (call this
    under the lock: no other process is writing one)."""
    for stale in out.parent.glob(f".{out.name}{STAGING_INFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}{OLD_INFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    # mkdir rather than tempfile.mkdtemp: the package keeps the umask's permissions, not 0700,
    # so that a server running as another user (the images' non-root user) can read it.
    staging = out.parent / f".{out.name}{STAGING_INFIX}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def publish(staging: Path, out: Path) -> None:
    """Make `staging` the package at `out`: durable first (fsync), then renamed into place."""
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            fsync(path)
    fsync(staging)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{OLD_INFIX}{os.getpid()}"
        out.rename(old)
    staging.rename(out)
    fsync(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def write_error(exc: OSError, out: Path) -> PackageError:
    """A failed write during an export, as one clear error (the staging folder is removed)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return PackageError(
            f"{out}: the export ran out of disk space in {out.parent} ({exc.strerror}); "
            "nothing was written; free space or export elsewhere"
        )
    return PackageError(f"{out}: the export failed writing a file ({exc}); nothing was written")
