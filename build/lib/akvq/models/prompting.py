"""Turn prompts with a family-neutral `<image>` / `<video>` placeholder into the model's own input format.

Tasks write one prompt format; each family (`Family.render`) maps the placeholders to its tokens and lets the real
processor expand them (so token roles later come from what the model actually receives).
"""

from __future__ import annotations

from typing import Any

from akvq.errors import ConfigError
from akvq.models.families import IMAGE, VIDEO
from akvq.models.registry import FAMILIES, get_family


def _flatten(nested: list[list[Any]] | None, prompts: list[str], placeholder: str, what: str) -> list[Any]:
    if nested is None:
        nested = [[] for _ in prompts]
    if len(nested) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(nested)} {what} lists (one list per prompt)")
    flat: list[Any] = []
    for i, (p, items) in enumerate(zip(prompts, nested)):
        n = p.count(placeholder)
        if n != len(items):
            raise ConfigError(f"prompt {i} has {n} {placeholder} placeholders but {len(items)} {what}")
        flat.extend(items)
    return flat


def build_inputs(
    loaded: Any,
    prompts: list[str],
    images: list[list[Any]] | None = None,
    videos: list[list[Any]] | None = None,
    return_tensors: str = "pt",
) -> Any:
    """Tokenize a batch (left padding) with images/videos placed at the `<image>`/`<video>` placeholders.

    `images[i]` / `videos[i]` are the PIL images / videos (lists of frames) of prompt i, in order.
    Returns the processor's BatchEncoding/BatchFeature, moved to the model's device.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    flat_images = _flatten(images, prompts, IMAGE, "images")
    flat_videos = _flatten(videos, prompts, VIDEO, "videos")
    family = loaded.family
    if loaded.processor is None:
        if flat_images or flat_videos:
            raise ConfigError(
                f"model {loaded.spec.name!r} is text-only (family {family!r}) but images were given"
            )
        tok = loaded.tokenizer
        tok.padding_side = "left"
        enc = tok(list(prompts), return_tensors=return_tensors, padding=True)
    else:
        fam = get_family(family)
        if flat_videos and not fam.videos:
            takes = ", ".join(n for n, f in FAMILIES.items() if f.videos)
            raise ConfigError(f"family {family!r} does not take videos; only {takes} do")
        proc = loaded.processor
        proc.tokenizer.padding_side = "left"
        kwargs: dict[str, Any] = dict(text=[fam.render(p) for p in prompts], padding=True)
        if flat_images:
            kwargs["images"] = flat_images
        if flat_videos:
            kwargs["videos"] = flat_videos
        enc = proc(return_tensors=return_tensors, **kwargs)
    device = _device_of(loaded.model)
    return enc.to(device) if device is not None and hasattr(enc, "to") else enc


def _device_of(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except Exception:
        return getattr(model, "device", None)
