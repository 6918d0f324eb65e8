"""Writes that survive a crash or a power cut, for the writers that publish by rename (export's
staging folder, tei-embed's shards): a file's bytes, and a rename, are durable only once the file,
and then its folder, are fsynced."""

from __future__ import annotations

import os
from pathlib import Path


def fsync(path: Path) -> None:
    """fsync a file or a folder (on Linux a folder opens read-only like a file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
