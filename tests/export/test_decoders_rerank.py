"""Qwen3-Reranker (an LLM re-ranker: tei_ort/pair_template.py, export/architectures/llm_rerank.py)
on a tiny random-weight checkpoint in its layout (tests/export/tiny_decoders.build_reranker).

The reference is the model card's code, written out here from the card (not imported from
tei_ort): transformers' Qwen3ForCausalLM, left padding, prefix + tokenizer(formatted pair,
truncated) + suffix ids, softmax over the last position's [no, yes] logits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import Task, VariantName
from tei_ort.pair_template import QWEN3_RERANKER, encode_pairs
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import openvino_bf16
from tei_ort.serve.cli import build
from tei_ort.serve.settings import load_settings
from tei_ort.tokenization import Tokenizer, TruncationDirection
from tests.export import family_checks, tiny_decoders
from tests.export.cpu_classes import EXACT_INT8_CLASSES
from tests.serve import live

QUERY = "What is the capital of China?"
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "x",
    "The import system " * 30,
    "",
]
OPTIONS = ExportOptions(
    variants=(VariantName.FP32, VariantName.FP16, VariantName.INT8, VariantName.BF16),
    validation_queries=8,
    validation_passages=24,
)
# The card's text, verbatim.
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
LIMIT = 200
TASK = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass(frozen=True)
class Reranker:
    source: Path
    package: Path


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    root = tmp_path_factory.mktemp("qwen3-reranker")
    tokenizer = tiny_decoders.build_tokenizer(root / "tokenizer", append_eos=False)
    source = tiny_decoders.build_reranker(tokenizer, root / "source")
    return Reranker(source, export_model(str(source), root / "package", OPTIONS).path)


def card_inputs(source: Path, pairs: list[tuple[str, str]], max_length: int):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), padding_side="left")
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    texts = [f"<Instruct>: {TASK}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    inputs = tokenizer(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    return tokenizer, tokenizer.pad(
        inputs, padding=True, return_tensors="pt", max_length=max_length
    )


def card_scores(source: Path, query: str, docs: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, inputs = card_inputs(source, [(query, d) for d in docs], 8192)
    model = AutoModelForCausalLM.from_pretrained(str(source)).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    batch_scores = torch.stack([false_vector, true_vector], dim=1)
    batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
    return batch_scores[:, 1].exp().numpy()  # type: ignore[no-any-return]


def test_detected_exported_and_validated(reranker: Reranker) -> None:
    from tei_ort.package import read_manifest

    manifest = read_manifest(reranker.package)
    assert manifest.task is Task.RERANKER and manifest.id2label == {0: "yes"}
    assert manifest.pair_template == QWEN3_RERANKER
    # The card's max_length, not the config's 32,768 positions.
    assert manifest.max_input_length == QWEN3_RERANKER.max_length == 8192
    assert {v.name for v in manifest.variants} == set(OPTIONS.variants)
    validations = family_checks.validations(manifest)
    # bf16 validated only where OpenVINO runs it natively (AMX, AVX512_BF16); listed elsewhere.
    with_bf16 = openvino_bf16()
    assert set(validations) == set(OPTIONS.variants) - (set() if with_bf16 else {VariantName.BF16})
    # int8's bar is held where its u8s8 GEMMs add in int32 (VNNI, AMX); on AVX2 / AVX-512 without
    # VNNI they saturate int16 pair sums, and int8 is then validated but may fail (not served).
    exact_int8 = this_cpu().isa_class in EXACT_INT8_CLASSES
    for name, validation in validations.items():
        assert validation is not None, name
        if name is not VariantName.INT8 or exact_int8:
            assert validation.passed, (name, this_cpu().describe(), validation)
    fp32 = validations[VariantName.FP32]
    assert fp32 is not None and fp32.max_abs_diff is not None and fp32.max_abs_diff < 1e-4


def test_scores_equal_the_model_card(reranker: Reranker) -> None:
    model = Model.load(reranker.package, RuntimeOptions(provider="cpu", variant="fp32"))
    got = model.rerank(QUERY, DOCS)
    want = card_scores(reranker.source, QUERY, DOCS)
    assert got.shape == (len(DOCS),)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.ptp(want) > 1e-3  # the random model tells the documents apart


def test_batch_invariance(reranker: Reranker) -> None:
    model = Model.load(reranker.package, RuntimeOptions(provider="cpu", variant="fp32"))
    batch = model.rerank(QUERY, DOCS, raw_scores=True)
    for index, doc in enumerate(DOCS):
        alone = model.rerank(QUERY, [doc], raw_scores=True)[0]
        np.testing.assert_allclose(alone, batch[index], atol=1e-5, rtol=0)


@pytest.mark.parametrize("direction", list(TruncationDirection))
def test_template_ids_equal_the_card_and_truncate_the_body(
    reranker: Reranker, direction: TruncationDirection
) -> None:
    """At a 200-token limit (the tiny vocabulary makes the template 101 tokens) a long document
    is cut inside the body; the template stays whole.
    Right truncation equals the card's (its tokenizer truncates on the right)."""
    tokenizer = Tokenizer.from_file(reranker.package / "tokenizer.json", LIMIT)
    pairs = [(QUERY, d) for d in DOCS]
    got = encode_pairs(tokenizer, QWEN3_RERANKER, pairs, truncate=True, direction=direction)
    hf, _ = card_inputs(reranker.source, pairs, LIMIT)
    prefix = hf.encode(PREFIX, add_special_tokens=False)
    suffix = hf.encode(SUFFIX, add_special_tokens=False)
    assert max(len(e) for e in got) == LIMIT
    for encoded in got:
        ids = encoded.ids.tolist()
        assert ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix
    if direction is TruncationDirection.RIGHT:
        _, card = card_inputs(reranker.source, pairs, LIMIT)
        for row, encoded in enumerate(got):
            mask = card["attention_mask"][row].bool()
            assert encoded.ids.tolist() == card["input_ids"][row][mask].tolist()


def test_too_long_without_truncation_is_a_validation_error(reranker: Reranker) -> None:
    from tei_ort.errors import ValidationError

    tokenizer = Tokenizer.from_file(reranker.package / "tokenizer.json", LIMIT)
    with pytest.raises(ValidationError, match="must have less than 200 tokens"):
        encode_pairs(
            tokenizer,
            QWEN3_RERANKER,
            [(QUERY, DOCS[3])],
            truncate=False,
            direction=TruncationDirection.RIGHT,
        )


@pytest.fixture(scope="module")
def served(reranker: Reranker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    args = ["--model-id", str(reranker.package), "--provider", "cpu", "--variant", "fp32"]
    args += [
        "--prometheus-port",
        "0",
        "--huggingface-hub-cache",
        str(tmp_path_factory.mktemp("hub")),
    ]
    with (
        live.serve_app(build(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def test_served_on_tei_cohere_and_jina_routes(reranker: Reranker, served: httpx.Client) -> None:
    want = card_scores(reranker.source, QUERY, DOCS)
    tei = served.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert tei.status_code == 200, tei.text
    assert {r["index"]: r["score"] for r in tei.json()} == {
        i: pytest.approx(float(s), abs=1e-5) for i, s in enumerate(want)
    }
    assert [r["index"] for r in tei.json()] == list(np.argsort(-want))
    jina = served.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    cohere = served.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
    for answer in (jina, cohere):
        assert answer.status_code == 200, answer.text
        scores = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        assert scores == {i: pytest.approx(float(s), abs=1e-5) for i, s in enumerate(want)}
