"""A job's output folder: Parquet shards and `manifest.json`, both written atomically.

    OUTPUT/manifest.json        the job (fingerprint, model, variant), every finished shard
    OUTPUT/part-00000.parquet   rows [0, shard_size) of the job's inputs, bad ones left out
    OUTPUT/part-00001.parquet   ...

A shard is written to a hidden temporary name, fsynced, renamed into place, and only then
recorded in the manifest (itself replaced the same way). So after a SIGKILL at any instant a shard
is either in the manifest, whole, or recomputed on the next run: a shard file the manifest does
not list, or whose size differs from the one recorded, never counts as done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydantic

from tei_ort.durable import fsync
from tei_ort.errors import ValidationError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TEMPORARY_MARK = ".tmp-"


class RowError(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)

    file: str
    row: int
    reason: str


class ShardEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True)

    file: str  # name inside the output folder
    bytes: int
    rows: int  # job rows the shard covers, bad ones included
    embedded: int
    tokens: int
    errors: tuple[RowError, ...] = ()


class JobManifest(pydantic.BaseModel):
    """The file format of manifest.json (pydantic: it is read back from disk)."""

    model_config = pydantic.ConfigDict(frozen=True)

    format_version: int = FORMAT_VERSION
    fingerprint: str  # of the inputs and every option that changes a vector
    job: dict[str, object]  # the same options, readable
    model_id: str
    provider: str  # pinned on resume: a resumed job never changes variant midway
    variant: str
    shard_size: int
    shards: dict[int, ShardEntry] = {}
    complete: bool = False


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_atomically(path: Path, write: Callable[[Path], object]) -> int:
    """write(temporary) then fsync, rename over `path`, fsync the folder; returns the size."""
    temporary = path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")
    write(temporary)
    fsync(temporary)
    size = temporary.stat().st_size
    os.replace(temporary, path)
    fsync(path.parent)  # the rename itself survives a power cut only once the folder is synced
    return size


class OutputFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read_manifest(self) -> JobManifest | None:
        file = self.path / MANIFEST
        if not file.exists():
            return None
        try:
            return JobManifest.model_validate_json(file.read_bytes())
        except pydantic.ValidationError as exc:
            raise ValidationError(f"{file}: not a tei-embed manifest ({exc})") from exc

    def prepare(self) -> None:
        """Create the folder and remove temporary files that a killed run left behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(f".*{TEMPORARY_MARK}*"):
            leftover.unlink(missing_ok=True)

    def write_manifest(self, manifest: JobManifest) -> None:
        data = manifest.model_dump_json(indent=1).encode()
        write_atomically(self.path / MANIFEST, lambda p: p.write_bytes(data))

    def is_done(self, manifest: JobManifest, index: int) -> bool:
        entry = manifest.shards.get(index)
        if entry is None:
            return False
        file = self.path / entry.file
        return file.is_file() and file.stat().st_size == entry.bytes

    def write_shard(self, index: int, table: pa.Table) -> tuple[str, int]:
        name = shard_name(index)
        size = write_atomically(self.path / name, lambda p: pq.write_table(table, p))
        return name, size

    def write_bytes(self, index: int, data: bytes) -> tuple[str, int]:
        """A shard a worker already encoded as Parquet (tei-embed --ray)."""
        name = shard_name(index)
        return name, write_atomically(self.path / name, lambda p: p.write_bytes(data))


def read_output(path: Path) -> pa.Table:
    """Every finished shard of a job, in order: what a user reads back (and the tests compare)."""
    manifest = OutputFolder(path).read_manifest()
    if manifest is None:
        raise ValidationError(f"{path}: no {MANIFEST}")
    tables = [pq.read_table(path / manifest.shards[i].file) for i in sorted(manifest.shards)]
    return pa.concat_tables(tables)
