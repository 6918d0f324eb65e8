"""tei-embed --ray on a two-node Ray cluster on this machine (ray.cluster_utils.Cluster: one CPU
and a 100 MB object store per node), against the local run on the same inputs: the same rows,
ids, positions and manifest, vectors within float tolerance; and an actor SIGKILLed while it holds
a shard loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tei_ort.bulk.cli import EmbedSettings, run
from tei_ort.bulk.job import BadRowError
from tei_ort.bulk.shards import JobManifest, OutputFolder, read_output
from tei_ort.errors import ValidationError
from tei_ort.export import corpus

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")
pytest.importorskip("torch")  # the minilm_package fixture exports the embedded model once

from ray.cluster_utils import Cluster  # noqa: E402

from tei_ort.bulk import ray_job  # noqa: E402

pytestmark = pytest.mark.ray

OBJECT_STORE_BYTES = 100 * 1024 * 1024
ATOL = 1e-5


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES}
    with pytest.MonkeyPatch.context() as patch:
        # Ray kills workers when the machine's memory is 95% used, whoever uses it: on a machine
        # shared with other work that is noise, not what these tests are about. (Ray reads its
        # settings from RAY_<name> variables, case and all.)
        patch.setenv("RAY_memory_monitor_refresh_ms", "0")
        # No dashboard: a process busy with nothing the tests read, on two shared cores.
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
    # Connected here, so each job reuses the connection (tei-embed leaves a connection it did
    # not open alone).
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("inputs")
    texts = corpus.mixed(64)
    jsonl = folder / "a.jsonl"
    lines = [json.dumps({"text": t, "id": f"a-{i}"}) for i, t in enumerate(texts[:37])]
    lines[5] = json.dumps({"id": "a-5"})  # a bad row: no text
    jsonl.write_text("\n".join(lines) + "\n")
    parquet = folder / "b.parquet"
    table = pa.table({"text": texts[37:], "id": [f"b-{i}" for i in range(len(texts) - 37)]})
    pq.write_table(table, parquet, row_group_size=10)
    return [jsonl, parquet]


def _settings(package: Path, sources: list[Path], output: Path, **extra: object) -> EmbedSettings:
    return EmbedSettings.model_validate(
        {
            "inputs": [str(p) for p in sources],
            "output": output,
            "model_id": str(package),
            "provider": "cpu",
            "variant": "fp32",
            "intra_op_threads": 1,
            "id_field": "id",
            "shard_size": 10,
            "on_error": "skip",
            **extra,
        }
    )


@pytest.fixture(scope="module")
def local(
    minilm_package: Path, sources: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    output = tmp_path_factory.mktemp("local") / "out"
    run(_settings(minilm_package, sources, output))
    return output


def _manifest(output: Path) -> JobManifest:
    manifest = OutputFolder(output).read_manifest()
    assert manifest is not None
    return manifest


def _assert_same_job(ray_output: Path, local_output: Path) -> None:
    got, want = read_output(ray_output), read_output(local_output)
    for column in ("id", "file", "row"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist()
    np.testing.assert_allclose(
        np.array(got.column("embedding").to_pylist(), dtype=np.float32),
        np.array(want.column("embedding").to_pylist(), dtype=np.float32),
        atol=ATOL,
    )
    a, b = _manifest(ray_output), _manifest(local_output)
    assert (a.fingerprint, a.provider, a.variant, a.complete) == (
        b.fingerprint,
        "cpu",
        "fp32",
        True,
    )
    assert list(a.shards) == list(b.shards) == list(range(7))
    for index, entry in a.shards.items():
        other = b.shards[index]
        assert (entry.file, entry.rows, entry.embedded, entry.tokens, entry.errors) == (
            other.file,
            other.rows,
            other.embedded,
            other.tokens,
            other.errors,
        )
    assert sorted(p.name for p in ray_output.iterdir()) == sorted(
        p.name for p in local_output.iterdir()
    )


def test_the_ray_run_equals_the_local_run(
    cluster: Cluster, minilm_package: Path, sources: list[Path], local: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    summary = run(_settings(minilm_package, sources, output, ray=cluster.address))
    _assert_same_job(output, local)
    assert (summary.rows, summary.embedded, summary.bad_rows) == (64, 63, 1)
    assert (summary.shards_written, summary.shards_reused) == (7, 0)
    [error] = _manifest(output).shards[0].errors
    assert (Path(error.file).name, error.row) == ("a.jsonl", 5)
    assert len(ray.nodes()) == 2  # the job ran on the two-node cluster, not a fresh local one


def _killing_actor(marker: Path, shard: int) -> type[ray_job.ShardActor]:
    class KillsItselfOnce(ray_job.ShardActor):
        """SIGKILLs its own process on receiving `shard`, the first time any actor does."""

        def __call__(self, batch: pa.Table) -> pa.Table:
            if shard in batch.column("shard").to_pylist():
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    return KillsItselfOnce


def test_a_local_job_resumed_on_ray_with_an_actor_killed_mid_shard(
    cluster: Cluster,
    minilm_package: Path,
    sources: list[Path],
    local: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folder is the local run's format: the shards a local run finished are kept, the rest
    done on Ray; and the actor that receives shard 3 SIGKILLs itself: Ray restarts it and
    retries the shard, and no row is lost or written twice."""
    output = tmp_path / "out"
    output.mkdir()
    for name in ("part-00000.parquet", "part-00001.parquet"):
        (output / name).write_bytes((local / name).read_bytes())
    manifest = _manifest(local)
    first_two = {i: manifest.shards[i] for i in (0, 1)}
    OutputFolder(output).write_manifest(
        manifest.model_copy(update={"shards": first_two, "complete": False})
    )
    marker = tmp_path / "killed.pid"
    monkeypatch.setattr(ray_job, "ShardActor", _killing_actor(marker, shard=3))

    summary = run(_settings(minilm_package, sources, output, ray=cluster.address))

    killed = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # that actor's process is gone: shard 3 was embedded by its successor
    ids = read_output(output).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 63
    _assert_same_job(output, local)
    assert (summary.shards_reused, summary.shards_written) == (2, 5)
    assert (summary.rows, summary.embedded, summary.bad_rows) == (44, 44, 0)


def test_a_user_error_in_an_actor_stops_the_job_with_its_message(
    cluster: Cluster,
    minilm_package: Path,
    sources: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refuses(ray_job.ShardActor):
        def __call__(self, batch: pa.Table) -> pa.Table:
            if 2 in batch.column("shard").to_pylist():
                raise ValidationError("b.parquet changed during the job")
            return super().__call__(batch)

    monkeypatch.setattr(ray_job, "ShardActor", Refuses)
    output = tmp_path / "out"
    with pytest.raises(ValidationError) as raised:
        run(_settings(minilm_package, sources, output, ray=cluster.address))
    assert str(raised.value) == "b.parquet changed during the job"
    manifest = _manifest(output)
    assert 2 not in manifest.shards and not manifest.complete


def test_on_error_fail_stops_at_the_bad_row(
    cluster: Cluster, minilm_package: Path, sources: list[Path], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    settings = _settings(minilm_package, sources, output, ray=cluster.address, on_error="fail")
    with pytest.raises(BadRowError, match=r"a\.jsonl, row 5: missing field 'text'"):
        run(settings)
    manifest = _manifest(output)
    assert 0 not in manifest.shards and not manifest.complete  # the bad row's shard is not written
    assert not (output / "part-00000.parquet").exists()
