"""synth-vlm's weights file: what training holds (adapters unmerged) is what loading gives (adapters merged)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from akvq.errors import ConfigError, MissingDataError
from akvq.models.sources.synth_vlm import (
    TOKENS_PER_IMAGE,
    TowerConfig,
    add_lora,
    build_untrained,
    load_synth_vlm,
    save_trained,
    trained_state,
)
from akvq.synth.bench import make_pool, read_number
from akvq.synth.draw import render

SMALL = TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=2, lora_alpha=4.0)


def test_missing_or_altered_weights_fail_before_building(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="train_vlm.py"):
        load_synth_vlm(tmp_path / "absent.safetensors")
    f = tmp_path / "w.safetensors"
    save_trained(f, {"x": torch.zeros(1)}, SMALL)
    with pytest.raises(ConfigError, match="does not match model.sha256"):
        load_synth_vlm(f, sha256="0" * 64)


def test_the_runs_preflight_checks_the_weights_hash_before_anything_loads(tmp_path: Path) -> None:
    """A wrong model.sha256 fails once, in one line, before a sweep plans its jobs (not in each job's load)."""
    from akvq.models import ModelSpec
    from akvq.models.sources.synth_vlm import check, sha256_of

    f = tmp_path / "w.safetensors"
    save_trained(f, {"x": torch.zeros(1)}, SMALL)
    good = {"name": "synth-vlm", "source": "synth-vlm", "weights": str(f)}
    check(ModelSpec.from_dict({**good, "sha256": sha256_of(f)}))
    check(ModelSpec.from_dict(good))  # no hash given: nothing to compare
    with pytest.raises(
        ConfigError, match=r"^model.sha256=abc: synth-vlm weights .* have SHA-256 [0-9a-f]{64} "
    ):
        check(ModelSpec.from_dict({**good, "sha256": "abc"}))


def test_the_same_tensors_give_the_same_file(tmp_path: Path) -> None:
    """safetensors writes its metadata in hash-map order; an export must not change SHA-256 from run to run."""
    state = {"b": torch.ones(2, 3), "a": torch.arange(5.0)}
    extra = {f"k{i}": str(i) for i in range(12)}
    shas = {save_trained(tmp_path / f"{i}.safetensors", state, SMALL, extra) for i in range(4)}
    assert len(shas) == 1
    loaded = load_file(str(tmp_path / "0.safetensors"))
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"], state["b"])


@pytest.mark.slow
def test_saved_then_loaded_model_matches_the_trained_one(tmp_path: Path) -> None:
    """Two builds of SmolLM2 + tower: random tower and non-zero adapters survive save, load and merge."""
    trained = build_untrained(SMALL, seed=1)
    add_lora(trained.model, SMALL.lora_rank, SMALL.lora_alpha)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trained.model.named_parameters():
            if name.endswith(".b"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path / "synth-vlm.safetensors"
    sha = save_trained(path, trained_state(trained.model), SMALL, {"step": "0"})
    loaded = load_synth_vlm(path, sha256=sha)
    assert loaded.family == "llava" and loaded.model._akvq_model_name == "synth-vlm"

    rng = random.Random(0)
    item = read_number(rng, make_pool("ReadNumber", rng, 2), 1)
    prompt = "Read this: <image>"
    enc = loaded.processor(text=[prompt], images=[render(s) for s in item.scenes], return_tensors="pt")
    image_id = loaded.model.config.image_token_index
    assert int((enc["input_ids"] == image_id).sum()) == TOKENS_PER_IMAGE
    with torch.no_grad():
        want = trained.model(**enc).logits
        got = loaded.model(**enc).logits
    assert torch.allclose(got, want, atol=2e-3, rtol=0), (got - want).abs().max()
    half = tmp_path / "half.safetensors"  # the shipped precision: float16 on disk, float32 once loaded
    save_trained(half, trained_state(trained.model), SMALL, {"step": "0"}, torch.float16)
    assert half.stat().st_size < 0.55 * path.stat().st_size
    with torch.no_grad():
        got16 = load_synth_vlm(half).model(**enc).logits
    assert torch.allclose(got16, want, atol=5e-2, rtol=0), (got16 - want).abs().max()
    assert torch.equal(got16[0, -1].topk(5).indices, want[0, -1].topk(5).indices)
    with torch.no_grad():  # the adapters did matter: without them the logits move
        for name, p in trained.model.named_parameters():
            if name.endswith(".b"):
                p.zero_()
        assert not torch.allclose(trained.model(**enc).logits, want, atol=2e-3)
