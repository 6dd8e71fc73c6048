"""LLaVA-1.5: CLIP tower + projector + a Llama-style decoder; `<image>` expands to one token per patch."""

from __future__ import annotations

import functools
from typing import Any

from akvq.models.families import _tiny
from akvq.models.families.base import IMAGE, Family, TinyBuild


def tiny_text_and_vision(tok: Any, head_dim: int | None) -> dict[str, Any]:
    """Config arguments LLaVA and LLaVA-NeXT share for their tiny builds."""
    from transformers import CLIPVisionConfig, LlamaConfig

    return dict(
        vision_config=CLIPVisionConfig(**_tiny.clip_vision_kwargs()),
        text_config=LlamaConfig(**_tiny.text_kwargs(len(tok), tok), head_dim=head_dim or _tiny.HEAD_DIM),
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(_tiny.IMAGE_SIZE // _tiny.PATCH) ** 2,
    )


@functools.cache
def _parts() -> tuple[Any, Any]:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tiny.base_tokenizer((IMAGE,))
    size = _tiny.IMAGE_SIZE
    ip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=_tiny.PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE,
    )
    return tok, proc


def tiny(head_dim: int | None) -> TinyBuild:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok, proc = _parts()
    return TinyBuild(
        tok, proc, LlavaConfig(**tiny_text_and_vision(tok, head_dim)), LlavaForConditionalGeneration
    )


FAMILY = Family(
    name="llava",
    model_types=("llava",),
    hub_class="LlavaForConditionalGeneration",
    vision_token_attrs=("image_token_id", "image_token_index"),
    tiny=tiny,
)
