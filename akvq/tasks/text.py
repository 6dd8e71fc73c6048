"""Real English text that ships with CPython (pydoc's topic help), so perplexity needs no dataset download."""

from __future__ import annotations

import contextlib
import functools
import weakref


@functools.lru_cache(maxsize=1)
def pydoc_corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def corpus_ids(tokenizer) -> list[int]:
    """The corpus tokenized once per tokenizer object (no special tokens). Held weakly by the object itself, not
    by its `id()`: a sweep's next model can get a freed tokenizer's id, and with it the wrong token ids."""
    try:
        return _IDS[tokenizer]
    except (KeyError, TypeError):
        ids = tokenizer(pydoc_corpus(), add_special_tokens=False)["input_ids"]
    with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced is tokenized each time
        _IDS[tokenizer] = ids
    return ids


_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def windows(ids: list[int], length: int, count: int) -> list[list[int]]:
    """`count` non-overlapping windows of `length` tokens, spread evenly over the corpus."""
    if count * length > len(ids):
        raise ValueError(f"corpus has {len(ids)} tokens, {count} windows of {length} do not fit")
    stride = (len(ids) - length) // max(count - 1, 1)
    return [ids[i * stride : i * stride + length] for i in range(count)]
