"""Tiny random-weight models with real processors, built offline in a second: the test bed for every family.

Shapes are chosen so the cache code sees the real structure: 4 decoder layers, hidden 64, 4 query heads over
2 KV heads (GQA), head_dim 16 (a power of two, for the Walsh-Hadamard transform). Tokenizers are SmolLM2's
(converted once and cached on disk) plus each family's special tokens; image processors are the PIL
variants; the processors expand `<image>` into the exact number of tokens the vision tower produces.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from akvq.errors import ConfigError
from akvq.models.smollm2 import smollm2_tokenizer

TINY_KINDS: tuple[str, ...] = ("llama", "llava", "llava_next", "qwen2_vl")

HIDDEN = 64
LAYERS = 4
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
IMAGE_SIZE = 56  # CLIP-style towers: 56 px / 14 px patches = 4x4 = 16 tokens per image (tile)
PATCH = 14
LLAVA_IMAGE_TOKEN = "<image>"
QWEN_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|video_pad|>", "<|vision_end|>")
# Small LLaVA-NeXT grid: a square image uses 1 tile + base, a 2:1 image 2 tiles + base -> different lengths.
NEXT_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]
QWEN_MIN_PIXELS = 28 * 28
QWEN_MAX_PIXELS = 112 * 112


def _text_kwargs(vocab_size: int, tokenizer: Any) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _clip_vision_kwargs() -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=32,
    )


def _base_tokenizer(extra_tokens: tuple[str, ...]) -> Any:
    """A private copy of SmolLM2's tokenizer with the family's special tokens, left padding, a pad token."""
    tok = copy.deepcopy(smollm2_tokenizer())
    if extra_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@functools.cache
def _processor_parts(kind: str) -> tuple[Any, Any]:
    """(tokenizer, processor) for a tiny kind; cached in-process because tokenizer copies dominate build time."""
    if kind == "llama":
        return _base_tokenizer(()), None
    if kind == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        tok = _base_tokenizer((LLAVA_IMAGE_TOKEN,))
        ip = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        proc = LlavaProcessor(
            image_processor=ip,
            tokenizer=tok,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            image_token=LLAVA_IMAGE_TOKEN,
        )
        return tok, proc
    if kind == "llava_next":
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        tok = _base_tokenizer((LLAVA_IMAGE_TOKEN,))
        ip = LlavaNextImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_grid_pinpoints=NEXT_PINPOINTS,
        )
        proc = LlavaNextProcessor(
            image_processor=ip,
            tokenizer=tok,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            image_token=LLAVA_IMAGE_TOKEN,
        )
        return tok, proc
    if kind == "qwen2_vl":
        from transformers import Qwen2VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        tok = _base_tokenizer(QWEN_TOKENS)
        ip = Qwen2VLImageProcessorPil(
            size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
            patch_size=PATCH,
            merge_size=2,
            temporal_patch_size=2,
        )
        vp = Qwen2VLVideoProcessor(
            size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
            patch_size=PATCH,
            merge_size=2,
            temporal_patch_size=2,
            do_sample_frames=False,
            cap_pixels_per_frame=True,
        )
        proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp)
        return tok, proc
    raise ConfigError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")


def _build_config(kind: str, tok: Any, head_dim: int = HEAD_DIM) -> Any:
    vocab = len(tok)
    if kind == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**_text_kwargs(vocab, tok), head_dim=head_dim, tie_word_embeddings=True)
    if kind in ("llava", "llava_next"):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

        text = LlamaConfig(**_text_kwargs(vocab, tok), head_dim=head_dim)
        vision = CLIPVisionConfig(**_clip_vision_kwargs())
        common = dict(
            vision_config=vision,
            text_config=text,
            image_token_index=tok.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        )
        if kind == "llava":
            return LlavaConfig(**common)
        return LlavaNextConfig(**common, image_grid_pinpoints=NEXT_PINPOINTS)
    if kind == "qwen2_vl":
        from transformers import Qwen2VLConfig

        ids = tok.convert_tokens_to_ids(list(QWEN_TOKENS))
        text = _text_kwargs(vocab, tok)
        # mrope splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        vision = dict(
            depth=2,
            embed_dim=32,
            hidden_size=HIDDEN,
            num_heads=2,
            mlp_ratio=2,
            patch_size=PATCH,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        return Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            vision_start_token_id=ids[0],
            image_token_id=ids[1],
            video_token_id=ids[2],
            vision_end_token_id=ids[3],
        )
    raise ConfigError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")


def _model_class(kind: str) -> Any:
    import transformers as tf

    return {
        "llama": tf.LlamaForCausalLM,
        "llava": tf.LlavaForConditionalGeneration,
        "llava_next": tf.LlavaNextForConditionalGeneration,
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
    }[kind]


def build_tiny(kind: str, seed: int = 0, attn_implementation: str = "sdpa", head_dim: int | None = None) -> Any:
    """A fresh tiny random model of `kind` (same seed, same weights) with its real tokenizer/processor.

    `head_dim` (llama, llava, llava_next): the text model's head size, default 16; the benchmark uses 128, the
    size of LLaVA-1.5-7B's heads, because per-group metadata and kernel shapes depend on it.

    Returns an `akvq.models.Loaded`; tokenizer and processor objects are shared between calls.
    """
    from akvq.models.loading import Loaded, ModelSpec

    if kind not in TINY_KINDS:
        raise ConfigError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")
    tok, proc = _processor_parts(kind)
    config = _build_config(kind, tok, head_dim or HEAD_DIM)
    config._attn_implementation = attn_implementation
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = _model_class(kind)(config)
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    family = {"llama": "llama"}.get(kind, kind)
    spec = ModelSpec(
        name=f"tiny-{kind.replace('_', '-')}", source="tiny", path=None, tiny_kind=kind, family=family
    )
    model._akvq_model_name = spec.name  # read by akvq.api to find the layer pattern
    return Loaded(model=model, tokenizer=tok, processor=proc, family=family, spec=spec)


def tiny_config(kind: str, head_dim: int | None = None) -> Any:
    """The config `build_tiny` uses (layers, heads, positions), without building any weights."""
    if kind not in TINY_KINDS:
        raise ConfigError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")
    return _build_config(kind, _processor_parts(kind)[0], head_dim or HEAD_DIM)
