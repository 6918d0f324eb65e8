"""NV-Embed-v2's network (tei_ort/export/architectures/nvembed_model.py) on a tiny random
checkpoint with NV-Embed-v2's tensor names and config layout (text_config bidir_mistral,
latent_attention_config), against a reference written here from modeling_nvembed.py's equations:
BidirectionalMistralModel (transformers' MistralModel, is_causal False, eager attention with
_prepare_4d_attention_mask's padding mask), LatentAttentionModel (PreNorm cross-attention from
the tokens to the batch-expanded latents through scaled_dot_product_attention, PreNorm GEGLU
feed-forward, both residual) and the mean over pool_mask (the first len(instruction) positions
zeroed, right padding). The hub code itself is not run.

The whole package: a tiny NV-Embed-v2-layout folder (its Llama-class tokenizer without
add_eos_token, sentence-transformers files with mean pooling, include_prompt false and a query
instruction) exported by tei-export and served over HTTP equals the reference on the ids the
card's sentence-transformers usage makes (instruction + text + "</s>", transformers' tokenizer),
with the instruction's tokens out of the mean as sentence-transformers counts them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tei_ort.export import recipes, st_files
from tei_ort.export.architectures import decoders, nvembed_model, own
from tei_ort.export.architectures.family import MODEL
from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import Pooling, VariantName, read_manifest
from tei_ort.serve.cli import build as build_app
from tei_ort.serve.settings import load_settings
from tests.export.tiny_jina import randomize
from tests.serve import live

HIDDEN, LATENTS, CROSS_HEADS, VOCAB = 32, 16, 2, 120
TEXT_CONFIG = {
    "model_type": "bidir_mistral",
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "vocab_size": VOCAB,
    # NV-Embed-v2 says 4096; its eager attention never applies it. Shorter than the inputs
    # here, so a module that did would differ.
    "sliding_window": 4,
}
CONFIG = {
    "architectures": ["NVEmbedModel"],
    "model_type": "nvembed",
    "add_eos": True,
    "is_mask_instruction": True,
    "mask_type": "b",
    "padding_side": "right",
    "hidden_size": HIDDEN,
    "text_config": TEXT_CONFIG,
    "latent_attention_config": {
        "model_type": "latent_attention",
        "num_latents_value": LATENTS,
        "num_cross_heads": CROSS_HEADS,
        "cross_dim_head": HIDDEN,  # NV-Embed-v2: 4096, the hidden size, per head
        "hidden_dim": HIDDEN,
        "latent_dim": HIDDEN,
        "output_normalize": True,
    },
}
LENGTHS = [9, 3, 14, 1]  # right padding to 14
INSTRUCTION_TOKENS = 5


def mistral_body() -> torch.nn.Module:
    from transformers import MistralConfig, MistralModel

    fields = {k: v for k, v in TEXT_CONFIG.items() if k != "model_type"}
    config = MistralConfig(**fields)
    config._attn_implementation = "eager"
    model = MistralModel(config).eval()
    randomize(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    for layer in model.layers:  # BidirectionalMistralModel
        layer.self_attn.is_causal = False
    return model


@pytest.fixture(scope="module")
def checkpoint() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    torch.manual_seed(0)
    body = mistral_body()
    tensors = {"embedding_model." + k: v.clone() for k, v in body.state_dict().items()}
    inner = CROSS_HEADS * HIDDEN
    blocks = "latent_attention_model.cross_attend_blocks."
    shapes = {
        "latent_attention_model.latents": (LATENTS, HIDDEN),
        blocks + "0.fn.to_q.weight": (inner, HIDDEN),
        blocks + "0.fn.to_kv.weight": (2 * inner, HIDDEN),
        blocks + "0.fn.to_out.weight": (HIDDEN, inner),
        blocks + "1.fn.net.0.weight": (HIDDEN * 8, HIDDEN),
        blocks + "1.fn.net.0.bias": (HIDDEN * 8,),
        blocks + "1.fn.net.2.weight": (HIDDEN, HIDDEN * 4),
        blocks + "1.fn.net.2.bias": (HIDDEN,),
    }
    for name, shape in shapes.items():
        scale = 1.0 if name.endswith("latents") else 0.2
        tensors[name] = scale * torch.randn(shape)
    for norm in ("0.norm.", "0.norm_context.", "1.norm."):
        tensors[blocks + norm + "weight"] = 1 + 0.2 * torch.randn(HIDDEN)
        tensors[blocks + norm + "bias"] = 0.1 * torch.randn(HIDDEN)
    return tensors, body


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 2), mask  # padded with </s> (id 2), as NV-Embed does


def reference(
    tensors: dict[str, torch.Tensor],
    body: torch.nn.Module,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pool: torch.Tensor,
) -> torch.Tensor:
    """(b, hidden) as NVEmbedModel.forward computes it, before the card's normalization."""
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

    f = torch.nn.functional
    with torch.no_grad():
        hiddens = body(
            input_ids=ids,
            attention_mask=_prepare_4d_attention_mask(attention_mask, torch.float32),
        ).last_hidden_state  # (b, n, d)
        blocks = "latent_attention_model.cross_attend_blocks."

        def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
            w, b = tensors[blocks + name + "weight"], tensors[blocks + name + "bias"]
            return f.layer_norm(x, (HIDDEN,), w, b)

        x = tensors["latent_attention_model.latents"][None].expand(ids.shape[0], -1, -1)
        # PreNorm(Attention): norm the query side, norm_context the latents.
        q = layer_norm(hiddens, "0.norm.") @ tensors[blocks + "0.fn.to_q.weight"].T
        k, v = (layer_norm(x, "0.norm_context.") @ tensors[blocks + "0.fn.to_kv.weight"].T).chunk(
            2, dim=-1
        )

        def split(t: torch.Tensor) -> torch.Tensor:  # 'b n (h d) -> (b h) n d'
            b, n, _ = t.shape
            return (
                t.reshape(b, n, CROSS_HEADS, -1).permute(0, 2, 1, 3).reshape(b * CROSS_HEADS, n, -1)
            )

        out = f.scaled_dot_product_attention(split(q), split(k), split(v))
        b = ids.shape[0]
        out = (
            out.reshape(b, CROSS_HEADS, -1, HIDDEN)
            .permute(0, 2, 1, 3)
            .reshape(b, -1, CROSS_HEADS * HIDDEN)
        )
        hiddens = out @ tensors[blocks + "0.fn.to_out.weight"].T + hiddens
        # PreNorm(FeedForward): Linear, GEGLU, Linear.
        up = layer_norm(hiddens, "1.norm.") @ tensors[blocks + "1.fn.net.0.weight"].T
        up = up + tensors[blocks + "1.fn.net.0.bias"]
        a, gates = up.chunk(2, dim=-1)
        down = (a * f.gelu(gates)) @ tensors[blocks + "1.fn.net.2.weight"].T
        hiddens = down + tensors[blocks + "1.fn.net.2.bias"] + hiddens
        s = torch.sum(hiddens * pool.unsqueeze(-1).float(), dim=1)
        d = pool.sum(dim=1, keepdim=True).float()
        return s / d


