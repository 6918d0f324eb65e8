"""BGE-M3's three outputs from one package: the dense vector (CLS, normalized) on `embed`, the
sparse weights of sparse_linear.pt on `embed_sparse`, the ColBERT multi-vectors of
colbert_linear.pt on `embed_all` (Model.forward_tokens), each against a reference computed here
in torch from the same weights with FlagEmbedding's rules (BGEM3: relu(sparse_linear(h)) per
token, the largest per token id, cls / eos / pad / unk dropped; colbert_linear(h[:, 1:]) masked
and L2-normalized)."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tei_ort.engine import EmbedRequest
from tei_ort.errors import PackageError
from tei_ort.export.pipeline import ExportResult, export_model
from tei_ort.export.runners import Subject
from tei_ort.export.validate import validation_set
from tei_ort.fidelity import THRESHOLDS, OutputKind
from tei_ort.package import TokenHeads, VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.fidelity_check import read_fidelity_set, validate_here, write_fidelity_set
from tests.engine.conftest import asynchronous, running
from tests.export import family_checks, tiny_bge_m3
from tests.export.conftest import TINY_OPTIONS

TEXTS = ["What is BGE M3?", "A A A b B", "x", "Übung macht den Meister, naïve café. " * 30]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tokenizer_dirs: dict[str, Path]) -> Path:
    return tiny_bge_m3.build(tokenizer_dirs["unigram"], tmp_path_factory.mktemp("m3") / "bge-m3")


@contextlib.contextmanager
def counting_encoders() -> Iterator[list[str]]:
    """Every XLM-RoBERTa encoder constructed meanwhile (from_pretrained builds one through
    __init__; so does each model class that wraps one), by class name."""
    from transformers import XLMRobertaModel

    built: list[str] = []
    original = XLMRobertaModel.__init__

    def init(self: XLMRobertaModel, *args: object, **kwargs: object) -> None:
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(XLMRobertaModel, "__init__", init)
        yield built


@pytest.fixture(scope="module")
def export_encoders() -> dict[str, list[str]]:
    """The encoders the `package` fixture's export constructed: in all, and while it computed
    the references (m3_reference.references)."""
    return {"export": [], "references": []}


@pytest.fixture(scope="module")
def package(
    source: Path,
    tmp_path_factory: pytest.TempPathFactory,
    export_encoders: dict[str, list[str]],
) -> ExportResult:
    from tei_ort.export import m3_reference

    real = m3_reference.references

    def references(*args: Any, **kwargs: Any) -> Any:
        before = len(built)
        result = real(*args, **kwargs)
        export_encoders["references"].extend(built[before:])
        return result

    with counting_encoders() as built, pytest.MonkeyPatch.context() as patch:
        patch.setattr(m3_reference, "references", references)
        result = export_model(str(source), tmp_path_factory.mktemp("m3-pkg") / "pkg", TINY_OPTIONS)
    export_encoders["export"].extend(built)
    return result


@pytest.fixture(scope="module")
def model(package: ExportResult) -> Model:
    return Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))


def reference(source: Path, texts: list[str]) -> dict[str, list[np.ndarray]]:
    """FlagEmbedding's BGEM3 outputs, worked in torch on transformers' XLM-RoBERTa."""
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    encoder = XLMRobertaModel.from_pretrained(str(source), add_pooling_layer=False).eval()
    heads = {
        name: torch.load(source / f"{name}_linear.pt", weights_only=True)
        for name in ("sparse", "colbert")
    }
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**encoded).last_hidden_state  # (batch, seq, hidden)
    mask = encoded["attention_mask"]
    dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
    token_weights = torch.relu(hidden @ heads["sparse"]["weight"].T + heads["sparse"]["bias"])
    colbert = hidden[:, 1:] @ heads["colbert"]["weight"].T + heads["colbert"]["bias"]
    colbert = torch.nn.functional.normalize(colbert * mask[:, 1:, None], dim=-1)
    unused = {
        tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[t])
        for t in ("cls_token", "eos_token", "pad_token", "unk_token")
    }
    sparse, multi = [], []
    for row, ids in enumerate(encoded["input_ids"].tolist()):
        vector = np.zeros(len(tokenizer), dtype=np.float32)
        for weight, token in zip(token_weights[row, :, 0].tolist(), ids, strict=True):
            if token not in unused and weight > vector[token]:
                vector[token] = weight
        sparse.append(vector)
        multi.append(colbert[row, : int(mask[row].sum()) - 1].numpy())
    return {"dense": list(dense.numpy()), "sparse": sparse, "colbert": multi}


@pytest.fixture(scope="module")
def want(source: Path) -> dict[str, list[np.ndarray]]:
    """This file's reference on TEXTS, computed once for the tests that compare with it."""
    return reference(source, TEXTS)


