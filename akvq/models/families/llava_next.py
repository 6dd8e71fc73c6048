"""LLaVA-NeXT (LLaVA-1.6): LLaVA with any-resolution tiling, so the image token count depends on the image."""

from __future__ import annotations

import functools
from typing import Any

from akvq.models.families import _tiny
from akvq.models.families.base import IMAGE, Family, TinyBuild
from akvq.models.families.llava import tiny_text_and_vision

# Small grid: a square image uses 1 tile + base, a 2:1 image 2 tiles + base -> different lengths.
PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]


@functools.cache
def _parts() -> tuple[Any, Any]:
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _tiny.base_tokenizer((IMAGE,))
    size = _tiny.IMAGE_SIZE
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=PINPOINTS,
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=_tiny.PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE,
    )
    return tok, proc


def tiny(head_dim: int | None) -> TinyBuild:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    tok, proc = _parts()
    config = LlavaNextConfig(**tiny_text_and_vision(tok, head_dim), image_grid_pinpoints=PINPOINTS)
    return TinyBuild(tok, proc, config, LlavaNextForConditionalGeneration)


FAMILY = Family(
    name="llava_next",
    model_types=("llava_next",),
    hub_class="LlavaNextForConditionalGeneration",
    vision_token_attrs=("image_token_id", "image_token_index"),
    tiny=tiny,
)
