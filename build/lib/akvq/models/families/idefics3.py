"""Idefics3 / SmolVLM: a literal `<image>` token expanded by the processor into image-splitting rows."""

from __future__ import annotations

from akvq.models.families.base import Family

FAMILY = Family(
    name="idefics3",
    model_types=("idefics3", "smolvlm"),  # SmolVLM is Idefics3's architecture under another name
    hub_class="AutoModelForImageTextToText",
    vision_token_attrs=("image_token_id",),
)
