"""Which prompt tokens are vision tokens, read from what the model actually receives.

After the processor has expanded every `<image>`/`<video>` placeholder, each vision feature occupies one
position holding the family's image (or video) token id; Qwen2-VL processors also return `mm_token_type_ids`
(0 text, 1 image, 2 video). Nothing here depends on prompt lengths or on how many tiles an image became.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from akvq.errors import UnsupportedModelError
from akvq.models.registry import FAMILIES, _config_of, family_of


def vision_token_ids(model_or_config: Any) -> list[int]:
    """Token ids that stand for vision features in this family (empty for text-only models)."""
    family = family_of(model_or_config)
    if family == "llama":
        return []
    cfg = _config_of(model_or_config)
    names = {
        "llava": ("image_token_id", "image_token_index"),
        "llava_next": ("image_token_id", "image_token_index"),
        "qwen2_vl": ("image_token_id", "video_token_id"),
        "qwen2_5_vl": ("image_token_id", "video_token_id"),
        "idefics3": ("image_token_id",),
    }.get(family)
    if names is None:  # pragma: no cover - FAMILIES and this table are kept in step
        raise UnsupportedModelError(
            f"no role rule for family {family!r}; supported families: {', '.join(FAMILIES)}"
        )
    ids = sorted({int(v) for n in names if (v := getattr(cfg, n, None)) is not None})
    if not ids:
        raise UnsupportedModelError(f"{family} config has none of {names}; cannot locate vision tokens")
    return ids


def vision_mask(model_or_config: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """BoolTensor[B, T]: True where prompt token t of row b is a vision token; padding and text are False.

    Uses `mm_token_type_ids` when the processor returned it, else the family's image/video token ids.
    Unsupported families raise `UnsupportedModelError` naming the supported ones.
    """
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else getattr(inputs, "input_ids", None)
    if ids is None:
        raise ValueError("vision_mask needs `input_ids` (the processor's output), not only inputs_embeds")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    vision_ids = vision_token_ids(model_or_config)  # raises for unsupported families, also for text models
    types = inputs.get("mm_token_type_ids") if isinstance(inputs, Mapping) else None
    if types is not None and vision_ids:
        types = torch.as_tensor(types, device=ids.device)
        mask = types.reshape(ids.shape) > 0
    elif vision_ids:
        mask = torch.isin(ids, torch.tensor(vision_ids, device=ids.device))
    else:
        mask = torch.zeros_like(ids, dtype=torch.bool)
    attn = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if attn is not None:
        mask = mask & torch.as_tensor(attn, device=ids.device).reshape(ids.shape).bool()
    return mask


def text_mask(model_or_config: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """BoolTensor[B, T]: real (non-pad) tokens that are not vision tokens."""
    ids = inputs["input_ids"]
    attn = inputs.get("attention_mask")
    valid = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.bool()
    return valid & ~vision_mask(model_or_config, inputs)