def pool_masks(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Passages: the attention mask. Queries: its first len(tokenize(instruction)) positions
    zeroed, as prepare_kwargs_from_batch does."""
    query = mask.clone()
    query[:, :INSTRUCTION_TOKENS] = 0
    return {"passage": mask, "query": query}


def mean(states: np.ndarray | torch.Tensor, pool: torch.Tensor) -> np.ndarray:
    weights = pool.numpy().astype(np.float32)[..., None]  # (b, n, 1)
    # A row that pools nothing (a query shorter than its instruction) gives 0; callers skip it.
    return (np.asarray(states) * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)


@pytest.mark.parametrize("kind", ["passage", "query"])
def test_module_equals_the_hub_equations(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module], kind: str
) -> None:
    tensors, body = checkpoint
    module = nvembed_model.build(json.loads(json.dumps(CONFIG)), MODEL, tensors)
    ids, mask = batch()
    pool = pool_masks(mask)[kind]
    rows = pool.sum(1) > 0  # a query shorter than its instruction pools nothing
    with torch.no_grad():
        states = module(ids, mask)  # (b, n, d)
    want = reference(tensors, body, ids, mask, pool)[rows].numpy()
    got = mean(states, pool)[rows.numpy()]
    assert got.shape == (int(rows.sum()), HIDDEN)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_every_token_attends_both_ways_without_a_window(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module],
) -> None:
    """Changing the last of 14 tokens changes the first token's state: bidirectional, and no
    window of 4 (the config's sliding_window) between them."""
    tensors, _ = checkpoint
    module = nvembed_model.build(json.loads(json.dumps(CONFIG)), MODEL, tensors)
    ids, mask = batch()
    changed = ids.clone()
    changed[2, 13] = (ids[2, 13] + 1) % VOCAB
    with torch.no_grad():
        before, after = module(ids, mask)[2, 0], module(changed, mask)[2, 0]
    assert float((before - after).abs().max()) > 1e-4


def test_onnx_graph_equals_the_module(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module], tmp_path: Path
) -> None:
    """The module through the own-module exporter (both axes dynamic: traced at (2, 16), run at
    (4, 14)) in ONNX Runtime, mean-pooled, equals the reference."""
    import onnxruntime as ort
    from safetensors.torch import save_file

    tensors, body = checkpoint
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    # The family tei-export registers for NVEmbedModel, not a copy of it.
    family = next(f for f in decoders.FAMILIES if f.model_type == "nvembed")
    assert family.own_module == nvembed_model.__name__
    recipe = recipes.Recipe("NVEmbedModel", family, recipes.BASE)
    own.export(tmp_path, recipe, tmp_path / "model.onnx", opset=17)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = batch()
    (states,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert states.shape == (len(LENGTHS), max(LENGTHS), HIDDEN)
    pool = pool_masks(mask)["passage"]
    np.testing.assert_allclose(
        mean(states, pool), reference(tensors, body, ids, mask, pool).numpy(), atol=2e-5, rtol=0
    )


INSTRUCTION = "Instruct: Given a question, retrieve passages that answer the question\nQuery: "
QUERIES = ["are judo throws allowed in wrestling?", "how to become a radiology technician?"]
PASSAGES = [
    "Yes, judo throws are allowed in freestyle and folkstyle wrestling.",
    "Earn a high school diploma, then an associate degree in radiologic technology.",
    "Wrestling rules forbid a slam.",
]


def write_tokenizer(out: Path) -> None:
    """A word-level tokenizer over the test's words (the checkpoint has 120 ids), shipped as
    NV-Embed-v2's: <s> prepended by its template, LlamaTokenizer without add_eos_token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = " ".join([INSTRUCTION, *QUERIES, *PASSAGES]).replace("\n", " ")
    pieces = dict.fromkeys(w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(words))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(pieces)}
    assert len(vocab) <= VOCAB
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "padding_side": "right",
        "model_max_length": 512,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def write_sentence_transformers(out: Path) -> None:
    """NV-Embed-v2's modules (Transformer, mean Pooling without the prompt, Normalize) and a
    query prompt, which the card passes as encode's prompt."""
    st_files.write_pooling_normalize(out, HIDDEN, "mean_tokens", max_seq_length=64)
    pooling = out / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps(json.loads(pooling.read_text()) | {"include_prompt": False}))
    prompts = {"prompts": {"query": INSTRUCTION}, "default_prompt_name": None}
    (out / "config_sentence_transformers.json").write_text(json.dumps(prompts))


@pytest.fixture(scope="module")
def nvembed_source(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("nvembed-source")
    tensors, _ = checkpoint
    (out / "config.json").write_text(json.dumps(CONFIG))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    write_tokenizer(out)
    write_sentence_transformers(out)
    return out


@pytest.fixture(scope="module")
def nvembed_package(nvembed_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = ExportOptions(
        variants=(VariantName.FP32,), validation_queries=8, validation_passages=24
    )
    return export_model(str(nvembed_source), tmp_path_factory.mktemp("nvembed"), options).path


def card_vectors(
    source: Path,
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module],
    prompt: str | None,
    mask_prompt: bool = True,
) -> np.ndarray:
    """The card's sentence-transformers usage on the reference: each text + eos_token,
    sentence-transformers' prompt prepended, transformers' tokenizer, right padding; the prompt's
    tokens (its Transformer's prompt length: the prompt tokenized alone, here <s> and the
    instruction, nothing special at its end) out of the mean unless `mask_prompt` is False; then
    normalized."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    texts = [
        (prompt or "") + text + tokenizer.eos_token for text in (QUERIES if prompt else PASSAGES)
    ]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert [row[n - 1] for row, n in zip(ids.tolist(), mask.sum(1).tolist(), strict=True)] == [
        2
    ] * len(texts)
    pool = mask.clone()
    if prompt and mask_prompt:
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert prompt_ids[-1] not in tokenizer.all_special_ids
        pool[:, : len(prompt_ids)] = 0
    tensors, body = checkpoint
    vectors = reference(tensors, body, ids, mask, pool)
    return torch.nn.functional.normalize(vectors, dim=-1).numpy()


def test_served_package_equals_the_card(
    nvembed_source: Path,
    nvembed_package: Path,
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """tei-export builds NVEmbedModel; served over HTTP, queries (prompt_name query) and passages
    equal the card's vectors; the instruction's tokens are really out of the mean (a query
    pooled with them differs)."""
    manifest = read_manifest(nvembed_package)
    assert (manifest.architecture, manifest.pooling, manifest.include_prompt) == (
        "NVEmbedModel",
        Pooling.MEAN,
        False,
    )
    args = ["--model-id", str(nvembed_package), "--provider", "cpu", "--variant", "fp32"]
    args += [
        "--prometheus-port",
        "0",
        "--huggingface-hub-cache",
        str(tmp_path_factory.mktemp("hub")),
    ]
    with (
        live.serve_app(build_app(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        queries = client.post("/embed", json={"inputs": QUERIES, "prompt_name": "query"})
        passages = client.post("/embed", json={"inputs": PASSAGES})
        tokens = client.post("/tokenize", json={"inputs": PASSAGES[2]})
    assert queries.status_code == passages.status_code == 200, (queries.text, passages.text)
    got_queries = np.asarray(queries.json(), dtype=np.float32)
    want_queries = card_vectors(nvembed_source, checkpoint, INSTRUCTION)
    np.testing.assert_allclose(got_queries, want_queries, atol=2e-5, rtol=0)
    np.testing.assert_allclose(
        np.asarray(passages.json()),
        card_vectors(nvembed_source, checkpoint, None),
        atol=2e-5,
        rtol=0,
    )
    with_instruction = card_vectors(nvembed_source, checkpoint, INSTRUCTION, mask_prompt=False)
    assert float(np.abs(got_queries - with_instruction).max()) > 1e-2
    ids = [token["id"] for token in tokens.json()[0]]
    assert (ids[0], ids[-1]) == (1, 2)  # <s> ... </s>: the EOS appended by the package's template


def test_an_input_alone_equals_it_inside_a_batch(nvembed_package: Path) -> None:
    """Queries with their instruction and passages of mixed lengths, each alone and all in one
    batch (right padding, the prompt's positions masked per row)."""
    from tei_ort.runtime import Model, RuntimeOptions

    model = Model.load(nvembed_package, RuntimeOptions(provider="cpu", variant="fp32"))
    for texts, prompt_name in ((QUERIES, "query"), (PASSAGES, None)):
        batch = model.embed(texts, prompt_name=prompt_name)
        for row, text in enumerate(texts):
            alone = model.embed([text], prompt_name=prompt_name)[0]
            np.testing.assert_allclose(alone, batch[row], atol=1e-5, rtol=0)
