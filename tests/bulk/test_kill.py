"""`tei-embed` as a real process, SIGKILLed mid-job and started again with the same arguments:
it finishes, reuses the shards the first process completed, and its output equals an
uninterrupted run's, row for row and bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tei_ort.bulk.shards import OutputFolder, read_output
from tei_ort.export import corpus

pytest.importorskip("torch")  # the minilm_package fixture exports the embedded model once

ROWS = 1200
SHARD_SIZE = 40
# A deadline for the first process to reach its third shard, not a synchronisation sleep: the
# test polls the manifest the process writes.
STARTUP_DEADLINE_S = 300.0


def _command(package: Path, source: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tei_ort.bulk.cli",
        str(source),
        "-o",
        str(output),
        "--model-id",
        str(package),
        "--provider",
        "cpu",
        "--variant",
        "fp32",
        "--id-field",
        "id",
        "--shard-size",
        str(SHARD_SIZE),
    ]


def _wait_for_shards(process: subprocess.Popen[bytes], output: Path, count: int) -> int:
    folder = OutputFolder(output)
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "tei-embed exited before it could be killed"
        manifest = folder.read_manifest() if (output / "manifest.json").exists() else None
        if manifest is not None and len(manifest.shards) >= count:
            return len(manifest.shards)
        time.sleep(0.02)  # polling interval of the condition above
    raise AssertionError(f"no {count} shards within {STARTUP_DEADLINE_S} s")


def test_sigkill_mid_job_then_resume_equals_an_uninterrupted_run(
    minilm_package: Path, tmp_path: Path
) -> None:
    # Short texts (a paragraph's first words) keep three runs of the job within a minute or two.
    paragraphs = [" ".join(p.split()[:16]) for p in corpus.paragraphs()]
    texts = [paragraphs[i % len(paragraphs)] for i in range(ROWS)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _command(minilm_package, source, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_shards(process, killed, 3)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    at_kill = OutputFolder(killed).read_manifest()
    assert at_kill is not None and not at_kill.complete
    done_before = len(at_kill.shards)
    assert done_before < ROWS // SHARD_SIZE, stderr.decode()[-2000:]

    resumed = subprocess.run(
        _command(minilm_package, source, killed), env=env, capture_output=True, timeout=1800
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    log = resumed.stderr.decode()
    assert f"resuming: {done_before} shards already done" in log
    written = ROWS // SHARD_SIZE - done_before
    assert f"shards: {written} written, {done_before} already done" in log

    whole = tmp_path / "whole"
    uninterrupted = subprocess.run(
        _command(minilm_package, source, whole), env=env, capture_output=True, timeout=1800
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr.decode()[-3000:]

    result, expected = read_output(killed), read_output(whole)
    assert result.num_rows == ROWS
    assert result.column("id").to_pylist() == [str(i) for i in range(ROWS)]
    assert result.equals(expected)
    assert not list(killed.glob(".*tmp*"))
