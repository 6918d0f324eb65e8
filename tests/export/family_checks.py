"""The checks every family beyond the BERT style runs on its tiny models (test_<family>.py):
the pipeline validated fp32, the runtime equals an independent PyTorch forward pass, and an
input alone equals the same input inside a batch of mixed lengths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tei_ort.package import Manifest, Task, Validation, VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.providers import openvino_bf16
from tests.export.conftest import TINY_TEXTS, TinyPackage, TinySource
from tests.export.torch_forward import torch_embeddings, torch_logits

TEXTS = [
    "What does the assert statement do?",
    "x",
    "The import system " * 40,  # past the limit: truncated
    "Übung macht den Meister, naïve café.",
    "",
]
EXPECTED_TASK = {
    "embedding": Task.EMBEDDING,
    "classification": Task.CLASSIFICATION,
    "reranker": Task.RERANKER,
}
TorchForward = Callable[[Path, str, list[str]], np.ndarray]


def validations(manifest: Manifest) -> dict[VariantName, Validation]:
    """Each listed variant's validation at export. bf16 is the one variant listed without one,
    and only where OpenVINO cannot run bfloat16 natively (variants.build_bf16: the serving CPU
    validates it): checked to be that, then left out of the result."""
    result = {}
    for variant in manifest.variants:
        if variant.validation is None:
            assert variant.name is VariantName.BF16 and not openvino_bf16(), variant
            assert (variant.file, variant.providers) == ("model.onnx", ("openvino",)), variant
            continue
        result[variant.name] = variant.validation
    return result


def transformers_forward(source: Path, head: str, texts: list[str]) -> np.ndarray:
    """transformers' own classes: the reference for the families transformers implements."""
    if head == "embedding":
        return torch_embeddings(source, texts)
    if head == "reranker":
        return torch_logits(source, [(texts[0], t) for t in texts[1:]])[:, 0]
    return torch_logits(source, texts)


def own_module_forward(source: Path, head: str, texts: list[str]) -> np.ndarray:
    """An own-module family's expected outputs: our PyTorch module (tei_ort.export.architectures)
    on transformers' tokenization, pooled (1_Pooling) and normalized by hand."""
    import json

    import torch
    from transformers import AutoTokenizer

    from tei_ort.export.architectures import own
    from tei_ort.export.recipes import BASE, lookup

    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    recipe = lookup(json.loads((source / "config.json").read_text())["architectures"][0])
    if head == "embedding":
        recipe = lookup(recipe.family.class_prefix + BASE.class_suffix)
    model = own.load(source, recipe)
    pairs = head == "reranker"
    encoded = tokenizer(
        [texts[0]] * (len(texts) - 1) if pairs else texts,
        texts[1:] if pairs else None,
        padding=True,
        truncation=True,
        max_length=48 if head == "embedding" else 8192,
        return_tensors="pt",
    )
    args = [encoded["input_ids"], encoded["attention_mask"]]
    if recipe.family.uses_token_type_ids:
        args.append(encoded["token_type_ids"])
    with torch.no_grad():
        out = model(*args)
    if head == "reranker":
        return out[:, 0].numpy()  # type: ignore[no-any-return]
    if head == "classification":
        return out.numpy()  # type: ignore[no-any-return]
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    mask = encoded["attention_mask"][..., None].float()
    pooled = out[:, 0] if pooling["pooling_mode_cls_token"] else (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()  # type: ignore[no-any-return]


def check_hub_code_never_runs(source: Path, tmp_path: Path) -> None:
    """A copy of `source` whose auto_map points at its own modeling/configuration files, which
    write a marker and exit when imported, exports and validates: neither file ever runs."""
    import json
    import shutil
    import subprocess
    import sys

    from tei_ort.export.pipeline import export_model
    from tests.export.conftest import TINY_OPTIONS

    folder = tmp_path / "malicious"
    shutil.copytree(source, folder)
    marker = tmp_path / "hub-code-ran"
    trap = (
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "raise SystemExit('hub code ran')\n"
    )
    for name in ("modeling.py", "configuration.py"):
        (folder / name).write_text(trap)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration.Config",
        "AutoModel": "modeling.Model",
        "AutoModelForMaskedLM": "modeling.Model",
        "AutoModelForSequenceClassification": "modeling.Model",
    }
    (folder / "config.json").write_text(json.dumps(config))
    result = export_model(str(folder), tmp_path / "pkg", TINY_OPTIONS)
    fp32 = result.manifest.variant(VariantName.FP32)
    assert fp32.validation is not None and fp32.validation.passed
    assert not marker.exists()
    # The trap works: running the file does write the marker.
    subprocess.run([sys.executable, str(folder / "modeling.py")], check=False)
    assert marker.read_text() == "ran"


def check_fp32_validated(tiny_package: TinyPackage, family: str, head: str) -> None:
    manifest = tiny_package(family, head).manifest
    assert manifest.task is EXPECTED_TASK[head]
    fp32 = manifest.variant(VariantName.FP32)
    assert fp32.validation is not None and fp32.validation.passed, fp32.validation
    assert fp32.validation.max_abs_diff is not None and fp32.validation.max_abs_diff < 1e-4
    assert fp32.validation.texts == (TINY_TEXTS if head != "reranker" else 8 * 16)


def run(model: Model, head: str, texts: list[str]) -> np.ndarray:
    if head == "embedding":
        return model.embed(texts)
    if head == "reranker":
        return model.rerank(texts[0], texts[1:], raw_scores=True)
    return model.predict(texts, raw_scores=True)


def check_runtime_matches(
    tiny_package: TinyPackage,
    tiny_source: TinySource,
    family: str,
    head: str,
    forward: TorchForward = transformers_forward,
) -> None:
    model = Model.load(
        tiny_package(family, head).path, RuntimeOptions(provider="cpu", variant="fp32")
    )
    got = run(model, head, TEXTS)
    want = forward(tiny_source(family, head), head, TEXTS)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def check_batch_invariance(tiny_package: TinyPackage, family: str, head: str) -> None:
    model = Model.load(
        tiny_package(family, head).path, RuntimeOptions(provider="cpu", variant="fp32")
    )
    if head == "reranker":  # each pair alone against all pairs in one batch
        batch = run(model, head, TEXTS)
        for index, text in enumerate(TEXTS[1:]):
            alone = run(model, head, [TEXTS[0], text])
            np.testing.assert_allclose(alone[0], batch[index], atol=1e-5, rtol=0)
        return
    batch = run(model, head, TEXTS)
    for index, text in enumerate(TEXTS):
        np.testing.assert_allclose(run(model, head, [text])[0], batch[index], atol=1e-5, rtol=0)
