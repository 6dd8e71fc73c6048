"""The lmms-eval 0.7.x model class `akvq`: any model akvq can load, generating through the quantized cache.

Two ways in:
- CLI: `python -m lmms_eval --model akvq --model_args pretrained=<hub id|dir|configs/model name>,quant=akvq
  --tasks mmmu_val`. lmms-eval finds the class through the `lmms_eval.models` entry point, whose payload is
  `manifest` below (lmms-eval's registry_v2 accepts a `ModelManifest`, an iterable of them, or a callable
  returning either; `@register_model` does not reach the CLI).
- Python: `AKVQLmms(loaded=..., policy=...)` wraps an already loaded model, and `akvq.tasks.lmms_task` hands
  that instance to `simple_evaluate(model=...)`, so one loaded model serves a whole sweep (`clean()` is a
  no-op; lmms-eval's default deletes the model's modules at the end of every evaluation).

Memory and throughput are measured here (`self.stats`, an `akvq.tasks.generation.GenStats`), not taken from
lmms-eval's averages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms

from akvq.errors import ConfigError
from akvq.paths import REPO
from akvq.policies import make_policy
from akvq.tasks.generation import GenStats, chat_text, generate_texts, open_image

log = logging.getLogger(__name__)

MODEL_ID = "akvq"
CONFIGS = REPO / "configs"  # the checkout's model presets (a wheel carries none)
IMAGE = "<image>"


def manifest() -> Any:
    """Entry-point payload (`lmms_eval.models: akvq = "akvq.integrations.lmms_eval:manifest"`).

    Imported while `lmms_eval.models` itself is importing, so it only touches `registry_v2`, which that
    package has loaded by then.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="akvq.integrations.lmms_eval.AKVQLmms")


# ------------------------------------------------------------------------------------- building from args


def _yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping")
    return {str(k): v for k, v in data.items()}


def model_spec(pretrained: str, **overrides: Any) -> Any:
    """A `ModelSpec` from a configs/model name (`tiny-llava`, `llava-1.5-7b`) or a hub id / local directory."""
    from akvq.models import ModelSpec

    preset = CONFIGS / "model" / f"{pretrained}.yaml"
    if preset.is_file():
        d = _yaml(preset)
    else:
        d = {"name": pretrained.rstrip("/").split("/")[-1], "source": "hub", "path": pretrained}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return ModelSpec.from_dict(d)


def _split_prefixed(kwargs: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith(prefix)]}


def _group_key(gen_kwargs: dict[str, Any]) -> str:
    return json.dumps(gen_kwargs, sort_keys=True, default=str)


