"""Which prompt tokens are vision tokens, read from what the model actually receives.

After the processor has expanded every `<image>`/`<video>` placeholder, each vision feature occupies one
position holding the family's image (or video) token id; Qwen2-VL processors also return `mm_token_type_ids`
(0 text, 1 image, 2 video). Nothing here depends on prompt lengths or on how many tiles an image became.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from akvq.models.registry import vision_token_ids


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
