"""Which variant a package is served with on this machine: re-validated where its figures come
from another CPU class, refused (with a fallback) when it misses the bar here, the fastest of the
rest by a timed trial, and all of it cached. Real graphs (the tiny hand-built package), a real
fidelity set; the "other class" is a recorded class that is not this machine's."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tei_ort.errors import PackageError
from tei_ort.fidelity import ValidationSet
from tei_ort.package import Validation, Variant, VariantName, read_manifest, write_manifest
from tei_ort.runtime import Model, RuntimeOptions, checks, fidelity_check, trial
from tei_ort.runtime.checks import CHECKS_FILE
from tei_ort.runtime.cpu import this_cpu

ELSEWHERE = "x86-elsewhere"  # a class no machine has: every figure recorded there is re-checked
QUERIES = ("what is a list", "how do I sort", "the for loop", "exceptions", "open a file")
PASSAGES = tuple(
    f"{topic} is described in section {i} of the tutorial with examples."
    for i, topic in enumerate(
        ["lists", "sorting", "loops", "errors", "files", "classes", "modules", "strings"] * 3
    )
)


def _validation(isa_class: str, passed: bool = True) -> Validation:
    return Validation(passed=passed, texts=29, note="", isa_class=isa_class, provider="cpu")


def _with_fidelity_set(folder: Path) -> Path:
    """The fp32 graph's own outputs as the reference (the tiny graph has no PyTorch twin)."""
    vset = ValidationSet(QUERIES, PASSAGES)
    model = Model.load(folder, RuntimeOptions(provider="cpu", allow_unvalidated=True))
    fidelity_check.write_fidelity_set(folder, vset, model.embed(list(vset.texts)))
    return folder


def _add_int8(folder: Path, *, faithful: bool, isa_class: str = ELSEWHERE) -> Path:
    """An "int8" variant: the fp32 graph itself (faithful) or one with other weights."""
    graph = onnx.load(str(folder / "model.onnx"))
    if not faithful:
        table = numpy_helper.to_array(graph.graph.initializer[0])
        shuffled = np.random.default_rng(7).permutation(table)  # (vocab, hidden)
        graph.graph.initializer[0].CopyFrom(numpy_helper.from_array(shuffled, "table"))
    onnx.save(graph, str(folder / "model.int8.onnx"))
    manifest = read_manifest(folder)
    int8 = Variant(VariantName.INT8, "model.int8.onnx", ("cpu",), validation=_validation(isa_class))
    write_manifest(folder, replace(manifest, variants=(*manifest.variants, int8)))
    return folder


def _record_fp32_on(folder: Path, isa_class: str) -> None:
    manifest = read_manifest(folder)
    fp32 = replace(manifest.variants[0], validation=_validation(isa_class))
    write_manifest(folder, replace(manifest, variants=(fp32, *manifest.variants[1:])))


@pytest.fixture
def package(make_package: Callable[..., Path]) -> Path:
    folder = _with_fidelity_set(make_package())
    _record_fp32_on(folder, this_cpu().isa_class.value)  # fp32: measured on this class
    return folder


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Labels of the variants re-validated, in order."""
    calls: list[str] = []
    real = fidelity_check.validate_here

    def spy(model: Model, fidelity_set: fidelity_check.FidelitySet, **kw: str) -> Validation:
        calls.append(f"{model.provider.value}:{model.variant.name.value}")
        return real(model, fidelity_set, **kw)

    monkeypatch.setattr(fidelity_check, "validate_here", spy)
    return calls


def _cpu_only() -> RuntimeOptions:
    return RuntimeOptions(provider="cpu", intra_op_threads=1)


def test_a_variant_from_another_class_is_revalidated_here_and_served(
    package: Path, counted: list[str]
) -> None:
    _add_int8(package, faithful=True)
    model = Model.load(package, replace(_cpu_only(), variant="int8"))
    assert model.variant.name is VariantName.INT8
    assert counted == ["cpu:int8"]  # fp32 was measured on this class: not re-checked
    assert "cpu:int8: passed re-validation here (cosine min 1.00000" in model.selection_note
    cached = json.loads((package / CHECKS_FILE).read_text())
    (entry,) = cached["machines"].values()
    verdict = entry["verdicts"]["cpu:int8"]
    assert verdict["checked_here"] is True
    assert verdict["validation"]["passed"] is True
    assert verdict["validation"]["isa_class"] == this_cpu().isa_class.value
    assert verdict["validation"]["texts"] == len(QUERIES) + len(PASSAGES)


def test_a_variant_never_validated_is_validated_here_before_it_is_served(
    package: Path, counted: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A variant listed without figures (bf16 exported where it could not run) is validated on
    the first CPU that serves it, as one measured on another class is."""
    _add_int8(package, faithful=True)
    manifest = read_manifest(package)
    unvalidated = tuple(
        replace(v, validation=None) if v.file == "model.int8.onnx" else v for v in manifest.variants
    )
    write_manifest(package, replace(manifest, variants=unvalidated))
    with caplog.at_level("INFO", logger="tei_ort.runtime.selection"):
        model = Model.load(package, replace(_cpu_only(), variant="int8"))
    assert model.variant.name is VariantName.INT8 and counted == ["cpu:int8"]
    assert "cpu:int8: passed re-validation here (cosine min 1.00000" in model.selection_note
    assert "(it was measured on no CPU: never validated)" in caplog.text


