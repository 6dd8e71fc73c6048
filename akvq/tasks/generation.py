"""Batched greedy generation of image+text prompts through the quantized cache, with our own measurements.

Shared by MileBench and the lmms-eval model class so both batch the same way (left padding, one fresh
cache per batch) and report the same numbers: generated tokens, seconds, and the cache's real bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from akvq.errors import ConfigError


@dataclass
class GenStats:
    """Running totals over every batch one task or one lmms-eval model instance generated.

    `kv_bytes` is `TaskResult.kv_bytes` (one sequence's cache at the end of the longest one: a batch's cache
    bytes over its batch size, measured after the last decode step); `effective_bits` weights every batch by
    its cached elements.
    """

    samples: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    kv_bytes: int = 0
    kv_total_bytes: int = 0
    kv_elements: int = 0

    @property
    def effective_bits(self) -> float | None:
        return 8.0 * self.kv_total_bytes / self.kv_elements if self.kv_elements else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds > 0 else None

    def add(self, other: GenStats) -> None:
        """Fold in another run's totals (a batch, or the batches a resumed run read back)."""
        for f in (
            "samples",
            "batches",
            "prompt_tokens",
            "new_tokens",
            "seconds",
            "kv_total_bytes",
            "kv_elements",
        ):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.kv_bytes = max(self.kv_bytes, other.kv_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "effective_bits": self.effective_bits,
            "tokens_per_second": self.tokens_per_second,
        }


