"""JinaBERT v2 and its qk-post-norm code variant, exported from our own module
(tei_ort/export/architectures/jina_bert_model.py) without running the hub's code.

What is checked independently: ALiBi off + BERT's MLP equals transformers' BertModel and
BertForSequenceClassification on the same tensors; the GeGLU MLP equals transformers' ModernBERT
MLP on the same weights; ALiBi slopes and bias equal values derived by hand; the checkpoint's
tensor names are the real ones. What could not be: the qk-post-norm attention as a whole (no
transformers class has it; it follows TEI's candle port), and real jina weights (none on PyPI)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tei_ort.export.architectures import jina_bert_model
from tei_ort.runtime import Model, RuntimeOptions
from tests.export import family_checks, tiny_jina
from tests.export.conftest import TinyPackage, TinySource

VARIANTS = ("jina-bert", "jina-bert-code")
HEADS = ("embedding", "classification", "reranker")


own_forward = family_checks.own_module_forward


@pytest.mark.parametrize("family", VARIANTS)
@pytest.mark.parametrize("head", HEADS)
def test_fp32_validated(tiny_package: TinyPackage, family: str, head: str) -> None:
    family_checks.check_fp32_validated(tiny_package, family, head)
    manifest = tiny_package(family, head).manifest
    assert manifest.uses_token_type_ids and manifest.model_type == "bert"
    assert manifest.architecture.startswith("JinaBert")


@pytest.mark.parametrize("family", VARIANTS)
@pytest.mark.parametrize("head", HEADS)
def test_runtime_matches_own_module(
    tiny_package: TinyPackage, tiny_source: TinySource, family: str, head: str
) -> None:
    family_checks.check_runtime_matches(tiny_package, tiny_source, family, head, own_forward)


@pytest.mark.parametrize("family", VARIANTS)
@pytest.mark.parametrize("head", HEADS)
def test_batch_invariance(tiny_package: TinyPackage, family: str, head: str) -> None:
    family_checks.check_batch_invariance(tiny_package, family, head)


@pytest.mark.parametrize("family", VARIANTS)
def test_long_input_beyond_any_trained_length(
    tiny_package: TinyPackage, tiny_source: TinySource, family: str
) -> None:
    """ALiBi has no position table: 8,192 positions from the config; a ~1,600-token input alone,
    in a batch with a short one, and in PyTorch agree."""
    package = tiny_package(family, "classification")
    assert package.manifest.max_input_length == tiny_jina.MAX_POSITIONS
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    long_text = "The import statement combines two operations. " * 200
    alone = model.predict([long_text], raw_scores=True)
    batch = model.predict([long_text, "x"], raw_scores=True)
    np.testing.assert_allclose(alone[0], batch[0], atol=1e-5, rtol=0)
    want = own_forward(tiny_source(family, "classification"), "classification", [long_text])
    np.testing.assert_allclose(alone, want, atol=1e-4, rtol=0)


def test_checkpoint_tensor_names_are_the_real_ones(tiny_source: TinySource) -> None:
    for family, variant in (("jina-bert", "v2"), ("jina-bert-code", "code")):
        names = set(load_file(str(tiny_source(family, "embedding") / "model.safetensors")))
        layer0 = {n.removeprefix("encoder.layer.0.") for n in names if ".layer.0." in n}
        assert layer0 == tiny_jina.LAYER_KEYS[variant]
        assert {n for n in names if n.startswith("embeddings.")} == tiny_jina.EMBEDDING_KEYS
        classifier = set(load_file(str(tiny_source(family, "reranker") / "model.safetensors")))
        assert {"bert.pooler.dense.weight", "classifier.weight", "classifier.bias"} <= classifier


def test_alibi_slopes_match_values_derived_by_hand() -> None:
    # Power of two n: 2^(-8i/n). 12 heads: the 8-head slopes, then odd-indexed 16-head ones.
    assert jina_bert_model.alibi_slopes(4) == [2**-2, 2**-4, 2**-6, 2**-8]
    assert jina_bert_model.alibi_slopes(8) == [2.0**-i for i in range(1, 9)]
    expected_12 = [2.0**-i for i in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    np.testing.assert_allclose(jina_bert_model.alibi_slopes(12), expected_12, rtol=1e-12)
    slopes, positions = torch.tensor([0.5, 0.25]), torch.arange(3)
    bias = jina_bert_model.alibi_bias(slopes, positions, positions)  # (heads, seq, seq)
    np.testing.assert_allclose(
        bias[0].numpy(), [[0, -0.5, -1], [-0.5, 0, -0.5], [-1, -0.5, 0]], atol=0
    )
    np.testing.assert_allclose(bias[1].numpy(), bias[0].numpy() / 2, atol=0)
    # A block of query rows 1..2 against every key: the same rows of the whole bias.
    block = jina_bert_model.alibi_bias(slopes, positions[1:], positions)  # (heads, 2, seq)
    np.testing.assert_allclose(block.numpy(), bias[:, 1:].numpy(), atol=0)
    assert math.isclose(jina_bert_model.alibi_slopes(16)[0], 2**-0.5)


def _bert_config(**overrides: object) -> dict[str, object]:
    return {
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "absolute",
        "feed_forward_type": "original",
        "id2label": {"0": "a", "1": "b"},
    } | overrides


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 100, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("head", ["Model", "ForSequenceClassification"])
def test_alibi_off_equals_transformers_bert(head: str) -> None:
    import transformers

    config = _bert_config()
    torch.manual_seed(1)
    bert = getattr(transformers, "Bert" + head)(
        transformers.BertConfig(**config, attn_implementation="eager")
    ).eval()
    tensors = {k: v for k, v in bert.state_dict().items() if not k.endswith("position_ids")}
    ours = jina_bert_model.build(config, head, tensors)
    ids, mask, types = _padded_batch()
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    want_tensor = want.last_hidden_state if head == "Model" else want.logits
    keep = mask.bool() if head == "Model" else slice(None)  # padded positions are not outputs
    np.testing.assert_allclose(got[keep].numpy(), want_tensor[keep].numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["v2", "code"])
def test_glu_mlp_equals_transformers_modernbert_mlp(variant: str) -> None:
    from transformers import ModernBertConfig
    from transformers.models.modernbert.modeling_modernbert import ModernBertMLP

    config = jina_bert_model.JinaBertConfig.from_json(
        _bert_config(
            position_embedding_type="alibi",
            feed_forward_type="geglu",
            _name_or_path=tiny_jina.HUB_CODE[variant],
        )
    )
    reference = ModernBertMLP(
        ModernBertConfig(
            hidden_size=32, intermediate_size=48, mlp_bias=True, hidden_activation="gelu"
        )
    ).eval()
    torch.manual_seed(2)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()
        reference.Wi.bias.zero_()  # jina's gated layer has no bias
        first, second = reference.Wi.weight.chunk(2, dim=0)  # ModernBERT: act(first) * second
        mlp: torch.nn.Module
        if variant == "v2":  # the same order, then wo and the MLP's own LayerNorm(+ residual)
            mlp = jina_bert_model.GluMlp(config)
            mlp.gated_layers.weight.copy_(reference.Wi.weight)
            mlp.wo.load_state_dict(reference.Wo.state_dict())
            want = torch.nn.functional.layer_norm(reference(x) + x, (32,), eps=1e-12)
        else:  # up * act(gate): ModernBERT's with the halves swapped; no norm inside
            mlp = jina_bert_model.CodeGluMlp(config)
            mlp.up_gated_layer.weight.copy_(torch.cat([second, first]))
            mlp.down_layer.load_state_dict(reference.Wo.state_dict())
            want = reference(x)
        np.testing.assert_allclose(mlp(x).numpy(), want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", VARIANTS)
def test_hub_code_in_the_folder_is_never_imported(
    tiny_source: TinySource, tmp_path: Path, family: str
) -> None:
    family_checks.check_hub_code_never_runs(tiny_source(family, "embedding"), tmp_path)


def _encoder(source: Path) -> torch.nn.Module:
    import json

    config = json.loads((source / "config.json").read_text())
    return jina_bert_model.build(config, "Model", load_file(str(source / "model.safetensors")))


def _long_batch(vocab: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(2, seq): a full row and one padded after 300 tokens."""
    ids = torch.randint(1, vocab, (2, seq), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 300:] = 0
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("family", VARIANTS)
def test_query_blocks_change_no_value(
    tiny_source: TinySource, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    """Attention in blocks of 512 query rows equals attention over all rows at once (one block),
    on 1,100 tokens (blocks of 512, 512, 76) with a padded row."""
    model = _encoder(tiny_source(family, "embedding"))
    ids, mask, types = _long_batch(model.embeddings.word_embeddings.num_embeddings, 1100)
    assert [b.start for b in jina_bert_model.query_blocks(1100, 8192)] == [0, 512, 1024]
    with torch.no_grad():
        blocked = model(ids, mask, types)
        monkeypatch.setattr(jina_bert_model, "QUERY_BLOCK", 1 << 20)
        assert len(jina_bert_model.query_blocks(1100, 8192)) == 1
        whole = model(ids, mask, types)
    keep = mask.bool()
    np.testing.assert_allclose(blocked[keep].numpy(), whole[keep].numpy(), atol=1e-6, rtol=0)


def test_exported_graph_holds_no_seq_by_seq_tensor(
    tiny_package: TinyPackage, tiny_source: TinySource, tmp_path: Path
) -> None:
    """Every intermediate of the served fp32 graph, on a 700-token batch: the largest is one
    block's scores (batch, heads, 512, seq), none is (.., seq, seq), and the output equals the
    PyTorch module. With ORT's optimizations on, each layer keeps its own bias nodes (one Abs per
    layer and block): merged across layers, the blocks of the first layer would all stay alive
    until the last, (heads, seq, seq) in all."""
    import onnx
    import onnxruntime as ort

    seq, batch, heads, layers = 700, 2, 4, 2
    graph_path = str(tiny_package("jina-bert", "embedding").path / "model.onnx")
    graph = onnx.load(graph_path)
    output = graph.graph.output[0].name
    every = [o for node in graph.graph.node for o in node.output if o]
    graph.graph.output.extend(onnx.ValueInfoProto(name=name) for name in every)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph.SerializeToString(), options, ["CPUExecutionProvider"])
    model = _encoder(tiny_source("jina-bert", "embedding"))
    ids, mask, types = _long_batch(model.embeddings.word_embeddings.num_embeddings, seq)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed["token_type_ids"] = types.numpy()
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feed), strict=True))
    shapes = [v.shape for v in values.values() if isinstance(v, np.ndarray)]
    assert max(int(np.prod(s)) for s in shapes) == batch * heads * 512 * seq
    assert not [s for s in shapes if list(s).count(seq) >= 2]
    with torch.no_grad():
        want = model(ids, mask, types)
    keep = mask.bool().numpy()
    np.testing.assert_allclose(values[output][keep], want.numpy()[keep], atol=1e-5, rtol=0)

    # The graph as the runtime runs it: ORT's optimizations on (common subexpressions merged).
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(graph_path, options, ["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("Abs") == layers * len(jina_bert_model.query_blocks(8192, 8192)) == 32
