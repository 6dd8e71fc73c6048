"""Qwen2-VL: images and videos between vision start/end tokens; processors return `mm_token_type_ids`."""

from __future__ import annotations

import functools
from typing import Any

from akvq.models.families import _tiny
from akvq.models.families.base import IMAGE, VIDEO, Family, TinyBuild

PLACEHOLDERS = {
    IMAGE: "<|vision_start|><|image_pad|><|vision_end|>",
    VIDEO: "<|vision_start|><|video_pad|><|vision_end|>",
}
TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|video_pad|>", "<|vision_end|>")
MIN_PIXELS = 28 * 28
MAX_PIXELS = 112 * 112


@functools.cache
def _parts() -> tuple[Any, Any]:
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = _tiny.base_tokenizer(TOKENS)
    common: dict[str, Any] = dict(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        patch_size=_tiny.PATCH,
        merge_size=2,
        temporal_patch_size=2,
    )
    ip = Qwen2VLImageProcessorPil(**common)
    vp = Qwen2VLVideoProcessor(**common, do_sample_frames=False, cap_pixels_per_frame=True)
    return tok, Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp)


def tiny(head_dim: int | None) -> TinyBuild:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok, proc = _parts()
    ids = tok.convert_tokens_to_ids(list(TOKENS))
    text = _tiny.text_kwargs(len(tok), tok)
    # mrope splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=_tiny.HIDDEN,
        num_heads=2,
        mlp_ratio=2,
        patch_size=_tiny.PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        vision_start_token_id=ids[0],
        image_token_id=ids[1],
        video_token_id=ids[2],
        vision_end_token_id=ids[3],
    )
    return TinyBuild(tok, proc, config, Qwen2VLForConditionalGeneration)


FAMILY = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    hub_class="Qwen2VLForConditionalGeneration",
    vision_token_attrs=("image_token_id", "video_token_id"),
    placeholders=PLACEHOLDERS,
    videos=True,
    tiny=tiny,
    tiny_head_dim=False,
)
