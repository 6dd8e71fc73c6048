"""Text-only decoders with the Llama-style layer layout (SmolLM2, Llama, Mistral, Qwen2, ...)."""

from __future__ import annotations

import functools
from typing import Any

from akvq.models.families import _tiny
from akvq.models.families.base import Family, TinyBuild


@functools.cache
def _tokenizer() -> Any:  # cached in-process: tokenizer copies dominate tiny build time
    return _tiny.base_tokenizer(())


def tiny(head_dim: int | None) -> TinyBuild:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    config = LlamaConfig(
        **_tiny.text_kwargs(len(tok), tok), head_dim=head_dim or _tiny.HEAD_DIM, tie_word_embeddings=True
    )
    return TinyBuild(tok, None, config, LlamaForCausalLM)


FAMILY = Family(
    name="llama",
    model_types=(
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "gemma2",
        "smollm3",
        "olmo",
        "olmo2",
        "granite",
        "starcoder2",
    ),
    hub_class="AutoModelForCausalLM",
    tiny=tiny,
)
