"""BOS/EOS as transformers adds them (tei_ort/export/special_tokens.py): Llama- and Gemma-class
tokenizers rebuild their template from tokenizer_config.json's add_bos_token / add_eos_token
(e5-mistral-7b-instruct sets add_eos_token: its last-token pooling reads the EOS), and the
package's tokenizer.json must add the same tokens. The reference is transformers' AutoTokenizer
and sentence-transformers on the source folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from tei_ort.errors import PackageError
from tei_ort.export import special_tokens
from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tests.export import tiny_decoders
from tests.export.test_decoders import TEXTS, st_embeddings

BOS, EOS = tiny_decoders.IM_START, tiny_decoders.ENDOFTEXT
PAIR = ("what is it?", "a passage")


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE whose tokenizer.json adds nothing (no EOS template)."""
    return tiny_decoders.build_tokenizer(tmp_path_factory.mktemp("tok") / "t", append_eos=False)


def _folder(plain: Path, out: Path, config: dict[str, Any]) -> Path:
    shutil.copytree(plain, out)
    base = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "padding_side": "left"}
    (out / "tokenizer_config.json").write_text(json.dumps(base | config))
    return out


@pytest.mark.parametrize(
    "tokenizer_class", ["LlamaTokenizer", "LlamaTokenizerFast", "GemmaTokenizer"]
)
@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"add_eos_token": True},
        {"add_bos_token": False, "add_eos_token": True},
        {"add_bos_token": False},
    ],
)
def test_ids_equal_transformers(
    plain_tokenizer: Path, tmp_path: Path, tokenizer_class: str, flags: dict[str, bool]
) -> None:
    from transformers import AutoTokenizer

    folder = _folder(plain_tokenizer, tmp_path / "f", {"tokenizer_class": tokenizer_class} | flags)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert special_tokens.apply(ours, config, "mistral") is not None
    theirs = AutoTokenizer.from_pretrained(str(folder))
    assert type(theirs).__name__ == tokenizer_class.removesuffix("Fast") + "Fast"
    for text in TEXTS:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
    assert ours.encode(*PAIR).ids == theirs(*PAIR)["input_ids"]
    ids = ours.encode("hello world").ids
    assert (ids[0] == ours.token_to_id(BOS)) is flags.get("add_bos_token", True)
    assert (ids[-1] == ours.token_to_id(EOS)) is flags.get("add_eos_token", False)


def test_class_from_the_model_type_when_unnamed(plain_tokenizer: Path) -> None:
    """AutoTokenizer falls back on the model type: mistral -> LlamaTokenizerFast."""
    ours = Tokenizer.from_file(str(plain_tokenizer / "tokenizer.json"))
    config = {"bos_token": BOS, "eos_token": EOS, "add_eos_token": True}
    assert special_tokens.apply(ours, config, "mistral") == f"{BOS}:0 $A:0 {EOS}:0"


def test_qwen_tokenizers_keep_their_own_template(plain_tokenizer: Path) -> None:
    ours = Tokenizer.from_file(str(plain_tokenizer / "tokenizer.json"))
    before = ours.encode("hello").ids
    config = {"tokenizer_class": "Qwen2Tokenizer", "add_eos_token": True, "eos_token": EOS}
    assert special_tokens.apply(ours, config, "qwen3") is None
    assert ours.encode("hello").ids == before


def test_a_missing_token_is_a_clear_error(plain_tokenizer: Path) -> None:
    ours = Tokenizer.from_file(str(plain_tokenizer / "tokenizer.json"))
    with pytest.raises(PackageError, match="add_eos_token is set but eos_token is not"):
        special_tokens.apply(ours, {"add_eos_token": True, "bos_token": BOS}, "llama")
    with pytest.raises(PackageError, match="'</s>' is not in tokenizer.json"):
        special_tokens.apply(ours, {"bos_token": "</s>"}, "llama")


def test_e5_mistral_style_package_pools_on_the_eos(plain_tokenizer: Path, tmp_path: Path) -> None:
    """A Mistral embedder whose tokenizer_config says add_eos_token (e5-mistral's layout): the
    package's tokenizer appends the EOS, and the served vectors equal sentence-transformers'
    (which pools on that EOS through transformers' rebuilt template)."""
    tokenizer = _folder(
        plain_tokenizer,
        tmp_path / "tok",
        {"tokenizer_class": "LlamaTokenizer", "add_eos_token": True},
    )
    source = tiny_decoders.build("mistral", tokenizer, tmp_path / "mistral")
    options = ExportOptions(
        variants=(VariantName.FP32,), validation_queries=8, validation_passages=24
    )
    package = export_model(str(source), tmp_path / "package", options)
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    (encoded,) = model.encode(["hello world"])
    vocab = Tokenizer.from_file(str(source / "tokenizer.json"))
    assert int(encoded.ids[0]) == vocab.token_to_id(BOS)
    assert int(encoded.ids[-1]) == vocab.token_to_id(EOS)
    got = model.embed(TEXTS)
    want = st_embeddings(source, TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    validation = package.manifest.variant(VariantName.FP32).validation
    assert validation is not None and validation.passed
