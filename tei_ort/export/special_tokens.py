"""The BOS / EOS tokens a tokenizer adds, as transformers adds them, written into the package's
tokenizer.json.

Llama- and Gemma-class fast tokenizers (Mistral's e5-mistral-7b-instruct, Llama, EmbeddingGemma)
do not take their post-processor from tokenizer.json as shipped: at load, transformers rebuilds
it from tokenizer_config.json's `add_bos_token` / `add_eos_token` (LlamaTokenizerFast and
GemmaTokenizerFast.update_post_processor). e5-mistral sets add_eos_token, so the EOS its
last-token pooling reads is appended by the rebuilt template and not by the file; serving the
file as shipped would pool on the last word instead. The package's tokenizer.json gets the
template transformers would build, so the server's Rust tokenizer adds the same tokens.

Qwen2/Qwen3 tokenizers (Qwen2TokenizerFast) have no such flags: their tokenizer.json is used as
shipped (Qwen3-Embedding's own post-processor appends <|endoftext|>).

NV-Embed-v2 (model_type nvembed) ships a Llama tokenizer without add_eos_token, but its encode
appends the EOS to every text (input_transform_func, always_add_eos; its card's
sentence-transformers usage appends eos_token to each input): its template appends it here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tei_ort.errors import PackageError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# tokenizer class (tokenizer_config.json's tokenizer_class, "Fast" dropped) -> its defaults for
# (add_bos_token, add_eos_token), for the classes whose fast tokenizer rebuilds its template.
REBUILT_TEMPLATES: dict[str, tuple[bool, bool]] = {
    "LlamaTokenizer": (True, False),
    "CodeLlamaTokenizer": (True, False),
    "GemmaTokenizer": (True, False),
}
# AutoTokenizer's class for a model type when tokenizer_config.json names none.
MODEL_TYPE_TOKENIZERS = {
    "llama": "LlamaTokenizer",
    "mistral": "LlamaTokenizer",
    "gemma": "GemmaTokenizer",
    "gemma2": "GemmaTokenizer",
    "gemma3": "GemmaTokenizer",
    "gemma3_text": "GemmaTokenizer",
    "nvembed": "LlamaTokenizer",
}
# Model types whose own encode appends the EOS to every text, whatever add_eos_token says.
ALWAYS_EOS_MODEL_TYPES = frozenset({"nvembed"})


def tokenizer_class(tokenizer_config: dict[str, Any], model_type: str) -> str | None:
    named = tokenizer_config.get("tokenizer_class")
    if isinstance(named, str):
        return named.removesuffix("Fast")
    return MODEL_TYPE_TOKENIZERS.get(model_type)


def apply(tokenizer: Tokenizer, tokenizer_config: dict[str, Any], model_type: str) -> str | None:
    """Give `tokenizer` the template transformers builds for this tokenizer class, if it builds
    one; returns the single-sequence template (e.g. "<s>:0 $A:0 </s>:0"), or None when the class
    keeps tokenizer.json's own post-processor."""
    from tokenizers import processors

    defaults = REBUILT_TEMPLATES.get(tokenizer_class(tokenizer_config, model_type) or "")
    if defaults is None:
        return None
    add_bos = bool(tokenizer_config.get("add_bos_token", defaults[0]))
    add_eos = bool(tokenizer_config.get("add_eos_token", defaults[1]))
    add_eos = add_eos or model_type in ALWAYS_EOS_MODEL_TYPES
    bos = _token(tokenizer, tokenizer_config, "bos_token") if add_bos else None
    eos = _token(tokenizer, tokenizer_config, "eos_token") if add_eos else None
    # As update_post_processor: "bos $A eos" and "bos $A eos bos $B eos".
    single = " ".join(
        [*([f"{bos[0]}:0"] if bos else []), "$A:0", *([f"{eos[0]}:0"] if eos else [])]
    )
    pair_b = " ".join(
        [*([f"{bos[0]}:1"] if bos else []), "$B:1", *([f"{eos[0]}:1"] if eos else [])]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single,
        pair=f"{single} {pair_b}",
        special_tokens=[token for token in (bos, eos) if token is not None],
    )
    return single


def _token(tokenizer: Tokenizer, tokenizer_config: dict[str, Any], key: str) -> tuple[str, int]:
    value = tokenizer_config.get(key)
    text = value.get("content") if isinstance(value, dict) else value
    if not isinstance(text, str):
        flag = key.replace("_token", "")
        raise PackageError(
            f"tokenizer_config.json: add_{flag}_token is set but {key} is not ({value!r})"
        )
    token_id = tokenizer.token_to_id(text)
    if token_id is None:
        raise PackageError(f"tokenizer_config.json: {key} {text!r} is not in tokenizer.json")
    return text, token_id