def test_manifest_names_the_heads(package: ExportResult) -> None:
    heads = package.manifest.token_heads
    assert heads == TokenHeads(
        sparse="sparse_linear.npz",
        colbert="colbert_linear.npz",
        unused_token_ids=(0, 1, 2, 3),  # <s>, <pad>, </s>, <unk>
        vocab_size=heads.vocab_size if heads else -1,
    )
    assert heads is not None and heads.vocab_size == 600
    assert {"sparse_linear.npz", "colbert_linear.npz"} <= set(package.manifest.files)
    fp32 = package.manifest.variant(VariantName.FP32).validation
    assert fp32 is not None and fp32.passed


def test_info_names_its_three_outputs(package: ExportResult) -> None:
    from tei_ort.serve.routes.health import model_type, outputs

    assert model_type(package.manifest) == {"embedding": {"pooling": "cls"}}  # TEI's field
    assert outputs(package.manifest) == {
        "/embed": "dense",
        "/embed_sparse": "sparse",
        "/embed_all": "colbert",
    }


def test_dense_vector(model: Model, want: dict[str, list[np.ndarray]]) -> None:
    np.testing.assert_allclose(model.embed(TEXTS), np.stack(want["dense"]), atol=1e-4, rtol=0)


def test_sparse_weights(model: Model, want: dict[str, list[np.ndarray]]) -> None:
    sparse = np.stack(want["sparse"])
    got = model.embed_sparse(TEXTS)
    assert got.shape == sparse.shape == (len(TEXTS), 600)
    np.testing.assert_allclose(got, sparse, atol=1e-4, rtol=0)
    assert (got[:, [0, 1, 2, 3]] == 0).all()  # special tokens dropped
    assert all((row > 0).sum() > 0 for row in got)
    # "A A A b B": each id once, with the largest of its weights.
    ids = model.encode([TEXTS[1]])[0].ids
    assert (got[1] > 0).sum() <= len(set(ids.tolist()) - {0, 1, 2, 3})


def test_colbert_vectors_on_embed_all(model: Model, want: dict[str, list[np.ndarray]]) -> None:
    got = model.embed_all(TEXTS)
    for text, g, w in zip(TEXTS, got, want["colbert"], strict=True):
        assert g.shape == w.shape == (len(model.encode([text])[0]) - 1, tiny_bge_m3.HIDDEN)
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(g, axis=-1), 1.0, atol=1e-5)


def test_batch_invariance(model: Model) -> None:
    sparse, multi = model.embed_sparse(TEXTS), model.embed_all(TEXTS)
    for index, text in enumerate(TEXTS):
        np.testing.assert_allclose(model.embed_sparse([text])[0], sparse[index], atol=1e-5)
        np.testing.assert_allclose(model.embed_all([text])[0], multi[index], atol=1e-5)


def test_every_served_variant_keeps_the_heads(
    package: ExportResult, want: dict[str, list[np.ndarray]]
) -> None:
    """The heads run on each variant's hidden states, which validation checks only through the
    pooled vector: each variant that passed (fp32, OpenVINO bf16) also gives sparse and ColBERT
    vectors within cosine 0.99 of the reference."""
    checked = []
    for variant in package.manifest.variants:
        if not variant.is_servable:
            continue
        checked.append(variant.name)
        provider = variant.providers[0]
        served = Model.load(package.path, RuntimeOptions(provider=provider, variant=variant.name))
        sparse = served.embed_sparse(TEXTS)
        for got, expected in zip(sparse, want["sparse"], strict=True):
            cosine = got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected))
            assert cosine > 0.99, (variant.name, cosine)
        for got, expected in zip(served.embed_all(TEXTS), want["colbert"], strict=True):
            assert (np.sum(got * expected, axis=-1) > 0.99).all(), variant.name
    assert VariantName.FP32 in checked