class AKVQLmms(lmms):
    """lmms-eval model running akvq's loaders, prompts and quantized cache; batched with left padding.

    CLI arguments (all optional but one of `pretrained`/`model`): `quant` (configs/quant name or policy name,
    default fp16), `quant.<field>=v` policy overrides, `model.<field>=v` model-spec overrides (dtype,
    device_map, attn_implementation, ...), `batch_size`, `max_new_tokens` (default when a task gives none),
    `chat_template` (wrap prompts in the model's template, default true).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        model: str | None = None,
        quant: str = "fp16",
        batch_size: int | str | None = 1,
        max_new_tokens: int = 256,
        chat_template: bool = True,
        device: str | None = None,
        loaded: Any = None,
        policy: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        quant_over = _split_prefixed(kwargs, "quant.")
        model_over = _split_prefixed(kwargs, "model.")
        for k in ("device_map", "dtype", "attn_implementation", "trust_remote_code"):
            if k in kwargs:
                model_over[k] = kwargs.pop(k)
        kwargs.pop("max_batch_size", None)  # passed by lmms-eval's CLI; no automatic batch sizing here
        if kwargs:
            log.warning("akvq lmms model ignores unknown arguments %s", sorted(kwargs))
        if loaded is None:
            name = pretrained or model
            if not name:
                raise ConfigError("akvq lmms model needs pretrained=<hub id|dir|configs/model name>")
            from akvq.models import load_model

            loaded = load_model(model_spec(str(name), **model_over))
            if device and device != "cpu" and torch.cuda.is_available() and loaded.spec.device_map is None:
                loaded.model.to(device)
        self.loaded = loaded
        self.policy = policy if policy is not None else make_policy(str(quant), **quant_over)
        self.batch_size_per_gpu = int(batch_size) if batch_size not in (None, "auto") else 1
        if self.batch_size_per_gpu < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self.chat_template = (
            bool(chat_template) if not isinstance(chat_template, str) else chat_template == "True"
        )
        self.stats = GenStats()

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def clean(self) -> None:
        """Keep the model: lmms-eval calls this after every evaluation and its default deletes the modules."""
        from loguru import logger  # lmms-eval's logger, so the CLI shows our own measurements

        logger.info(f"akvq {type(self.policy).__name__}: {self.stats.as_dict()}")

    # --------------------------------------------------------------------------------------- helpers

    def _visuals(self, req: Instance) -> list[Any]:
        doc_to_visual, doc_id, task, split = req.args[2:6]
        if doc_to_visual is None:
            return []
        out: list[Any] = []
        stack = [doc_to_visual(self.task_dict[task][split][doc_id])]
        while stack:
            item = stack.pop(0)
            if item is None:
                continue
            if isinstance(item, list | tuple):
                stack[:0] = list(item)
            elif isinstance(item, str) and Path(item).suffix.lower() not in (
                ".jpg",
                ".jpeg",
                ".png",
                ".webp",
            ):
                raise ConfigError(f"akvq lmms model takes images only; task {task!r} gave {item!r}")
            else:
                out.append(open_image(item))
        return out

    def _prompt(self, context: str, n_images: int) -> str:
        """One `<image>` per image: kept where the task put them, else all in front (as lmms-eval's LLaVA does)."""
        if context.count(IMAGE) != n_images:
            context = context.replace(IMAGE, "").lstrip()
            if n_images:
                context = " ".join([IMAGE] * n_images) + "\n" + context
        return chat_text(self.loaded, context, self.chat_template)

    def _gen_settings(self, gen_kwargs: dict[str, Any]) -> tuple[int, list[str], dict[str, Any]]:
        g = dict(gen_kwargs)
        until = g.pop("until", None)
        stops = [until] if isinstance(until, str) else list(until or [])
        max_new = int(g.pop("max_new_tokens", None) or self.max_new_tokens)
        temperature = float(g.pop("temperature", 0) or 0)
        extra: dict[str, Any] = {}
        if temperature > 0 or g.pop("do_sample", False):
            extra = {"do_sample": True, "temperature": temperature or 1.0}
            if g.get("top_p") is not None:
                extra["top_p"] = float(g["top_p"])
        return max_new, stops, extra

    def _batches(self, requests: Sequence[Instance]) -> Iterator[list[int]]:
        """Indices grouped by generation settings, then by image count and length, `batch_size` at a time."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_group_key(r.args[1] or {}), []).append(i)
        for idx in groups.values():
            idx.sort(key=lambda i: len(requests[i].args[0]))
            for s in range(0, len(idx), self.batch_size):
                yield idx[s : s + self.batch_size]

    # ------------------------------------------------------------------------------------ lmms-eval API

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        out: list[GenerationResult | None] = [None] * len(requests)
        for idx in self._batches(requests):
            visuals = [self._visuals(requests[i]) for i in idx]
            prompts = [self._prompt(requests[i].args[0], len(v)) for i, v in zip(idx, visuals, strict=True)]
            max_new, stops, extra = self._gen_settings(requests[idx[0]].args[1] or {})
            before = self.stats.new_tokens
            texts = generate_texts(
                self.loaded,
                self.policy,
                prompts,
                visuals,
                max_new_tokens=max_new,
                stats=self.stats,
                stops=stops,
                **extra,
            )
            per = (self.stats.new_tokens - before) // max(len(idx), 1)
            for i, t in zip(idx, texts, strict=True):
                out[i] = GenerationResult(text=t, token_counts=TokenCounts(output_tokens=per))
        return [o if o is not None else GenerationResult(text="") for o in out]

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Log-probability of each continuation read through the quantized cache, one request at a time.

        The context is prefilled (kept 16-bit, as every prefill is), then the continuation is fed through the
        cache, so its tokens attend to the context as the policy stores it. Each `(logprob, is_greedy)` pair
        comes wrapped in a `GenerationResult`: lmms-eval 0.7.3's evaluator passes every model output through
        `unwrap_generation_output`, which turns a bare tuple into its string but hands `.text` on untouched.
        """
        return [GenerationResult(text=pair) for pair in self._loglikelihoods(requests)]  # type: ignore[arg-type]

    def _loglikelihoods(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        from akvq.api import build_cache, forward
        from akvq.models.prompting import build_inputs

        results: list[tuple[float, bool]] = []
        tok = self.loaded.tokenizer
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            visuals = self._visuals(req) if len(req.args) >= 6 else []
            prompt = self._prompt(context, len(visuals))
            inputs = build_inputs(self.loaded, [prompt], [visuals] if visuals else None)
            cont = tok.encode(continuation, add_special_tokens=False)
            if not cont:
                results.append((0.0, True))
                continue
            cache = build_cache(self.loaded.model, self.policy, inputs)
            first = forward(self.loaded.model, cache, inputs, prefill=True).logits[:, -1:]
            logits = first
            if len(cont) > 1:
                ids = torch.tensor([cont[:-1]], device=inputs["input_ids"].device)
                mask = torch.ones(
                    1, inputs["input_ids"].shape[1] + ids.shape[1], dtype=torch.long, device=ids.device
                )
                rest = forward(self.loaded.model, cache, {"input_ids": ids, "attention_mask": mask}).logits
                logits = torch.cat([first, rest], dim=1)
            logp = torch.log_softmax(logits.float(), dim=-1)[0]
            target = torch.tensor(cont, device=logp.device)
            total = float(logp.gather(1, target[:, None]).sum())
            greedy = bool((logp.argmax(-1) == target).all())
            self._count_cache(cache, len(cont))
            results.append((total, greedy))
        return results

    def _count_cache(self, cache: Any, scored: int) -> None:
        from akvq.api import final_report

        report = final_report(cache)
        self.stats.samples += 1
        self.stats.batches += 1
        self.stats.new_tokens += scored
        self.stats.kv_bytes = max(self.stats.kv_bytes, report.total_bytes)
        self.stats.kv_total_bytes += report.total_bytes
        self.stats.kv_elements += report.elements

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("akvq lmms model: multi-round generation is not supported")
