"""--engine-replicas unset: one session on every core or two on half the cores each, whichever a
short trial at first start finds faster here (serve/loading.replicas_by_trial, timed by
runtime/trial.replica_rates, cached with the variant checks). Which layout wins depends on the
CPU, so the decision is tested with the trial's figures given, and the real trial end to end
with whatever it chose here checked for consistency."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tei_ort.engine.config import physical_cores
from tei_ort.package import CHECKS_FILE
from tei_ort.runtime import Model, RuntimeOptions, providers, trial
from tei_ort.runtime.cpu import CpuInfo, IsaClass
from tei_ort.runtime.providers import Provider
from tei_ort.serve.loading import replicas_by_trial
from tests.serve.test_engine_replicas import engine_of, sessions
from tests.serve.test_flags_take_effect import built, serve_app

needs_two_cores = pytest.mark.skipif(
    physical_cores() < 2, reason="the trial needs two physical cores (one session otherwise)"
)


_lock = threading.Lock()


class _Recorder:
    """A model whose forward records which batch it ran."""

    def __init__(self, log: list[tuple[str, int]], name: str) -> None:
        self.log, self.name = log, name

    def forward(self, batch: list[Any]) -> None:
        with _lock:
            self.log.append((self.name, id(batch)))


def test_replica_rates_time_both_layouts_on_the_same_batches() -> None:
    log: list[tuple[str, int]] = []
    batches = [[[0] * 10] * 2 for _ in range(5)]  # 5 batches of 2 ten-token rows
    whole, halves = _Recorder(log, "whole"), [_Recorder(log, "a"), _Recorder(log, "b")]
    rates = trial.replica_rates(whole, halves, batches)  # type: ignore[arg-type]
    assert set(rates) == {"1", "2"} and all(r > 0 for r in rates.values())
    ids = [id(b) for b in batches]
    one_round = log[: 1 + len(batches)]
    # One engine: a warm-up forward, then every batch in order.
    assert one_round == [("whole", ids[-1]), *[("whole", i) for i in ids]]
    rounds = sum(1 for n, b in log if n == "whole" and b == ids[-1]) // 2
    assert rounds == trial.TRIAL_ROUNDS
    # Two replicas: each its own share (every other batch), together every batch once per
    # round (after each one's warm-up forward).
    a = [b for n, b in log if n == "a"]
    b = [b for n, b in log if n == "b"]
    assert a == [ids[-1], *ids[0::2]] * rounds
    assert b == [ids[-1], *ids[1::2]] * rounds


@pytest.fixture
def package_copy(minilm_package: Path, tmp_path: Path) -> Path:
    """The real MiniLM package, its checks.json without the layout trials other tests' servers
    cached there (the variant and budget figures stay: they only cost time): this copy's layout
    trials start afresh and are cached in the copy."""
    copy = tmp_path / "package"
    copy.mkdir()
    for item in minilm_package.iterdir():
        if item.name == CHECKS_FILE:
            checks = json.loads(item.read_text())
            for machine in checks.get("machines", {}).values():
                machine.pop("replicas", None)
            (copy / item.name).write_text(json.dumps(checks))
        elif item.suffix in (".onnx", ".data"):
            (copy / item.name).symlink_to(item)
        elif item.is_file():
            shutil.copy2(item, copy / item.name)
    return copy


def _given(monkeypatch: pytest.MonkeyPatch, one: float, two: float) -> list[int]:
    calls: list[int] = []

    def rates(whole: Model, halves: Any, batches: Any) -> dict[str, float]:
        calls.append(len(halves))
        return {"1": one, "2": two}

    monkeypatch.setattr(trial, "replica_rates", rates)
    return calls


def _fp32(package: Path) -> tuple[Model, RuntimeOptions]:
    options = RuntimeOptions(provider="cpu", variant="fp32")
    return Model.load(package, options), options


@needs_two_cores
def test_two_half_sessions_when_the_trial_finds_them_faster(
    package_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _given(monkeypatch, 1000.0, 1400.0)  # clear of the margin: one trial decides
    model, options = _fp32(package_copy)
    halves, note = replicas_by_trial(model, options, 512)
    assert calls == [2]
    half = physical_cores() // 2
    assert len(halves) == 2 and halves[0].session is not halves[1].session
    threads = [h.session._session.get_session_options().intra_op_num_threads for h in halves]  # type: ignore[attr-defined]
    assert threads == [half, half]
    unit = "thread" if half == 1 else "threads"
    assert note == (
        f"2 x {half} {unit}, by trial (1 x {physical_cores()} threads: 1,000 tok/s, "
        f"2 x {half} {unit}: 1,400 tok/s)"
    )
    # Cached per package and CPU: the next start reads the figures instead of timing again.
    calls.clear()
    again, note_again = replicas_by_trial(*_fp32(package_copy), 512)
    assert calls == [] and len(again) == 2 and note_again == note
    # ...for this batch budget only: another budget is timed afresh.
    replicas_by_trial(*_fp32(package_copy), 1024)
    assert calls == [2]


@needs_two_cores
def test_one_session_unless_two_win_by_the_margin(
    package_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = 1000.0
    calls = _given(monkeypatch, one, one * (1 + trial.REPLICA_GAIN) - 1)  # just under the margin
    halves, note = replicas_by_trial(*_fp32(package_copy), 512)
    assert halves == ()
    assert note.startswith("1, by trial (1 x ") and "1,000 tok/s" in note
    # A close call: timed again, up to the most trials, before it is decided (and cached).
    assert calls == [2] * trial.TRIAL_REPEATS


def test_no_trial_without_a_fidelity_set(
    package_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _given(monkeypatch, 1.0, 100.0)
    (package_copy / "fidelity.npz").unlink()
    halves, note = replicas_by_trial(*_fp32(package_copy), 512)
    assert calls == [] and halves == ()
    want = "1 (no fidelity set to time)" if physical_cores() >= 2 else "1 (one physical core)"
    assert note == want


def test_no_trial_off_the_cpu_ep_or_for_a_large_graph(
    package_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenVINO (its own streams) and CUDA keep one session; so does a graph whose second copy
    of the weights would cost more than REPLICA_MAX_GRAPH_BYTES."""
    calls = _given(monkeypatch, 1.0, 100.0)
    model, options = _fp32(package_copy)
    for provider in (Provider.OPENVINO, Provider.CUDA):
        with monkeypatch.context() as patch:
            patch.setattr(Model, "provider", property(lambda _, p=provider: p))
            assert replicas_by_trial(model, options, 512) == ((), "1 (the provider's default)")
    assert model.provider is Provider.CPU
    monkeypatch.setattr(trial, "REPLICA_MAX_GRAPH_BYTES", 1)
    if physical_cores() >= 2:
        assert replicas_by_trial(model, options, 512) == ((), "1 (the graph is over 1 GiB)")
    assert calls == []


