"""Sequence-classification heads on decoders (Qwen3/Qwen2/Mistral/Llama/Gemma3Text
ForSequenceClassification; tei_ort/export/architectures/decoder_score.py) on tiny random-weight
checkpoints saved by transformers itself (tests/export/tiny_decoder_seq_cls.py).

The reference is transformers' own *ForSequenceClassification loading the source folder: its
rule for the pooled token (the rightmost token that is not pad_token_id) is exercised, since the
tiny Qwen tokenizer appends <|endoftext|>, which is also the pad id of the Qwen and Gemma cases.
Families without a pad_token_id (Llama, Mistral here) cannot run batched in transformers, so
their reference runs one input at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.fidelity import THRESHOLDS, OutputKind
from tei_ort.package import Manifest, Task, VariantName, read_manifest
from tei_ort.runtime import Model, RuntimeOptions, providers
from tei_ort.serve.cli import build as build_app
from tei_ort.serve.settings import load_settings
from tests.export import family_checks, tiny_decoder_seq_cls, tiny_decoders
from tests.export.test_decoders_rerank import DOCS, PREFIX, QUERY, SUFFIX, TASK, card_scores
from tests.serve import live

TEXTS = [
    "What does the assert statement do?",
    "x",
    "The import system " * 12,
    "Übung macht den Meister, naïve café.",
    "",
]
PAD = 0  # <|endoftext|> in the tiny vocabulary (the first special token)


@dataclass(frozen=True)
class Case:
    family: str
    labels: tuple[str, ...]
    pad_token_id: int | None

    @property
    def task(self) -> Task:
        return Task.RERANKER if len(self.labels) == 1 else Task.CLASSIFICATION


CASES = {
    "qwen3": Case("qwen3", ("LABEL_0",), PAD),  # a re-ranker, every variant built
    "qwen2": Case("qwen2", ("negative", "neutral", "positive"), PAD),
    "mistral": Case("mistral", ("LABEL_0",), None),  # sliding window 8: exercised
    "llama": Case("llama", ("no", "yes"), None),
    "gemma3": Case("gemma3", ("ham", "spam"), PAD),  # bidirectional, sliding + full layers
}
FP32 = ExportOptions(variants=(VariantName.FP32,), validation_queries=8, validation_passages=24)
EVERY_VARIANT = ExportOptions(validation_queries=8, validation_passages=24)


@dataclass(frozen=True)
class Exported:
    source: Path
    package: Path

    @property
    def manifest(self) -> Manifest:
        return read_manifest(self.package)

    def model(self, variant: str = "fp32") -> Model:
        return Model.load(self.package, RuntimeOptions(provider="cpu", variant=variant))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    root = tmp_path_factory.mktemp("decoder-seq-cls")
    tokenizer = tiny_decoders.build_tokenizer(root / "tokenizer")  # appends <|endoftext|>
    done: dict[str, Exported] = {}

    def get(family: str) -> Exported:
        if family not in done:
            case = CASES[family]
            source = tiny_decoder_seq_cls.build(
                family,
                tokenizer,
                root / family,
                labels=case.labels,
                pad_token_id=case.pad_token_id,
            )
            options = EVERY_VARIANT if family == "qwen3" else FP32
            package = export_model(str(source), root / f"{family}-package", options).path
            done[family] = Exported(source, package)
        return done[family]

    return get


def inputs_for(case: Case) -> list[str | tuple[str, str]]:
    if case.task is Task.RERANKER:
        return [(QUERY, doc) for doc in DOCS]
    return list(TEXTS)


def hf_logits(
    source: Path, inputs: list[str | tuple[str, str]], padding_side: str | None = None
) -> np.ndarray:
    """(n, labels) from transformers' class: one input at a time, or, with `padding_side`, the
    whole list in one padded batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()

    def encode(items: list[str | tuple[str, str]], **kwargs: object) -> dict[str, torch.Tensor]:
        firsts = [i if isinstance(i, str) else i[0] for i in items]
        seconds = [i[1] for i in items if not isinstance(i, str)] or None
        return dict(tokenizer(firsts, seconds, return_tensors="pt", **kwargs))

    with torch.no_grad():
        if padding_side is not None:
            batch = encode(inputs, padding=True, padding_side=padding_side)
            return model(**batch).logits.numpy()  # type: ignore[no-any-return]
        rows = [model(**encode([item])).logits.numpy() for item in inputs]
    return np.concatenate(rows)


def runtime_logits(model: Model, case: Case) -> np.ndarray:
    if case.task is Task.RERANKER:
        return model.rerank(QUERY, DOCS, raw_scores=True)[:, None]
    return model.predict(TEXTS, raw_scores=True)


@pytest.mark.parametrize("family", list(CASES))
def test_detected_and_validated(exported: Callable[[str], Exported], family: str) -> None:
    case = CASES[family]
    manifest = exported(family).manifest
    assert manifest.task is case.task
    assert manifest.id2label == dict(enumerate(case.labels))
    assert manifest.output_name == "logits" and manifest.pair_template is None
    fp32 = manifest.variant(VariantName.FP32).validation
    assert fp32 is not None and fp32.passed and fp32.max_abs_diff is not None
    assert fp32.max_abs_diff < 1e-4


