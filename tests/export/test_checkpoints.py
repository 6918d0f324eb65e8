"""No untrusted code: a pytorch_model.bin whose pickle carries a payload is refused, naming the
file, and the payload never runs; a plain-tensor pytorch_model.bin exports as the safetensors
model does."""

from __future__ import annotations

import json
import os
import pickletools
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tei_ort.errors import PackageError
from tei_ort.export import checkpoints
from tei_ort.export.pipeline import export_model
from tei_ort.package import VariantName
from tests import tiny_bert

torch = pytest.importorskip("torch")


class Payload:
    """Unpickling this calls os.mkdir(marker): the shape of every malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert.build(tmp_path_factory.mktemp("checkpoints") / "tiny-bert")


def _as_bin(source: Path, folder: Path, extra: dict[str, object]) -> Path:
    """A copy of the tiny model with its weights in pytorch_model.bin, plus `extra` entries."""
    from safetensors.torch import load_file

    folder.mkdir()
    for item in source.iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).symlink_to(item)
    torch.save(
        {**load_file(str(source / "model.safetensors")), **extra}, folder / "pytorch_model.bin"
    )
    return folder


def _globals(checkpoint: Path) -> set[str]:
    """The module.name globals a checkpoint's pickle references, read without unpickling."""
    with zipfile.ZipFile(checkpoint) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif opcode.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


def test_a_malicious_pickle_is_refused_and_never_runs(source: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = _as_bin(source, tmp_path / "evil", {"payload": Payload(marker)})
    assert f"{os.mkdir.__module__}.mkdir" in _globals(folder / "pytorch_model.bin")  # armed
    with pytest.raises(PackageError, match=r"pytorch_model\.bin: refused, its pickle calls code"):
        export_model(str(folder), tmp_path / "pkg", tiny_bert.OPTIONS)
    assert not marker.exists()
    assert not (tmp_path / "pkg").exists()


def test_the_check_names_the_refused_global(source: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = _as_bin(source, tmp_path / "evil", {"payload": Payload(marker)})
    with pytest.raises(PackageError, match=r"GLOBAL (posix|os)\.mkdir"):
        checkpoints.check(folder, ["config.json", "pytorch_model.bin"])
    assert not marker.exists()


def test_a_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(
        PackageError, match=r"pytorch_model\.bin: not a readable PyTorch checkpoint"
    ):
        checkpoints.check(tmp_path, ["pytorch_model.bin"])


def test_a_plain_bin_checkpoint_exports_like_safetensors(source: Path, tmp_path: Path) -> None:
    from_bin = export_model(
        str(_as_bin(source, tmp_path / "bin", {})), tmp_path / "a", tiny_bert.OPTIONS
    )
    from_st = export_model(str(source), tmp_path / "b", tiny_bert.OPTIONS)
    assert from_bin.manifest.variant(VariantName.FP32).is_servable
    assert from_st.manifest.variant(VariantName.FP32).is_servable
    assert "pytorch_model.bin" in from_bin.manifest.source.files
    # The same weights, so the same reference outputs.
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "fidelity.npz")["reference"],
        np.load(tmp_path / "b" / "fidelity.npz")["reference"],
    )


def test_a_repos_own_python_code_is_never_imported(source: Path, tmp_path: Path) -> None:
    """config.json's auto_map names the repo's modeling file, as trust_remote_code repos do: the
    export uses transformers' own BERT and never imports the file (its import would leave a mark)."""
    marker = tmp_path / "imported"
    folder = tmp_path / "remote-code"
    shutil.copytree(source, folder)
    (folder / "modeling_trap.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_trap.TrapModel", "AutoConfig": "modeling_trap.C"}
    (folder / "config.json").write_text(json.dumps(config))
    result = export_model(str(folder), tmp_path / "pkg", tiny_bert.OPTIONS)
    assert result.manifest.variant(VariantName.FP32).is_servable
    assert not marker.exists()
