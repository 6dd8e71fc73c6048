"""Shapes and tokenizers shared by the families' tiny random builders (the test bed; see sources/tiny.py).

4 decoder layers, hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16 (a power of two, for the
Walsh-Hadamard transform). Tokenizers are SmolLM2's (converted once and cached on disk) plus each family's
special tokens; image processors are the PIL variants."""

from __future__ import annotations

import copy
from typing import Any

from akvq.models.smollm2 import smollm2_tokenizer

HIDDEN = 64
LAYERS = 4
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
IMAGE_SIZE = 56  # CLIP-style towers: 56 px / 14 px patches = 4x4 = 16 tokens per image (tile)
PATCH = 14


def text_kwargs(vocab_size: int, tokenizer: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def clip_vision_kwargs() -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=32,
    )


def base_tokenizer(extra_tokens: tuple[str, ...]) -> Any:
    """A private copy of SmolLM2's tokenizer with the family's special tokens, left padding, a pad token."""
    tok = copy.deepcopy(smollm2_tokenizer())
    if extra_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
