"""Real prose nobody here wrote, for validation and benchmarks: CPython's bundled
`pydoc_data.topics` (the language reference), split into paragraphs.

The texts are deterministic (same Python version, same texts), need no download, and mix short
lines with long passages the way real requests do. Code samples are dropped: they are not prose and
tokenize into a stream of punctuation that tells little about a model.
"""

from __future__ import annotations

import functools
import re
from pydoc_data import topics

# A paragraph is prose when most of its characters are letters or spaces.
_MIN_LETTER_SHARE = 0.75
_MIN_PASSAGE_CHARS = 80
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@functools.cache
def paragraphs() -> tuple[str, ...]:
    """All prose paragraphs, whitespace collapsed, in a stable order (sorted topic names)."""
    found: list[str] = []
    seen: set[str] = set()
    for name in sorted(topics.topics):
        for block in topics.topics[name].split("\n\n"):
            if block.startswith(("  ", "\t")):  # indented blocks are code or grammar
                continue
            text = " ".join(block.split())
            if not text or text in seen or not _is_prose(text):
                continue
            seen.add(text)
            found.append(text)
    return tuple(found)


def passages(count: int, *, offset: int = 0) -> list[str]:
    """`count` paragraphs of at least a few sentences' length, starting at `offset` of them."""
    long_ones = [p for p in paragraphs() if len(p) >= _MIN_PASSAGE_CHARS]
    return _take(long_ones, count, offset)


def queries(count: int, *, offset: int = 0) -> list[str]:
    """Short query-like texts: the first sentence of a paragraph, at most 12 words."""
    firsts = []
    for paragraph in paragraphs():
        words = _SENTENCE_END.split(paragraph, maxsplit=1)[0].split()
        if len(words) >= 3:
            firsts.append(" ".join(words[:12]))
    return _take(firsts, count, offset)


def mixed(count: int, *, offset: int = 0) -> list[str]:
    """Queries and passages interleaved (half each): a realistic request mix of lengths."""
    half = count // 2
    qs = queries(count - half, offset=offset)
    ps = passages(half, offset=offset)
    out: list[str] = []
    for index in range(count - half):
        out.append(qs[index])
        if index < half:
            out.append(ps[index])
    return out


def _is_prose(text: str) -> bool:
    letters = sum(ch.isalpha() or ch == " " for ch in text)
    return letters / len(text) >= _MIN_LETTER_SHARE


def _take(items: list[str], count: int, offset: int) -> list[str]:
    if count + offset > len(items):
        raise ValueError(f"the corpus has {len(items)} such texts; asked for {count} from {offset}")
    return items[offset : offset + count]
