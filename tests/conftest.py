"""Shared fixtures: tiny random models of the real architectures, built once per session."""

from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@functools.cache
def tiny(kind: str):
    from akvq.models import build_tiny

    return build_tiny(kind)


def load_script(name: str):
    """A module of scripts/ (not a package) loaded from its file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def image(w: int, h: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def tiny_inputs(kind: str, batch: int = 2):
    """A batch with different prompt lengths (left padding); VLMs get one or two images per prompt."""
    from akvq.models.prompting import build_inputs

    loaded = tiny(kind)
    filler = "the quick brown fox jumps over the lazy dog " * 3
    if kind == "llama":
        prompts = [filler * 2, "short prompt " + filler][:batch]
        return loaded, build_inputs(loaded, prompts)
    prompts = [f"<image> {filler} <image> describe both", f"{filler} <image> what is it"][:batch]
    images = [[image(60, 40, 1), image(40, 70, 2)], [image(56, 56, 3)]][:batch]
    return loaded, build_inputs(loaded, prompts, images)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny("llama")