@pytest.mark.parametrize("family", list(CASES))
def test_runtime_equals_transformers(exported: Callable[[str], Exported], family: str) -> None:
    case, subject = CASES[family], exported(family)
    model = subject.model()
    want = hf_logits(subject.source, inputs_for(case))
    got = runtime_logits(model, case)
    assert got.shape == want.shape == (len(inputs_for(case)), len(case.labels))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.ptp(want[:, 0]) > 1e-2  # the random model tells the inputs apart
    if case.task is Task.RERANKER:  # TEI's score: sigmoid of the one logit
        np.testing.assert_allclose(
            model.rerank(QUERY, DOCS), 1 / (1 + np.exp(-want[:, 0])), atol=1e-5, rtol=0
        )
    else:  # softmax over id2label
        exp = np.exp(want - want.max(1, keepdims=True))
        np.testing.assert_allclose(
            model.predict(TEXTS), exp / exp.sum(1, keepdims=True), atol=1e-5, rtol=0
        )


def test_pad_id_inside_the_text_is_skipped_as_transformers_does(
    exported: Callable[[str], Exported],
) -> None:
    """The tokenizer appends <|endoftext|>, the pad id of qwen2's config: transformers then pools
    the token before it, and so does the graph; pooling the last attended token (the EOS) would
    give other logits."""
    subject = exported("qwen2")
    model = subject.model()
    (encoded,) = model.encode(["What does the assert statement do?"])
    assert int(encoded.ids[-1]) == PAD and int(encoded.ids[-2]) != PAD
    got = model.predict(["What does the assert statement do?"], raw_scores=True)
    ids = torch.as_tensor(encoded.ids[None, :-1])  # the same text without the EOS
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(subject.source)).eval()
    with torch.no_grad():
        without_eos = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    np.testing.assert_allclose(got, without_eos, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "gemma3"])