@asynchronous
async def test_engine_serves_dense_sparse_and_colbert(
    model: Model, want: dict[str, list[np.ndarray]]
) -> None:
    """Through the engine (what /embed, /embed_sparse and /embed_all call): the dense vectors,
    the sparse weights as (index, value) lists, and the ColBERT multi-vectors, in shared padded
    batches."""
    async with running(model, max_batch_tokens=16384) as engine:
        dense = await engine.embed(EmbedRequest(TEXTS))
        sparse = await engine.embed_sparse(EmbedRequest(TEXTS))
        multi = await engine.embed_all(EmbedRequest(TEXTS))
    np.testing.assert_allclose(dense.embeddings, np.stack(want["dense"]), atol=1e-4, rtol=0)
    for got, expected in zip(sparse.vectors, want["sparse"], strict=True):
        # Terms the reference weighs clearly (> 1e-3) are listed, with their weights.
        assert set(np.flatnonzero(expected > 1e-3)) <= set(got.indices.tolist())
        row = np.zeros_like(expected)
        row[got.indices] = got.values
        np.testing.assert_allclose(row, expected, atol=1e-4, rtol=0)
    for got, expected in zip(multi.embeddings, want["colbert"], strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle code ran",))


def test_a_head_pickle_that_runs_code_is_refused(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "m3"
    shutil.copytree(source, folder)
    with (folder / "sparse_linear.pt").open("wb") as handle:
        pickle.dump({"weight": _Payload()}, handle)
    with pytest.raises(PackageError, match="sparse_linear.pt"):
        export_model(str(folder), tmp_path / "pkg", TINY_OPTIONS)
    assert "pickle code ran" not in capsys.readouterr().out


def test_the_reference_of_the_heads_matches_flagembeddings_rules(
    package: ExportResult, source: Path, want: dict[str, list[np.ndarray]]
) -> None:
    """tei_ort.export.m3_reference (what every variant is validated against) equals this file's
    reference, written separately from FlagEmbedding's rules."""
    from tei_ort.export.m3_reference import references
    from tei_ort.fidelity import ValidationSet

    vset = ValidationSet(tuple(TEXTS), ())
    dense, heads = references(_subject(source), package.manifest.token_heads, package.path, vset)
    np.testing.assert_allclose(dense, np.stack(want["dense"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(heads["sparse"], np.stack(want["sparse"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(heads["colbert"], np.concatenate(want["colbert"]), atol=1e-5)


def test_each_variant_is_validated_on_both_heads(package: ExportResult) -> None:
    """The export checks the sparse and ColBERT outputs of every variant beside the pooled
    vector, and the package carries their references for re-validation on another CPU."""
    fidelity = read_fidelity_set(package.path)
    assert fidelity is not None and set(fidelity.heads) == {"sparse", "colbert"}
    assert fidelity.heads["sparse"].shape == (len(fidelity.vset.texts), 600)
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    assert fidelity.heads["colbert"].shape == (
        sum(len(e) - 1 for e in model.encode(fidelity.vset.texts)),
        tiny_bge_m3.HIDDEN,
    )
    for name, validation in family_checks.validations(package.manifest).items():
        assert "sparse head (" in validation.note and "colbert head (" in validation.note
        # Each part names the bars applied to it: overlap@10 where queries search passages (the
        # pooled vector and the sparse weights, when the variant's bar has one), never over the
        # ColBERT head's token rows.
        pooled, heads = validation.note.split("; sparse head (")
        sparse, colbert = heads.split("; colbert head (")
        for part, kind in ((pooled, OutputKind.DENSE), (sparse, OutputKind.SPARSE)):
            has_bar = THRESHOLDS[(kind, name)].min_overlap_at_10 is not None
            assert ("overlap@10 >=" in part) == has_bar, (name, part)
        assert "overlap" not in colbert and "cosine >=" in colbert, (name, colbert)
    fp32 = package.manifest.variant(VariantName.FP32).validation
    assert fp32 is not None and fp32.passed and "FAILED" not in fp32.note


def test_a_head_that_misses_its_reference_fails_the_variant(package: ExportResult) -> None:
    """The pooled vector alone would pass; a ColBERT output off its reference fails the variant
    (here the reference is perturbed, as a head computed wrongly would be)."""
    fidelity = read_fidelity_set(package.path)
    assert fidelity is not None
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    good = validate_here(model, fidelity, isa_class="x86-avx2", engine="test")
    assert good.passed
    rng = np.random.default_rng(0)
    bent = fidelity.heads["colbert"] + rng.normal(0, 0.05, fidelity.heads["colbert"].shape)
    heads = {**fidelity.heads, "colbert": bent.astype(np.float32)}
    bad = validate_here(model, replace(fidelity, heads=heads), isa_class="x86-avx2", engine="t")
    assert not bad.passed
    assert bad.note.startswith("FAILED colbert head")
    assert bad.cosine_min == good.cosine_min  # the pooled vector's figures are unchanged


def test_the_fidelity_set_keeps_the_heads(package: ExportResult, tmp_path: Path) -> None:
    fidelity = read_fidelity_set(package.path)
    assert fidelity is not None
    write_fidelity_set(tmp_path, fidelity.vset, fidelity.reference, fidelity.heads)
    again = read_fidelity_set(tmp_path)
    assert again is not None and set(again.heads) == {"sparse", "colbert"}
    for name in again.heads:
        np.testing.assert_array_equal(again.heads[name], fidelity.heads[name])
    write_fidelity_set(tmp_path, fidelity.vset, fidelity.reference, {"nope": fidelity.reference})
    with pytest.raises(PackageError, match="unknown head references"):
        read_fidelity_set(tmp_path)


def test_three_outputs_over_http(
    package: ExportResult, want: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    """As users call them: /embed the dense vector, /embed_sparse the sparse weights as TEI's
    {index, value} lists, /embed_all the ColBERT multi-vectors, /info naming the three."""
    import httpx

    from tei_ort.serve.cli import build
    from tei_ort.serve.settings import load_settings
    from tests.serve import live

    first = {name: rows[:3] for name, rows in want.items()}  # the reference on TEXTS[:3]
    args = ["--model-id", str(package.path), "--provider", "cpu", "--variant", "fp32"]
    args += ["--prometheus-port", "0", "--huggingface-hub-cache", str(tmp_path / "hub")]
    with (
        live.serve_app(build(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        dense = client.post("/embed", json={"inputs": TEXTS[:3]})
        sparse = client.post("/embed_sparse", json={"inputs": TEXTS[:3]})
        multi = client.post("/embed_all", json={"inputs": TEXTS[:3]})
        info = client.get("/info").json()
    assert dense.status_code == sparse.status_code == multi.status_code == 200
    np.testing.assert_allclose(np.array(dense.json()), np.stack(first["dense"]), atol=1e-4)
    for got, expected in zip(sparse.json(), first["sparse"], strict=True):
        row = np.zeros_like(expected)
        row[[item["index"] for item in got]] = [item["value"] for item in got]
        np.testing.assert_allclose(row, expected, atol=1e-4, rtol=0)
    for got, expected in zip(multi.json(), first["colbert"], strict=True):
        np.testing.assert_allclose(np.array(got), expected, atol=1e-4, rtol=0)
    assert info["outputs"] == {
        "/embed": "dense",
        "/embed_sparse": "sparse",
        "/embed_all": "colbert",
    }


def _subject(source: Path) -> Subject:
    from tei_ort.export.hub import locate
    from tei_ort.export.pipeline import plan
    from tei_ort.export.source import read_source

    return plan(read_source(locate(str(source))), TINY_OPTIONS)


def test_the_references_load_the_encoder_once(package: ExportResult, source: Path) -> None:
    """The dense reference (sentence-transformers' own output) and the heads' come from one
    encoder load, with the values the two loads gave: reference.embeddings on its own, and
    head_references on transformers' AutoModel."""
    from tei_ort.export import reference as export_reference
    from tei_ort.export.m3_reference import head_references, references

    subject = _subject(source)
    assert subject.pooling is not None
    heads, vset = package.manifest.token_heads, validation_set(4, 8)
    with counting_encoders() as built:
        dense, shared = references(subject, heads, package.path, vset)
    assert built == ["XLMRobertaModel"]
    with counting_encoders() as built:
        alone = export_reference.embeddings(subject.source, subject.pooling, vset.texts)
        separate = head_references(subject.source, subject.recipe, heads, package.path, vset.texts)
    assert built == ["XLMRobertaModel", "XLMRobertaModel"]  # two loads, as the export did
    np.testing.assert_array_equal(dense, alone)
    assert set(shared) == set(separate) == {"sparse", "colbert"}
    for name in shared:
        np.testing.assert_array_equal(shared[name], separate[name])
    flag = reference(source, vset.texts)
    np.testing.assert_allclose(dense, np.stack(flag["dense"]), atol=1e-5, rtol=0)


def test_the_export_loads_the_encoder_for_its_references_once(
    package: ExportResult, export_encoders: dict[str, list[str]]
) -> None:
    """One encoder for both references (two before: transformers' AutoModel again for the
    heads); two in the whole export, with the one torch.onnx traces."""
    assert package.manifest.token_heads is not None
    assert export_encoders["references"] == ["XLMRobertaModel"]
    assert export_encoders["export"] == ["XLMRobertaModel", "XLMRobertaModel"]
