"""Qwen2.5-VL: Qwen2-VL's prompt format and token rule with a new vision tower."""

from __future__ import annotations

from akvq.models.families.base import Family
from akvq.models.families.qwen2_vl import PLACEHOLDERS

FAMILY = Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    hub_class="Qwen2_5_VLForConditionalGeneration",
    vision_token_attrs=("image_token_id", "video_token_id"),
    placeholders=PLACEHOLDERS,
    videos=True,
)
