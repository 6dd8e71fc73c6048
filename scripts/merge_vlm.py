"""Interpolate two synth-vlm weight files: `(1 - alpha) * A + alpha * B`, adapters merged as weight deltas.

Why: two fine-tuning runs from one file seemed to trade the needle against ObjectExistence. Averaging the weights
of runs from a common start (a "model soup", or WiSE-FT's interpolation) often keeps what each learnt, at the cost
of evaluations only. Measured here: no gain, and the trade was mostly sampling noise (results/vlm/HISTORY.md,
"A second evaluation set").

The tower and projector are interpolated tensor by tensor (identical when both runs froze them). An adapter's
delta `scale * B @ A` is interpolated in full and factored again by SVD at `--rank` (default: the larger of the
two files' ranks); the relative Frobenius error of that truncation is printed and stored in the metadata.

    python scripts/merge_vlm.py A.safetensors B.safetensors --alpha 0.5 --out merged.safetensors [--rank 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from akvq.models.sources.synth_vlm import TowerConfig, save_trained  # noqa: E402


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}, dict(f.metadata() or {})


def deltas(state: dict[str, torch.Tensor], tower: TowerConfig) -> dict[str, torch.Tensor]:
    """`scale * B @ A` of every adapter in a file, by target name."""
    scale = tower.lora_alpha / tower.lora_rank if tower.lora_rank else 0.0
    return {
        k[len("lora.") : -len(".a")]: scale * (state[k[: -len(".a")] + ".b"].double() @ v.double())
        for k, v in state.items()
        if k.startswith("lora.") and k.endswith(".a")
    }


def merge(
    a: tuple[dict[str, torch.Tensor], dict[str, str]],
    b: tuple[dict[str, torch.Tensor], dict[str, str]],
    alpha: float,
    rank: int | None = None,
) -> tuple[dict[str, torch.Tensor], TowerConfig, float]:
    """The interpolated state, its tower config (adapter rank `rank`) and the largest relative truncation error."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    (sa, ma), (sb, mb) = a, b
    ta, tb = TowerConfig.from_metadata(ma), TowerConfig.from_metadata(mb)
    shape = ("hidden", "layers", "heads", "mlp")
    if any(getattr(ta, f) != getattr(tb, f) for f in shape):
        raise ValueError(f"the files' towers differ: {ta} vs {tb}")
    plain_a = {k for k in sa if not k.startswith("lora.")}
    plain_b = {k for k in sb if not k.startswith("lora.")}
    if plain_a != plain_b:
        raise ValueError(f"the files hold different tensors: {sorted(plain_a ^ plain_b)[:4]}")
    da, db = deltas(sa, ta), deltas(sb, tb)
    r = rank or max(ta.lora_rank, tb.lora_rank)
    if r <= 0:
        raise ValueError(f"--rank must be positive, got {r}")
    tower = TowerConfig(**{**ta.__dict__, "lora_rank": r})
    scale = tower.lora_alpha / r
    out = {k: (1 - alpha) * sa[k] + alpha * sb[k] for k in sorted(plain_a)}
    worst = 0.0
    for name in sorted(set(da) | set(db)):
        d = (1 - alpha) * da[name] if name in da else 0.0
        d = d + alpha * db[name] if name in db else d
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        k = min(r, s.numel())
        root = s[:k].sqrt()
        fa = torch.zeros(r, d.shape[1], dtype=d.dtype)
        fb = torch.zeros(d.shape[0], r, dtype=d.dtype)
        fa[:k] = root[:, None] * vh[:k]
        fb[:, :k] = u[:, :k] * root[None, :] / scale
        norm = float(s.square().sum().sqrt())
        worst = max(worst, float(s[k:].square().sum().sqrt()) / norm if norm else 0.0)
        out[f"lora.{name}.a"], out[f"lora.{name}.b"] = fa.float(), fb.float()
    return out, tower, worst


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of B, in [0, 1]")
    p.add_argument("--rank", type=int, default=None, help="adapter rank of the result (default: the larger)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    args = p.parse_args(argv)
    for f in (args.a, args.b):
        if not f.is_file():
            p.error(f"no weights file {f}")
    a = read(args.a)
    try:
        state, tower, worst = merge(a, read(args.b), args.alpha, args.rank)
    except ValueError as e:
        p.error(str(e))
    extra = {
        "merged": f"{args.a.name} x{1 - args.alpha:g} + {args.b.name} x{args.alpha:g}",
        "merge_truncation": f"{worst:.2e}",
        "step": a[1].get("step", "0"),
    }
    sha = save_trained(args.out, state, tower, extra, getattr(torch, args.dtype))
    print(f"{args.out} rank {tower.lora_rank} worst truncation {worst:.2e} sha256 {sha}")


if __name__ == "__main__":
    main()