def test_left_and_right_padding_agree_in_transformers(
    exported: Callable[[str], Exported], family: str
) -> None:
    """Batched left- and right-padded transformers runs equal the unpadded one: the package
    (right padding, positions from 0) stands for the model's own left padding. Not for "", whose
    one token is the pad id: transformers then pools position 0, a padding token when padded on
    the left (the package pools that EOS, as transformers does on the input alone)."""
    case, source = CASES[family], exported(family).source
    items = [item for item in inputs_for(case) if item != ""]
    alone = hf_logits(source, items)
    for side in ("left", "right"):
        np.testing.assert_allclose(hf_logits(source, items, side), alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", list(CASES))
def test_our_module_left_padded_equals_right_padded(
    exported: Callable[[str], Exported], family: str
) -> None:
    """The exported torch module itself on left-padded input (the last position is the pooled
    token, real tokens start at a later position) equals its right-padded run."""
    from transformers import AutoTokenizer

    from tei_ort.export import recipes
    from tei_ort.export.architectures import own

    case, source = CASES[family], exported(family).source
    recipe = recipes.for_task(
        f"{tiny_decoder_seq_cls.CLASS_PREFIXES[family]}ForSequenceClassification", case.task
    )
    module = own.load(source, recipe)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    items = inputs_for(case)
    firsts = [i if isinstance(i, str) else i[0] for i in items]
    seconds = [i[1] for i in items if not isinstance(i, str)] or None
    out = {}
    for side in ("left", "right"):
        batch = tokenizer(firsts, seconds, padding=True, padding_side=side, return_tensors="pt")
        with torch.no_grad():
            out[side] = module(batch["input_ids"], batch["attention_mask"]).numpy()
    np.testing.assert_allclose(out["left"], out["right"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["right"], hf_logits(source, items), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", list(CASES))
def test_batch_invariance(exported: Callable[[str], Exported], family: str) -> None:
    case = CASES[family]
    model = exported(family).model()
    batch = runtime_logits(model, case)
    for index, item in enumerate(inputs_for(case)):
        if isinstance(item, tuple):
            alone = model.rerank(item[0], [item[1]], raw_scores=True)[:, None]
        else:
            alone = model.predict([item], raw_scores=True)
        np.testing.assert_allclose(alone[0], batch[index], atol=1e-5, rtol=0)


def test_every_variant_against_transformers(exported: Callable[[str], Exported]) -> None:
    """Every variant the pipeline builds for a decoder re-ranker, each served one against
    transformers at the project's logit bars (tei_ort/fidelity.py: max abs diff scaled by the
    largest reference logit). bf16 is validated only on a CPU with native bfloat16 and the
    openvino package (providers.openvino_bf16()); elsewhere it is listed unvalidated, for the
    serving CPU to validate, so it is expected to pass, and checked, only there."""
    case, subject = CASES["qwen3"], exported("qwen3")
    manifest = subject.manifest
    assert {v.name for v in manifest.variants} == set(EVERY_VARIANT.variants)
    built = family_checks.validations(manifest)
    with_bf16 = providers.openvino_bf16()
    expected = {VariantName.FP32, VariantName.FP16, VariantName.INT8_WO}
    expected |= {VariantName.BF16} if with_bf16 else set()
    assert set(built) == set(EVERY_VARIANT.variants) - (set() if with_bf16 else {VariantName.BF16})
    passed = {name for name, v in built.items() if v is not None and v.passed}
    assert passed >= expected
    want = hf_logits(subject.source, inputs_for(case))
    scale = max(1.0, float(np.abs(want).max()))
    for name in passed:
        bar = THRESHOLDS[(OutputKind.LOGITS, name)].max_abs_diff
        assert bar is not None
        got = runtime_logits(subject.model(name.value), case)
        assert float(np.abs(got - want).max()) <= bar * scale, name


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Qwen3-Reranker (its causal LM layout) converted to one score logit, exported."""
    root = tmp_path_factory.mktemp("qwen3-reranker-seq-cls")
    tokenizer = tiny_decoders.build_tokenizer(root / "tokenizer", append_eos=False)
    causal = tiny_decoders.build_reranker(tokenizer, root / "causal")
    source = tiny_decoder_seq_cls.convert_reranker(causal, root / "seq-cls")
    return Exported(source, export_model(str(source), root / "package", FP32).path)


@contextmanager
def serving(package: Path, hub_cache: Path) -> Iterator[httpx.Client]:
    args = ["--model-id", str(package), "--provider", "cpu", "--variant", "fp32"]
    args += ["--prometheus-port", "0", "--huggingface-hub-cache", str(hub_cache)]
    # The config's 32,768 positions would be the warm-up's input length (a 16,384-token forward
    # at the default batch tokens); 1,024 keeps the start-up small.
    args += ["--max-batch-tokens", "1024"]
    with (
        live.serve_app(build_app(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def served(converted: Exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with serving(converted.package, tmp_path_factory.mktemp("hub")) as client:
        yield client


def test_classifier_served_on_predict_with_its_labels(
    exported: Callable[[str], Exported], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A three-label Qwen2 classifier on /predict: every label of id2label with its softmax
    probability, highest first; raw_scores gives transformers' logits."""
    subject = exported("qwen2")
    logits = hf_logits(subject.source, [TEXTS[0]])[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    with serving(subject.package, tmp_path_factory.mktemp("hub")) as client:
        answer = client.post("/predict", json={"inputs": TEXTS[0]})
        raw = client.post("/predict", json={"inputs": TEXTS[0], "raw_scores": True})
    assert answer.status_code == 200, answer.text
    labels = CASES["qwen2"].labels
    order = np.argsort(-probabilities)
    assert [r["label"] for r in answer.json()] == [labels[i] for i in order]
    assert {r["label"]: r["score"] for r in answer.json()} == {
        labels[i]: pytest.approx(float(p), abs=1e-5) for i, p in enumerate(probabilities)
    }
    assert {r["label"]: r["score"] for r in raw.json()} == {
        labels[i]: pytest.approx(float(x), abs=1e-4) for i, x in enumerate(logits)
    }


def test_converted_reranker_served_with_the_callers_template(
    converted: Exported, served: httpx.Client
) -> None:
    """As TEI, the pair is the tokenizer's (query, text) and nothing is added: the caller lays
    the card's prefix and instruction into the query and the suffix into each document (the
    seq-cls card's format_queries / format_document). The served score, sigmoid(yes - no),
    then equals the original LLM re-ranker card's softmax([no, yes])[yes] on the same pair."""
    query = f"{PREFIX}<Instruct>: {TASK}\n<Query>: {QUERY}\n"
    documents = [f"<Document>: {doc}{SUFFIX}" for doc in DOCS]
    want = card_scores(converted.source.parent / "causal", QUERY, DOCS)
    logits = hf_logits(converted.source, [(query, d) for d in documents])[:, 0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), want, atol=1e-5, rtol=0)
    tei = served.post("/rerank", json={"query": query, "texts": documents})
    assert tei.status_code == 200, tei.text
    assert {r["index"]: r["score"] for r in tei.json()} == {
        i: pytest.approx(float(s), abs=1e-5) for i, s in enumerate(want)
    }
    assert [r["index"] for r in tei.json()] == list(np.argsort(-want))
    raw = served.post("/rerank", json={"query": query, "texts": documents, "raw_scores": True})
    assert {r["index"]: r["score"] for r in raw.json()} == {
        i: pytest.approx(float(s), abs=1e-4) for i, s in enumerate(logits)
    }
    for route, field in (("/v1/rerank", "documents"), ("/v2/rerank", "documents")):
        answer = served.post(route, json={"query": query, field: documents})
        assert answer.status_code == 200, answer.text
        scores = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        assert scores == {i: pytest.approx(float(s), abs=1e-5) for i, s in enumerate(want)}
    assert np.ptp(want) > 1e-3
