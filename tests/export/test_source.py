"""Reading a source folder: what is understood, and a clear error naming the file otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.export import hub
from tei_ort.export.source import read_source
from tei_ort.package import Activation, Pooling
from tests.export import tiny_models
from tests.export.conftest import TinySource


@pytest.fixture
def bert_st(tiny_source: TinySource, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_source("bert", "embedding"), folder)
    return folder


def _read(folder: Path):  # type: ignore[no-untyped-def]
    return read_source(hub.locate(str(folder)))


def test_minilm_is_read_as_sentence_transformers_reads_it() -> None:
    source = _read(tiny_models.MINILM)
    assert source.st is not None
    assert (source.st.pooling, source.st.normalize, source.st.max_seq_length) == (
        Pooling.MEAN,
        True,
        256,
    )
    assert source.max_input_length() == 256
    assert (source.architecture, source.hidden_size, source.num_attention_heads) == (
        "BertModel",
        384,
        12,
    )
    assert source.weights == ("model.safetensors",)
    assert "1_Pooling/config.json" in source.files


def test_dense_and_prompts(tiny_source: TinySource) -> None:
    source = _read(tiny_source("xlm-roberta", "embedding"))
    assert source.st is not None
    (dense,) = source.st.dense
    assert (dense.in_features, dense.out_features, dense.activation) == (32, 16, Activation.TANH)
    assert source.st.prompts == {"query": "query: ", "passage": "passage: "}
    assert "2_Dense/model.safetensors" in source.files


def test_max_length_without_st_uses_positions_minus_offset(tiny_source: TinySource) -> None:
    # Tokenizer model_max_length is transformers' 1e30 "no limit": ignored; 66 positions - 2.
    assert _read(tiny_source("roberta", "classification")).max_input_length() == 64


def test_max_length_takes_a_sane_tokenizer_limit(bert_st: Path) -> None:
    (bert_st / "modules.json").unlink()
    config = json.loads((bert_st / "tokenizer_config.json").read_text())
    (bert_st / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 40}))
    assert _read(bert_st).max_input_length() == 40


def test_st_max_seq_length_is_capped_by_positions(bert_st: Path) -> None:
    (bert_st / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096}))
    assert _read(bert_st).max_input_length() == 64


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        (lambda f: (f / "config.json").unlink(), "config.json"),
        (lambda f: (f / "config.json").write_text("{not json"), "config.json"),
        (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json"),
        (lambda f: (f / "1_Pooling" / "config.json").write_text("[1, 2"), "1_Pooling/config.json"),
        (lambda f: (f / "1_Pooling" / "config.json").unlink(), "1_Pooling/config.json"),
        (lambda f: (f / "modules.json").write_text('{"a": 1}'), "modules.json"),
        (lambda f: (f / "model.safetensors").unlink(), "no model weights"),
        (
            lambda f: (f / "config_sentence_transformers.json").write_text(
                '{"prompts": {}, "default_prompt_name": "x"}'
            ),
            "default_prompt_name",
        ),
    ],
)
def test_broken_files_are_errors_naming_the_file(bert_st: Path, breakage, named: str) -> None:  # type: ignore[no-untyped-def]
    breakage(bert_st)
    with pytest.raises(PackageError, match=named):
        _read(bert_st)


def test_sharded_safetensors(bert_st: Path) -> None:
    (bert_st / "model.safetensors").rename(bert_st / "model-00001-of-00001.safetensors")
    index = {
        "weight_map": {"embeddings.word_embeddings.weight": "model-00001-of-00001.safetensors"}
    }
    (bert_st / "model.safetensors.index.json").write_text(json.dumps(index))
    source = _read(bert_st)
    assert source.weights == ("model.safetensors.index.json", "model-00001-of-00001.safetensors")
    (bert_st / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(PackageError, match="model-00001-of-00001.safetensors: not found"):
        _read(bert_st)


def test_pytorch_bin_fallback(bert_st: Path) -> None:
    (bert_st / "model.safetensors").rename(bert_st / "pytorch_model.bin")
    assert _read(bert_st).weights == ("pytorch_model.bin",)


def test_unsupported_pooling_and_architecture(bert_st: Path) -> None:
    pooling = json.loads((bert_st / "1_Pooling" / "config.json").read_text())
    pooling |= {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}
    (bert_st / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(UnsupportedModel, match="pooling_mode_max_tokens"):
        _read(bert_st)
    (bert_st / "modules.json").unlink()  # a plain HF folder from here on
    config = json.loads((bert_st / "config.json").read_text())
    (bert_st / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2Model"]}))
    with pytest.raises(UnsupportedModel, match="supported: BertForMaskedLM"):
        _read(bert_st)


def test_not_a_folder_nor_a_repo_id(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model folder"):
        hub.locate(str(tmp_path / "missing" / "deep" / "path"))


def test_dense_without_weights_is_refused(tiny_source: TinySource, tmp_path: Path) -> None:
    folder = tmp_path / "xlmr"
    shutil.copytree(tiny_source("xlm-roberta", "embedding"), folder)
    (folder / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(PackageError, match="2_Dense: no Dense weights"):
        _read(folder)
