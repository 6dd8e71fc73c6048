"""akvq.saliency: token roles from real processor outputs, pivot detection, layer patterns, the profiler."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from akvq.errors import ConfigError, UnsupportedModelError
from akvq.models import build_inputs, build_tiny, decoder_layers
from akvq.saliency import PivotDetector, detect_pivots, layer_pattern, vision_mask
from akvq.saliency import patterns as pat
from akvq.saliency.pivots import default_layer, topk_mask
from akvq.saliency.profiler import (
    PivotSite,
    ProfileSettings,
    classify,
    pivot_location_markdown,
    profile_attention,
)

ROOT = Path(__file__).resolve().parents[1]


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


# ----------------------------------------------------------------------------------------------- roles


def test_roles_llava_batch2_left_padding() -> None:
    loaded = build_tiny("llava")
    enc = build_inputs(
        loaded,
        ["<image> compare with <image> please", "<image> what?"],
        [[_img(60, 60), _img(90, 50, 1)], [_img(56, 56, 2)]],
    )
    mask = vision_mask(loaded.model, enc)
    assert mask.shape == enc["input_ids"].shape and mask.dtype == torch.bool
    assert [_runs(r) for r in mask] == [[16, 16], [16]]
    assert not (mask & ~enc["attention_mask"].bool()).any()  # pads are never vision
    assert enc["attention_mask"][1, 0] == 0  # row 1 is left-padded


def test_roles_llava_next_two_sizes() -> None:
    loaded = build_tiny("llava_next")
    img_id = loaded.model.config.image_token_id
    single = [
        int((build_inputs(loaded, ["<image>"], [[im]])["input_ids"] == img_id).sum())
        for im in (_img(56, 56), _img(112, 56, 1))
    ]
    assert single[0] != single[1]  # the two sizes expand to different numbers of tokens
    enc = build_inputs(
        loaded,
        ["first <image> then <image> end", "only <image>"],
        [[_img(56, 56), _img(112, 56, 1)], [_img(56, 56)]],
    )
    mask = vision_mask(loaded.model, enc)
    assert [_runs(r) for r in mask] == [single, single[:1]]
    assert not (mask & ~enc["attention_mask"].bool()).any()


def test_roles_qwen2_vl_image_and_video() -> None:
    loaded = build_tiny("qwen2_vl")
    video = [_img(56, 56, i) for i in range(4)]
    enc = build_inputs(
        loaded,
        ["<image> and then <video> what happens?", "<image>?"],
        [[_img(56, 56)], [_img(112, 56, 1)]],
        videos=[[video], []],
    )
    mask = vision_mask(loaded.model, enc)
    assert [_runs(r) for r in mask] == [[4, 8], [8]]
    no_types = {k: v for k, v in enc.items() if k != "mm_token_type_ids"}
    assert torch.equal(mask, vision_mask(loaded.model, no_types))  # token ids and mm_token_type_ids agree
    cfg = loaded.model.config
    markers = torch.isin(enc["input_ids"], torch.tensor([cfg.vision_start_token_id, cfg.vision_end_token_id]))
    assert not (mask & markers).any()  # <|vision_start|>/<|vision_end|> are text


def test_roles_text_only_and_unsupported() -> None:
    loaded = build_tiny("llama")
    enc = build_inputs(loaded, ["a b c", "d"])
    assert not vision_mask(loaded.model, enc).any()
    from transformers import BertConfig

    with pytest.raises(UnsupportedModelError, match="supported families"):
        vision_mask(BertConfig(), enc)


# ---------------------------------------------------------------------------------------------- pivots

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. Then it runs away into the forest.",
    "Hello world.",
    "A much longer prompt: one, two, three, four, five, six, seven, eight, nine, ten, eleven.",
]


@pytest.mark.parametrize("rule", ["massive", "attention"])
def test_pivots_stable_across_batch_order(rule: str) -> None:
    loaded = build_tiny("llama")
    k = 4
    enc = build_inputs(loaded, PROMPTS)
    mask = detect_pivots(loaded.model, dict(enc), k=k, rule=rule)
    valid = enc["attention_mask"].bool()
    assert mask.shape == valid.shape
    assert not (mask & ~valid).any()
    assert mask.sum(1).tolist() == [min(k, int(v)) for v in valid.sum(1)]
    perm = [2, 0, 1]
    enc_p = {key: v[perm] for key, v in enc.items()}
    mask_p = detect_pivots(loaded.model, enc_p, k=k, rule=rule)
    assert torch.equal(mask_p, mask[perm])


def test_topk_mask_ties_and_short_rows() -> None:
    s = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    valid = torch.tensor([[True, True, True, True], [False, False, True, True]])
    m = topk_mask(s, 2, valid)
    assert m.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert topk_mask(s, 0).sum() == 0


class _FakeCache:
    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def set_pivots(self, mask: torch.Tensor) -> None:
        self.calls.append(mask)


def test_detector_fires_once_per_generate() -> None:
    loaded = build_tiny("llava")
    enc = build_inputs(
        loaded,
        ["<image> describe", "<image> <image> compare"],
        [[_img(56, 56)], [_img(56, 56), _img(70, 56)]],
    )
    cache = _FakeCache()
    with PivotDetector(loaded.model, cache, k=3):
        loaded.model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert len(cache.calls) == 1
    assert cache.calls[0].shape == enc["input_ids"].shape
    assert cache.calls[0].sum(1).tolist() == [3, 3]
    assert not (cache.calls[0] & ~enc["attention_mask"].bool()).any()


def test_attention_rule_matches_eager_window_attention() -> None:
    loaded = build_tiny("llama")
    model = loaded.model
    enc = build_inputs(loaded, PROMPTS[:1])
    w = 6
    with PivotDetector(model, None, k=3, rule="attention", window=w) as det:
        model(**enc, use_cache=False)
    model.set_attn_implementation("eager")
    try:
        out = model(**enc, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation("sdpa")
    ref = torch.stack([a[:, :, -w:, :].sum(2).mean(1) for a in out.attentions]).mean(0)
    assert det.scores is not None
    torch.testing.assert_close(det.scores, ref, atol=1e-5, rtol=1e-4)


def test_detector_config_errors() -> None:
    model = build_tiny("llama").model
    with pytest.raises(ConfigError):
        PivotDetector(model, None, rule="oracle")
    with pytest.raises(ConfigError):
        PivotDetector(model, None, score="median")
    with pytest.raises(ConfigError):
        PivotDetector(model, None, layer=17)
    assert default_layer(30) == 7 and default_layer(4) == 1


# -------------------------------------------------------------------------------------------- patterns


def test_shipped_patterns_table1() -> None:
    p7 = layer_pattern("llava-1.5-7b", 32)
    assert p7[:2] == ["tsa", "tsa"] and set(p7[2:]) == {"psa"}
    assert layer_pattern("llava-hf/llava-v1.6-vicuna-7b-hf", 32) == p7  # found by hub id
    assert layer_pattern("llava-1.6-mistral-7b", 32) == ["psa"] * 32
    p13 = layer_pattern("llava-1.5-13b", 40)
    assert len(p13) == 40 and p13.count("tsa") == 2
    assert not pat.load_layer_pattern(
        "llava-1.5-13b", 40
    ).profiled  # layers 32-39 are a guess, not the paper's
    for f in sorted((ROOT / "configs" / "layer_patterns").glob("*.yaml")):
        node = yaml.safe_load(f.read_text())
        assert node["source"] and "profiled" in node, f
        pat.parse_pattern(node, int(node["num_layers"]), str(f))
    with pytest.raises(ConfigError, match="32 layers"):
        layer_pattern("llava-1.5-7b", 40)


def test_unknown_model_is_all_psa_with_profiler_hint(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="akvq.saliency.patterns"):
        got = pat.load_layer_pattern("some-org/brand-new-vlm", 6)
    assert got.pattern == ["psa"] * 6 and not got.profiled
    assert "scripts/profile_layers.py --model brand-new-vlm" in caplog.text


def test_classify_rule() -> None:
    rows = [
        {"text_mean_attn": 0.02, "vision_mean_attn": 0.005, "topk_share": 0.3},  # text-salient, diffuse
        {"text_mean_attn": 0.02, "vision_mean_attn": 0.005, "topk_share": 0.8},  # concentrated
        {"text_mean_attn": 0.002, "vision_mean_attn": 0.005, "topk_share": 0.3},  # vision gets more
        {"text_mean_attn": 0.02, "vision_mean_attn": math.nan, "topk_share": 0.3},  # text-only
    ]
    assert classify(rows) == ["tsa", "psa", "psa", "psa"]


def test_profiler_on_tiny_llava_writes_valid_pattern(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import profile_layers

    out, pdir = tmp_path / "out", tmp_path / "patterns"
    rc = profile_layers.main(
        ["--model", "tiny-llava", "--samples", "2", "--length", "48", "--window", "8", "--recent", "8",
         "--synthetic-images", "--out", str(out), "--pattern-dir", str(pdir), "--write-pattern"]
    )  # fmt: skip
    assert rc == 0
    for name in ("profile.csv", "profile.png", "profile.pdf", "pivots.md", "pattern.yaml"):
        assert (out / name).stat().st_size > 0, name
    node = yaml.safe_load((pdir / "tiny-llava.yaml").read_text())
    assert node["profiled"] is True and node["num_layers"] == 4 and "profile_layers.py" in node["source"]
    monkeypatch.setenv(pat.ENV_DIRS, str(pdir))
    assert pat.load_layer_pattern("tiny-llava", 4).path == str(pdir / "tiny-llava.yaml")
    assert layer_pattern("tiny-llava", 4) == node["pattern"]
    import pandas as pd

    df = pd.read_csv(out / "profile.csv")
    assert list(df["layer"]) == [0, 1, 2, 3]
    assert (df["vision_tokens"] > 0).all() and df["vision_mean_attn"].notna().all()
    assert ((df["recent_share"] >= 0) & (df["recent_share"] <= 1 + 1e-6)).all()
    assert ((df["pivot_vision_mass"] >= 0) & (df["pivot_vision_mass"] <= df["pivot_mass"] + 1e-6)).all()
    assert "## Where the pivots fall" in (out / "pivots.md").read_text()


def test_pivot_location_counts_where_pivots_fall() -> None:
    # 8 tokens: text 0-1, an image at 2-5, text 6-7; pivots on the first token, the image's first and third
    # token and the last text token.
    vis = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    piv = torch.tensor([1, 0, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    site = PivotSite(torch.arange(8), piv, vis)
    md = pivot_location_markdown([site, site], lambda i: f"t{i}")
    assert "2 prompts, 8 pivots (4.0 per prompt)" in md
    assert "| vision tokens | 50.0% | 50.0% |" in md
    assert "| the first token | 25.0% | 12.5% |" in md  # 1 of 8 tokens per prompt
    assert "| the text token right before an image | 0.0% | 12.5% |" in md  # token 1 is no pivot
    assert "| the text token right after an image | 0.0% | 12.5% |" in md  # nor token 6
    assert "| quarter 1 of the prompt | 25.0% | 25% |" in md  # positions 0, 2, 4, 7 of 8: one per quarter
    assert "| 0 | 2 |" in md and "| 2 | 2 |" in md  # image offsets 0 and 2, once per prompt each
    assert "| `'t0'` | 2 |" in md and "| `'t7'` | 2 |" in md
    around = PivotSite(torch.arange(8), torch.tensor([0, 1, 0, 0, 0, 0, 1, 0], dtype=torch.bool), vis)
    md = pivot_location_markdown([around], lambda i: f"t{i}")
    assert "| the text token right before an image | 50.0% | 12.5% |" in md
    assert "| the text token right after an image | 50.0% | 12.5% |" in md


def test_profile_attention_restores_attn_implementation() -> None:
    loaded = build_tiny("llama")
    enc = build_inputs(loaded, PROMPTS[:1])
    sites: list[PivotSite] = []
    rows = profile_attention(loaded.model, [enc], ProfileSettings(k=3, window=4, recent=4), sites=sites)
    assert len(rows) == len(decoder_layers(loaded.model))
    assert len(sites) == 1 and int(sites[0].pivots.sum()) == 3 and not sites[0].vision.any()
    assert rows[0]["heldout"] == 1.0
    assert loaded.model.config._attn_implementation == "sdpa"
