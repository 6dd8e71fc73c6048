"""`scripts/merge_vlm.py`: two adapter files interpolated as weight deltas, loaded back by the real loader."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import merge_vlm  # noqa: E402
import train_vlm  # noqa: E402

from akvq.models.sources.synth_vlm import TowerConfig, add_lora, build_untrained, save_trained, trained_state  # noqa: E402

TARGETS = ("q_proj", "down_proj")


def _file(tmp_path: Path, name: str, rank: int, seed: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """A rank-`rank` file on one tower (seed 0) with random adapters; returns it and its merged weights."""
    cfg = TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=rank)
    loaded = build_untrained(cfg, seed=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in add_lora(loaded.model, rank, 16.0, TARGETS, 28):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    path = tmp_path / f"{name}.safetensors"
    save_trained(path, trained_state(loaded.model), cfg)
    return path, {
        n: m.merged_weight() for n, m in loaded.model.named_modules() if hasattr(m, "merged_weight")
    }


def _load(path: Path, rank: int) -> dict[str, torch.Tensor]:
    loaded = build_untrained(TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=rank), seed=3)
    add_lora(loaded.model, rank, 16.0, TARGETS, 28)
    train_vlm.load_trained(loaded.model, path)
    return {n: m.merged_weight() for n, m in loaded.model.named_modules() if hasattr(m, "merged_weight")}


def test_interpolation_at_the_summed_rank_is_exact_and_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, wa = _file(tmp_path, "a", 2, 1)
    b, wb = _file(tmp_path, "b", 3, 2)
    out = tmp_path / "ab.safetensors"
    merge_vlm.main(
        [str(a), str(b), "--alpha", "0.25", "--rank", "5", "--out", str(out), "--dtype", "float32"]
    )
    assert "rank 5" in capsys.readouterr().out
    got = _load(out, 5)
    assert got.keys() == wa.keys() and got
    for n in got:
        assert torch.allclose(got[n], 0.75 * wa[n] + 0.25 * wb[n], atol=1e-5)
        assert not torch.allclose(got[n], wa[n], atol=1e-3)  # B really moved it


def test_a_lower_rank_truncates_and_says_how_much(tmp_path: Path) -> None:
    a, _ = _file(tmp_path, "a", 2, 1)
    b, _ = _file(tmp_path, "b", 3, 2)
    state, tower, worst = merge_vlm.merge(merge_vlm.read(a), merge_vlm.read(b), 0.5, 1)
    assert tower.lora_rank == 1 and 0.05 < worst < 1.0
    _, _, exact = merge_vlm.merge(merge_vlm.read(a), merge_vlm.read(b), 0.5, 5)
    assert exact < 1e-6
    _, _, same = merge_vlm.merge(merge_vlm.read(a), merge_vlm.read(a), 0.5, 2)
    assert same < 1e-6  # a file with itself keeps its rank


def test_bad_inputs_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, _ = _file(tmp_path, "a", 2, 1)
    for argv, msg in (
        ([str(a), str(tmp_path / "none"), "--out", str(tmp_path / "o")], "no weights file"),
        ([str(a), str(a), "--alpha", "1.5", "--out", str(tmp_path / "o")], "alpha must be in [0, 1]"),
    ):
        with pytest.raises(SystemExit):
            merge_vlm.main(argv)
        assert msg in capsys.readouterr().err