def test_a_variant_that_fails_here_is_not_served_and_auto_falls_back(
    package: Path, counted: list[str]
) -> None:
    _add_int8(package, faithful=False)  # passed "elsewhere", wrong here
    model = Model.load(package, _cpu_only())
    assert model.variant.name is VariantName.FP32
    assert counted == ["cpu:int8"]
    assert model.selection_note.startswith("cpu:fp32 on ")
    assert (
        "cpu:int8: not served, failed re-validation here (FAILED cosine min" in model.selection_note
    )
    # Asked for by name, it is refused with the figures measured here.
    with pytest.raises(PackageError, match=r"variant 'int8' did not pass validation on this CPU"):
        Model.load(package, replace(_cpu_only(), variant="int8"))


def test_checks_are_cached_per_machine_and_redone_after_a_reexport(
    package: Path, counted: list[str]
) -> None:
    _add_int8(package, faithful=False)
    Model.load(package, _cpu_only())
    Model.load(package, _cpu_only())
    assert counted == ["cpu:int8"]  # the second start read checks.json
    # A new manifest (a re-export) invalidates what was measured on the old graphs.
    manifest = read_manifest(package)
    write_manifest(package, replace(manifest, tool_version="other"))
    Model.load(package, _cpu_only())
    assert counted == ["cpu:int8", "cpu:int8"]


