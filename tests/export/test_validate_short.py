"""Issue 9: the validation set holds one-to-three-token queries, and a variant faithful on prose
but not on them is refused, at export (compare) and by the runtime's re-validation alike.
Synthetic vectors with known cosines; MiniLM's real tokenizer counts the tokens."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

import numpy as np
from tokenizers import Tokenizer

from tei_ort.export.validate import SHORT_QUERIES, compare, n_queries, validation_set
from tei_ort.fidelity import FloatArray, ValidationSet
from tei_ort.package import Task, VariantName
from tei_ort.runtime import Model
from tei_ort.runtime.fidelity_check import FidelitySet, validate_here
from tests.export import tiny_models

DIMS = 32
SHORT_COSINE = 0.99  # under int8's 0.995 bar; prose rows stay at ~0.9999


def test_the_validation_set_holds_one_to_three_token_queries() -> None:
    vset = validation_set()
    assert set(SHORT_QUERIES) <= set(vset.queries)  # queries: overlap@10 searches with them
    assert n_queries(Task.EMBEDDING, vset) == len(vset.queries) == 64 + len(SHORT_QUERIES)
    # The re-ranker pairs still start from prose questions.
    assert not set(vset.queries[: vset.rerank_queries]) & set(SHORT_QUERIES)
    tokenizer = Tokenizer.from_file(str(tiny_models.MINILM / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128
    lengths = {q: len(tokenizer.encode(q).ids) - 2 for q in SHORT_QUERIES}  # less [CLS], [SEP]
    assert len(SHORT_QUERIES) >= 16
    assert all(1 <= n <= 3 for n in lengths.values()), lengths
    assert sum(n == 1 for n in lengths.values()) >= 8, lengths
    # The prose queries alone were never this short: what the set lacked before.
    assert min(len(tokenizer.encode(q).ids) - 2 for q in vset.queries[:64]) > 3


def _embedding(text: str) -> FloatArray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIMS)
    return np.asarray(v / np.linalg.norm(v), dtype=np.float32)


def _unfaithful_on_short(reference: FloatArray, texts: list[str]) -> FloatArray:
    """Rows at cosine ~0.99999 to the reference, except the short queries' at SHORT_COSINE."""
    rng = np.random.default_rng(1)
    out = reference.copy()
    for row, text in enumerate(texts):
        noise = rng.standard_normal(DIMS)
        noise -= (noise @ reference[row]) * reference[row]  # orthogonal to the reference row
        noise /= np.linalg.norm(noise)
        cosine = SHORT_COSINE if text in SHORT_QUERIES else 0.99999
        out[row] = cosine * reference[row] + np.sqrt(1 - cosine**2) * noise
    return out


def test_a_variant_that_fails_only_on_short_queries_is_refused_at_export() -> None:
    vset = validation_set()
    texts = vset.texts
    reference = np.stack([_embedding(t) for t in texts])  # (n, DIMS)
    output = _unfaithful_on_short(reference, texts)
    verdict = compare(Task.EMBEDDING, VariantName.INT8, reference, output, len(vset.queries))
    assert not verdict.passed
    assert verdict.cosine_min is not None and abs(verdict.cosine_min - SHORT_COSINE) < 1e-5
    assert verdict.note.startswith(f"FAILED cosine min {SHORT_COSINE:.6f} < 0.995")
    # The same outputs on the prose alone (the set before issue 9) pass: the short rows decide.
    prose = [i for i, t in enumerate(texts) if t not in SHORT_QUERIES]
    queries = sum(1 for t in vset.queries if t not in SHORT_QUERIES)
    old = compare(Task.EMBEDDING, VariantName.INT8, reference[prose], output[prose], queries)
    assert old.passed and old.cosine_min is not None and old.cosine_min > 0.9999


@dataclass(frozen=True)
class _Named:
    name: str = "int8"
    value: str = "cpu"


class _ShortBlindModel:
    """What validate_here reads of a Model: an int8 "variant" faithful except on short texts."""

    task = Task.EMBEDDING
    variant = _Named()
    provider = _Named()

    def embed(self, texts: list[str]) -> FloatArray:
        reference = np.stack([_embedding(t) for t in texts])
        return _unfaithful_on_short(reference, texts)


def test_the_runtime_recheck_refuses_it_too() -> None:
    vset = validation_set()
    reference = np.stack([_embedding(t) for t in vset.texts])
    fidelity_set = FidelitySet(vset, reference)
    verdict = validate_here(
        cast(Model, _ShortBlindModel()), fidelity_set, isa_class="x86-avx2", engine="test"
    )
    assert not verdict.passed and verdict.isa_class == "x86-avx2"
    assert verdict.cosine_min is not None and abs(verdict.cosine_min - SHORT_COSINE) < 1e-5
    prose_only = ValidationSet(
        tuple(q for q in vset.queries if q not in SHORT_QUERIES), vset.passages
    )
    reference = np.stack([_embedding(t) for t in prose_only.texts])
    assert validate_here(
        cast(Model, _ShortBlindModel()),
        FidelitySet(prose_only, reference),
        isa_class="x86-avx2",
        engine="test",
    ).passed