def open_image(image: Any) -> Any:
    """A PIL RGB image from a path or an image (datasets hand over PIL images, MileBench paths)."""
    from PIL import Image

    if isinstance(image, str | Path):
        with Image.open(image) as im:
            return im.convert("RGB")
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def chat_text(loaded: Any, text: str, use_template: bool = True) -> str:
    """The prompt wrapped in the model's chat template when it has one, placeholders left in the text.

    Templates disagree on the content's form: LLaVA's HF templates read a list of typed parts (and silently
    drop a plain string), ChatML ones (SmolLM2) concatenate a string. Both forms are tried and the first
    rendering that holds the prompt verbatim is used.
    """
    if not use_template:
        return text
    for obj in (loaded.processor, loaded.tokenizer):
        if obj is None or not getattr(obj, "chat_template", None):
            continue
        for content in ([{"type": "text", "text": text}], text):
            try:
                rendered = obj.apply_chat_template(
                    [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
                )
            except Exception:
                continue
            if isinstance(rendered, str) and text in rendered:
                return rendered
    return text


def _tokenizer(loaded: Any) -> Any:
    return loaded.tokenizer if loaded.tokenizer is not None else loaded.processor.tokenizer


def _eos_ids(loaded: Any) -> set[int]:
    ids: set[int] = set()
    for cfg in (getattr(loaded.model, "generation_config", None), _tokenizer(loaded)):
        eos = getattr(cfg, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos is not None:
            ids.update(int(e) for e in eos)
    return ids


def cut_at_stops(text: str, stops: Sequence[str] | None) -> str:
    """Text before the first stop string (lmms-eval's `until`)."""
    for s in stops or ():
        if s:
            text = text.split(s, 1)[0]
    return text


def _inputs(loaded: Any, prompts: Sequence[str], images: Sequence[Sequence[Any]]) -> Any:
    from akvq.models.prompting import build_inputs

    pil = [[open_image(im) for im in ims] for ims in images]
    inputs = build_inputs(loaded, list(prompts), pil if any(pil) else None)
    dtype = getattr(loaded.model, "dtype", None)
    if dtype is not None and dtype.is_floating_point and "pixel_values" in inputs:
        inputs = inputs.to(dtype)  # BatchFeature.to(dtype) casts only the floating tensors (pixel values)
    return inputs


def _gen_kwargs(
    loaded: Any, max_new_tokens: int, do_sample: bool, gen_kwargs: dict[str, Any]
) -> dict[str, Any]:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not do_sample:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    return {
        "do_sample": do_sample,
        "num_beams": 1,
        "pad_token_id": _tokenizer(loaded).pad_token_id,
        **gen_kwargs,
    }


def _finish(
    loaded: Any,
    inputs: Any,
    sequences: Any,
    cache: Any,
    seconds: float,
    stats: GenStats | None,
    stops: Sequence[str] | None,
) -> list[str]:
    """The generated texts (cut at EOS and the stops), and the batch's numbers added to `stats`."""
    from akvq.api import final_report

    prompt_len = inputs["input_ids"].shape[1]
    new = sequences[:, prompt_len:]
    eos = _eos_ids(loaded)
    texts: list[str] = []
    generated = 0
    for row in new.tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos:
                n = i + 1
                break
        generated += n
        texts.append(
            cut_at_stops(_tokenizer(loaded).decode(row[:n], skip_special_tokens=True), stops).strip()
        )
    if stats is not None:
        report = final_report(cache)
        b = len(texts)
        stats.samples += b
        stats.batches += 1
        mask = inputs.get("attention_mask")
        stats.prompt_tokens += int(mask.sum()) if mask is not None else prompt_len * b
        stats.new_tokens += generated
        stats.seconds += seconds
        stats.kv_bytes = max(stats.kv_bytes, report.total_bytes // b)
        stats.kv_total_bytes += report.total_bytes
        stats.kv_elements += report.elements
    return texts


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate_texts(
    loaded: Any,
    policy: Any,
    prompts: Sequence[str],
    images: Sequence[Sequence[Any]],
    *,
    max_new_tokens: int,
    stats: GenStats | None = None,
    stops: Sequence[str] | None = None,
    do_sample: bool = False,
    **gen_kwargs: Any,
) -> list[str]:
    """Generate for one batch of ready prompts (chat template applied, one `<image>` per image).

    Greedy by default; one fresh quantized cache per batch via `akvq.api.generate`.
    """
    from akvq.api import generate

    kwargs = _gen_kwargs(loaded, max_new_tokens, do_sample, gen_kwargs)
    inputs = _inputs(loaded, prompts, images)
    t0 = time.perf_counter()
    sequences, cache = generate(loaded.model, inputs, policy, max_new_tokens=max_new_tokens, **kwargs)
    _sync()
    return _finish(loaded, inputs, sequences, cache, time.perf_counter() - t0, stats, stops)


def generate_texts_shared(
    loaded: Any,
    policies: Sequence[Any],
    prompts: Sequence[str],
    images: Sequence[Sequence[Any]],
    *,
    max_new_tokens: int,
    stats: Sequence[GenStats | None] | None = None,
    stops: Sequence[str] | None = None,
    **gen_kwargs: Any,
) -> list[list[str]]:
    """`generate_texts` for each policy, greedy: the policies whose prefill reads alike (`api.prefill_reads`)
    share one prefill of the batch (`api.generate_shared`), the others run alone. The same texts and numbers
    as separate calls; a shared policy's seconds include the prefill, so its tokens/s reads as if it ran alone."""
    from akvq.api import generate_shared, prefill_reads

    stats = list(stats) if stats is not None else [None] * len(policies)
    groups: dict[Any, list[int]] = {}
    for i, policy in enumerate(policies):
        reads = prefill_reads(loaded.model, policy)
        groups.setdefault(reads if reads is not None else ("alone", i), []).append(i)
    out: list[list[str]] = [[] for _ in policies]
    inputs = None
    for members in groups.values():
        if len(members) == 1:
            i = members[0]
            out[i] = generate_texts(
                loaded, policies[i], prompts, images, max_new_tokens=max_new_tokens, stats=stats[i],
                stops=stops, **gen_kwargs,
            )  # fmt: skip
            continue
        kwargs = _gen_kwargs(loaded, max_new_tokens, False, dict(gen_kwargs))
        inputs = inputs if inputs is not None else _inputs(loaded, prompts, images)
        runs = generate_shared(loaded.model, inputs, [policies[i] for i in members], max_new_tokens, **kwargs)
        for i, (sequences, cache, seconds) in zip(members, runs, strict=True):
            _sync()
            out[i] = _finish(loaded, inputs, sequences, cache, seconds, stats[i], stops)
    return out


def image_token_count(loaded: Any, size: tuple[int, int] = (336, 336)) -> int:
    """Tokens one image of `size` becomes in this model's prompt (what MileBench's truncation counts per image)."""
    from PIL import Image

    from akvq.models.prompting import build_inputs

    blank = Image.new("RGB", size, (127, 127, 127))
    with_image = build_inputs(loaded, ["x<image>"], [[blank]])["input_ids"].shape[1]
    without = build_inputs(loaded, ["x"], None)["input_ids"].shape[1]
    return int(with_image - without)
