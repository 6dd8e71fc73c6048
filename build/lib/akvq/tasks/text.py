"""Real English text that ships with CPython (pydoc's topic help), so perplexity needs no dataset download."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def pydoc_corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def corpus_ids(tokenizer) -> list[int]:
    """The corpus tokenized once per tokenizer (no special tokens)."""
    key = id(tokenizer)
    if key not in _IDS:
        _IDS[key] = tokenizer(pydoc_corpus(), add_special_tokens=False)["input_ids"]
    return _IDS[key]


_IDS: dict[int, list[int]] = {}


def windows(ids: list[int], length: int, count: int) -> list[list[int]]:
    """`count` non-overlapping windows of `length` tokens, spread evenly over the corpus."""
    if count * length > len(ids):
        raise ValueError(f"corpus has {len(ids)} tokens, {count} windows of {length} do not fit")
    stride = (len(ids) - length) // max(count - 1, 1)
    return [ids[i * stride : i * stride + length] for i in range(count)]
