"""Crash-safe exports, with real processes: an export SIGKILLed at any stage leaves nothing that
loads and the next run redoes it; two processes exporting the same model into the same folder take
turns (one exports, the other waits and reuses it); a full disk fails clearly and leaves nothing
half-written (a real tmpfs that fills up where the tests may mount one, and an ENOSPC raised
by a writer everywhere)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tei_ort import integrity
from tei_ort.errors import PackageError
from tei_ort.export import pipeline, publish
from tei_ort.package import is_package
from tests import tiny_bert

REPO = Path(__file__).resolve().parents[2]
# One export in a child process: prints {"reused": ...} on success.
CHILD = """
import json, logging, sys
from pathlib import Path
from tei_ort.export.pipeline import export_model
from tests import tiny_bert
logging.basicConfig(level=logging.INFO)
result = export_model(sys.argv[1], Path(sys.argv[2]), tiny_bert.OPTIONS)
print(json.dumps({"reused": result.reused}))
"""
DEADLINE_S = 900  # a bound on a stuck child, not a timing assertion (generous: loaded machines)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return tiny_bert.build(tmp_path_factory.mktemp("crash") / "tiny-bert")


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source's package, exported once: the tests that start from a whole package copy it
    (a package is its files; the copy passes the same digests)."""
    out = tmp_path_factory.mktemp("crash-exported") / "pkg"
    pipeline.export_model(str(source), out, tiny_bert.OPTIONS)
    return out


def _copy_to(exported: Path, out: Path) -> None:
    shutil.copytree(exported, out)
    assert _whole(out)


def _start(source: Path, out: Path, log: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(source), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w") if log is not None else subprocess.DEVNULL,
        text=True,
    )


def _whole(out: Path) -> bool:
    """Every file of the package at `out` passes the manifest's digests, and none is unlisted."""
    return integrity.verify(out).files == len(integrity.package_files(out)) >= 4


def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{publish.STAGING_INFIX}*"))


def _wait_for(child: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    """Poll the file system until `condition` holds while the child still runs."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if child.poll() is not None:
            raise AssertionError(f"the export ended before the point to test: {child.stderr}")
        assert time.monotonic() < deadline, "the export never reached the point to test"
        time.sleep(0.02)


def _in_staging(out: Path, relative: str) -> Callable[[], bool]:
    return lambda: any((s / relative).exists() for s in _staging(out))


# Stages of an export, by what its staging folder holds: the optimum graph being written, the
# reference outputs written (the fp32 graph being validated), the manifest of a candidate.
STAGES = {
    "graph export": ".work",
    "reference written": "fidelity.npz",
    "fp32 under validation": "manifest.json",
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_at_any_stage_leaves_nothing_that_loads(
    source: Path, tmp_path: Path, stage: str
) -> None:
    out = tmp_path / "pkg"
    child = _start(source, out)
    try:
        _wait_for(child, _in_staging(out, STAGES[stage]))
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(DEADLINE_S)
    assert child.returncode == -signal.SIGKILL
    assert not out.exists() and not is_package(out)
    assert len(_staging(out)) == 1  # what the killed export left, beside the target
    redo = pipeline.export_model(str(source), out, tiny_bert.OPTIONS)
    assert not redo.reused
    assert _whole(out)
    assert _staging(out) == []  # cleaned up under the lock


def test_a_killed_re_export_keeps_the_old_package_whole(
    source: Path, exported: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    _copy_to(exported, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (source / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "q: "}, "default_prompt_name": None})
    )
    try:
        child = _start(source, out)  # new sources: a new export replaces the package
        try:
            _wait_for(child, _in_staging(out, "fidelity.npz"))
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(DEADLINE_S)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        assert _whole(out)
    finally:
        (source / "config_sentence_transformers.json").unlink()


def test_a_crash_between_the_two_renames_is_redone(
    source: Path, exported: Path, tmp_path: Path
) -> None:
    """Replacing a package moves the old one aside, then the new one in: the state a crash
    between the two leaves (no package, the old one aside) is exported again and cleaned up."""
    out = tmp_path / "pkg"
    _copy_to(exported, out)
    aside = out.parent / f".{out.name}{publish.OLD_INFIX}12345"
    out.rename(aside)
    result = pipeline.export_model(str(source), out, tiny_bert.OPTIONS)
    assert not result.reused and _whole(out)
    assert not aside.exists()


def test_two_processes_one_exports_the_other_waits_and_reuses(source: Path, tmp_path: Path) -> None:
    """Both start while the test holds the folder's lock, so both are certainly under way at
    once; once it is released, one exports and the other waits for it, then reuses its package."""
    out = tmp_path / "pkg"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    waiting = "another process is exporting this package; waiting for it"
    children: list[subprocess.Popen[str]] = []
    try:
        with publish.export_lock(out):
            children = [_start(source, out, log) for log in logs]
            for child, log in zip(children, logs, strict=True):
                _wait_for(child, lambda log=log: waiting in log.read_text())  # type: ignore[misc]
            assert not out.exists() and _staging(out) == []
        results = [json.loads(child.communicate(timeout=DEADLINE_S)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0]
    assert sorted(r["reused"] for r in results) == [False, True]  # one export, one reuse
    assert _whole(out) and _staging(out) == []


def test_a_write_error_fails_clearly_and_leaves_nothing(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline, "write_fidelity_set", full_disk)
    out = tmp_path / "pkg"
    with pytest.raises(PackageError, match="ran out of disk space .*No space left on device"):
        pipeline.export_model(str(source), out, tiny_bert.OPTIONS)
    assert not out.exists() and _staging(out) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 2 MB tmpfs (the tiny package is 4.4 MB): mounting needs root and CAP_SYS_ADMIN."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()})")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_fails_clearly_and_leaves_nothing(source: Path, small_disk: Path) -> None:
    out = small_disk / "pkg"
    with pytest.raises(PackageError, match=f"{out}: the export ran out of disk space"):
        pipeline.export_model(str(source), out, tiny_bert.OPTIONS)
    assert sorted(p.name for p in small_disk.iterdir()) == [publish.lock_path(out).name]