def test_a_read_only_package_caches_in_checks_dir(
    package: Path, counted: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_int8(package, faithful=True)
    real_save = checks.ChecksCache.save

    def no_package_writes(cache: checks.ChecksCache) -> None:
        cache._paths = [p for p in cache._paths if p.parent != package]  # as if read-only
        real_save(cache)

    monkeypatch.setattr(checks.ChecksCache, "save", no_package_writes)
    options = replace(_cpu_only(), checks_dir=tmp_path / "checks")
    Model.load(package, options)
    assert not (package / CHECKS_FILE).exists()
    assert len(list((tmp_path / "checks").glob("*.json"))) == 1
    Model.load(package, options)
    assert counted == ["cpu:int8"]


def test_auto_serves_the_fastest_validated_variant_by_trial(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_int8(package, faithful=True, isa_class=this_cpu().isa_class.value)
    real_forward = Model.forward

    def slow_fp32(self: Model, encodings: list[object]) -> np.ndarray:
        if self.variant.name is VariantName.FP32:
            time.sleep(0.02)  # far beyond the tiny graph's own time
        return real_forward(self, encodings)  # type: ignore[arg-type]

    monkeypatch.setattr(Model, "forward", slow_fp32)
    model = Model.load(package, _cpu_only())
    assert model.variant.name is VariantName.INT8
    speeds = {v.label: v.tokens_per_s for v in selection_verdicts(package)}
    assert speeds["cpu:int8"] is not None and speeds["cpu:fp32"] is not None
    assert speeds["cpu:int8"] > speeds["cpu:fp32"]
    # The trial's figures are cached: a later start with fp32 fast again keeps int8.
    monkeypatch.setattr(Model, "forward", real_forward)
    assert Model.load(package, _cpu_only()).variant.name is VariantName.INT8


def test_a_close_call_between_variants_is_timed_again_before_it_is_decided(
    package: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A first reading with fp32 5% ahead would serve fp32 for good; on a noisy host that is
    often the host, not the variant. The second run puts int8 far ahead: its seconds summed over
    both runs win, and the summed figures are what is cached."""
    _add_int8(package, faithful=True, isa_class=this_cpu().isa_class.value)
    readings = iter(
        [{"cpu:int8": 100.0, "cpu:fp32": 105.0}, {"cpu:int8": 200.0, "cpu:fp32": 100.0}]
    )
    runs: list[int] = []

    def fastest(plans: dict[str, object]) -> dict[str, float]:
        runs.append(len(plans))
        return next(readings)

    monkeypatch.setattr(trial, "fastest", fastest)
    with caplog.at_level("INFO", logger="tei_ort"):
        model = Model.load(package, _cpu_only())
    assert runs == [2, 2]
    assert model.variant.name is VariantName.INT8
    speeds = {v.label: v.tokens_per_s for v in selection_verdicts(package)}
    # Each over both runs: 2 / (1/100 + 1/200) and 2 / (1/105 + 1/100).
    assert speeds == {"cpu:int8": 133.3, "cpu:fp32": 102.4}
    assert "variants: a close call (cpu:int8: 100 tok/s, cpu:fp32: 105 tok/s)" in caplog.text
    assert "trial of 2 candidates in" in caplog.text and "(2 runs)" in caplog.text


def selection_verdicts(package: Path) -> list[checks.Verdict]:
    data = json.loads((package / CHECKS_FILE).read_text())
    (entry,) = data["machines"].values()
    cache = checks.ChecksCache.__new__(checks.ChecksCache)
    cache._verdicts = entry["verdicts"]
    return [v for label in entry["verdicts"] if (v := cache.get(label)) is not None]


def test_a_package_without_a_fidelity_set_keeps_its_recorded_figures(
    make_package: Callable[..., Path], counted: list[str]
) -> None:
    folder = make_package()
    _record_fp32_on(folder, ELSEWHERE)
    model = Model.load(folder, _cpu_only())
    assert model.variant.name is VariantName.FP32
    assert counted == []
    assert "the package has no fidelity set" in model.selection_note


def test_a_damaged_checks_file_is_ignored(package: Path, counted: list[str]) -> None:
    _add_int8(package, faithful=True)
    (package / CHECKS_FILE).write_text("{not json")
    assert Model.load(package, _cpu_only()).variant.name in (VariantName.INT8, VariantName.FP32)
    assert counted == ["cpu:int8"]
    assert json.loads((package / CHECKS_FILE).read_text())["version"] == checks.CHECKS_VERSION


def test_a_fidelity_set_is_read_without_pickle(package: Path) -> None:
    fidelity_set = fidelity_check.read_fidelity_set(package)
    assert fidelity_set is not None
    assert fidelity_set.vset.queries == QUERIES and fidelity_set.vset.passages == PASSAGES
    assert fidelity_set.reference.shape == (len(QUERIES) + len(PASSAGES), 8)
    # An object array (what a pickle would carry) is refused, not unpickled.
    np.savez(package / "fidelity.npz", queries=np.array([object()], dtype=object))
    with pytest.raises(PackageError, match="not a readable fidelity set"):
        fidelity_check.read_fidelity_set(package)


def test_copying_a_package_to_another_machine_class_rechecks_it(
    package: Path, tmp_path: Path, counted: list[str]
) -> None:
    """What an image build does: export on one CPU, serve on another. Simulated by recording
    every figure on another class, as the build machine would have."""
    _add_int8(package, faithful=True)
    _record_fp32_on(package, ELSEWHERE)
    copy = tmp_path / "copied"
    shutil.copytree(package, copy)
    model = Model.load(copy, _cpu_only())
    assert sorted(counted) == ["cpu:fp32", "cpu:int8"]
    assert model.variant.name in (VariantName.INT8, VariantName.FP32)


def test_the_batch_budget_is_the_fastest_by_trial_and_cached(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Model.load(package, _cpu_only())
    real_forward = Model.forward
    calls: list[int] = []

    def slow_big_batches(self: Model, encodings: list[object]) -> np.ndarray:
        calls.append(len(encodings))
        time.sleep(0.001 * len(encodings) ** 2)  # per token, big batches cost more here
        return real_forward(self, encodings)  # type: ignore[arg-type]

    monkeypatch.setattr(Model, "forward", slow_big_batches)
    chosen, note = trial.batch_tokens(model, _cpu_only())
    assert chosen == min(trial.BATCH_BUDGETS)
    assert note.startswith(f"{chosen} target batch tokens, by trial (512: ")
    assert calls  # it measured
    calls.clear()
    assert trial.batch_tokens(model, _cpu_only())[0] == chosen
    assert calls == []  # cached in checks.json


def test_without_a_fidelity_set_the_batch_budget_is_the_providers(
    make_package: Callable[..., Path],
) -> None:
    model = Model.load(make_package(), _cpu_only())
    chosen, note = trial.batch_tokens(model, _cpu_only())
    assert chosen == 2048 and "the provider's default" in note
