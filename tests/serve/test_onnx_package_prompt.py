"""A user's ONNX folder whose 1_Pooling/config.json says include_prompt: false: the package the
server builds around it (serve/onnx_package.py) leaves the prompt out of the pooling too."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tei_ort.package import Pooling, read_manifest
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.serve import onnx_package
from tests.conftest import TinyBert


def test_onnx_folder_with_include_prompt_false(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path: Path
) -> None:
    tiny = tiny_bert_fp32("embedding")
    folder = tmp_path / "onnx-folder"
    folder.mkdir()
    for name in ("model.onnx", "tokenizer.json", "config.json"):
        shutil.copyfile(tiny.package / name, folder / name)
    (folder / "1_Pooling").mkdir()
    pooling = {"pooling_mode_mean_tokens": True, "include_prompt": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: "}, "default_prompt_name": None})
    )
    package = onnx_package.build(
        folder, tmp_path / "package", model_id="user/onnx", revision=None, pooling=None
    )
    manifest = read_manifest(package)
    assert (manifest.pooling, manifest.include_prompt) == (Pooling.MEAN, False)
    options = RuntimeOptions(provider="cpu", variant="fp32", allow_unvalidated=True)
    model = Model.load(package, options)
    # [CLS] query : [SEP] -> 3 prompt tokens out: the vector is the mean of the text's tokens,
    # which /embed_all gives per token.
    got = model.embed(["cats and dogs"], prompt_name="query", normalize=False)
    tokens = model.forward_tokens(model.encode(["cats and dogs"], prompt_name="query"))[0]
    np.testing.assert_allclose(got[0], tokens[3:].mean(axis=0), atol=1e-5, rtol=0)
