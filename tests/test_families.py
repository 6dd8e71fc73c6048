"""The family registry: every registered family with a tiny builder runs roles + generate; a toy family added in
one place (here) is seen by the loaders, the prompt builder and the runner's image check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from akvq import api
from akvq.models import FAMILIES, build_inputs, build_tiny, family_of, validate_spec
from akvq.models.families import IMAGE, register
from akvq.models.families.llava import FAMILY as LLAVA
from akvq.models.spec import ModelSpec
from akvq.policies import make_policy
from akvq.saliency.roles import vision_mask

TINY = sorted(n for n, f in FAMILIES.items() if f.tiny is not None)


def test_registry_lists_every_family_module() -> None:
    assert {"llama", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3"} <= set(FAMILIES)
    assert [n for n, f in FAMILIES.items() if not f.is_vlm] == ["llama"]


@pytest.mark.parametrize("name", TINY)
def test_each_tiny_family_roles_and_generate(name: str) -> None:
    from conftest import image

    loaded = build_tiny(name)
    assert family_of(loaded) == name
    fam = FAMILIES[name]
    prompts = [f"{IMAGE} describe it"] if fam.is_vlm else ["describe it"]
    inputs = build_inputs(loaded, prompts, [[image(56, 56)]] if fam.is_vlm else None)
    mask = vision_mask(loaded.model, inputs)
    assert bool(mask.any()) == fam.is_vlm
    out, cache = api.generate(
        loaded.model, inputs, make_policy("akvq", window=4), max_new_tokens=3, do_sample=False
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3 and cache.get_seq_length() > 0


@pytest.mark.parametrize("family", ["idefics3", None])
def test_runner_admits_image_tasks_for_every_vlm_family(family: str | None) -> None:
    """idefics3 was missing from a copy of the family list; `family: null` (auto-detect) was refused."""
    from akvq.runner.plan import model_is_vlm

    cfg = {"name": "m", "source": "hub", "path": "/nonexistent/dir", "family": family}
    assert model_is_vlm(cfg) is (True if family else None)
    assert model_is_vlm({**cfg, "family": "llama"}) is False


@pytest.fixture
def toy_family():
    """A test-only family: LLaVA's parts under a new name, registered with one call and removed afterwards."""
    from akvq.models.families import REGISTRY

    toy = register(
        dataclasses.replace(LLAVA, name="toy", model_types=("toy",), placeholders={IMAGE: " <image>"})
    )
    yield toy
    REGISTRY.pop("toy")


def test_toy_family_registered_in_one_place(toy_family) -> None:
    from conftest import image

    from akvq.runner.plan import model_is_vlm

    validate_spec(ModelSpec(name="toy", source="tiny", tiny_kind="toy"))
    assert model_is_vlm({"name": "toy", "source": "tiny", "tiny_kind": "toy"}) is True
    loaded = build_tiny("toy")
    assert loaded.family == "toy" and loaded.is_vision
    enc = build_inputs(loaded, ["<image> what is it"], [[image(56, 56)]])
    image_id = loaded.model.config.image_token_id
    assert int((enc["input_ids"] == image_id).sum()) == 16
    assert torch.equal(vision_mask(loaded.model, enc), enc["input_ids"] == image_id)