@needs_two_cores
def test_the_server_serves_the_layout_its_trial_chose(package_copy: Path, tmp_path: Path) -> None:
    """No --engine-replicas, no --intra-op-threads: the real trial runs at start; /info names
    the layout and its figures, the engine runs that many sessions, and the answers are the
    one-session answers."""
    app = built(package_copy, tmp_path / "hub", "--variant", "fp32")
    engine = engine_of(app)
    with serve_app(app) as client:
        info = client.get("/info").json()
        got = client.post("/embed", json={"inputs": ["a question", "an answer"] * 8}).json()
    note = info["variant_note"]
    assert "engine replicas: " in note and ", by trial (1 x " in note
    chosen = 2 if "engine replicas: 2 x " in note else 1
    assert engine.replicas == chosen
    assert len({id(s) for s in sessions(engine)}) == chosen
    want = Model.load(package_copy, RuntimeOptions(provider="cpu", variant="fp32"))
    expected = want.embed(["a question", "an answer"] * 8)
    assert len(got) == 16
    for g, w in zip(got, expected, strict=True):
        assert sum(x * y for x, y in zip(g, w, strict=True)) > 0.99999


@needs_two_cores
def test_an_explicit_replica_count_skips_the_trial(
    package_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _given(monkeypatch, 1.0, 100.0)
    for flags in (["--engine-replicas", "1"], ["--intra-op-threads", "2"]):
        app = built(package_copy, tmp_path / "hub", "--variant", "fp32", *flags)
        assert engine_of(app).replicas == 1
        with serve_app(app) as client:
            assert "engine replicas" not in client.get("/info").json()["variant_note"]
    assert calls == []


@needs_two_cores
def test_tei_embed_runs_the_layout_tei_serve_would(
    package_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tei-embed starts as tei-serve does: where two sessions win, its engine gets both, not
    the first one alone on half the cores."""
    from tei_ort.bulk.model import ModelChoice, load

    _given(monkeypatch, 1000.0, 1500.0)
    choice = ModelChoice(str(package_copy), huggingface_hub_cache=tmp_path / "hub", variant="fp32")
    loaded = load(choice, 64)
    assert loaded.forward_models is not None and len(loaded.forward_models) == 2
    assert loaded.forward_models[0] is loaded.model
    assert loaded.forward_models[0].session is not loaded.forward_models[1].session


def test_tei_embed_batches_with_the_padding_cap_of_this_cpus_class(
    package_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tei-embed's engine takes the CPU EP's padding cap of this machine's class, as tei-serve's
    does (10% on x86-avx2, where it was measured; 25% elsewhere)."""
    from tei_ort.bulk import model as bulk_model

    _given(monkeypatch, 1500.0, 1000.0)  # one session: the layout is not what this is about
    choice = bulk_model.ModelChoice(
        str(package_copy), huggingface_hub_cache=tmp_path / "hub", variant="fp32"
    )
    for isa_class, cap in ((IsaClass.X86_AVX2, 0.1), (IsaClass.X86_AMX, 0.25)):
        # The class given to the cap alone (not by patching this_cpu, whose readers cache what
        # they derive from it, e.g. providers.openvino_bf16).
        cpu = CpuInfo("x86_64", "a CPU", frozenset(), isa_class, 2)
        monkeypatch.setattr(
            bulk_model,
            "max_padding_ratio",
            lambda provider, cpu=cpu: providers.max_padding_ratio(provider, cpu),
        )
        loaded = bulk_model.load(choice, 64)
        assert loaded.model.provider is Provider.CPU
        assert loaded.config.max_padding_ratio == cap
