#!/usr/bin/env python
"""Profile a model's per-layer attention (paper Fig. 2-4), classify layers TSA/PSA (Table I), measure pivots.

Writes under --out: profile.csv (one row per layer), profile.png/.pdf, pivots.md (pivot vs random attention
mass per layer), pattern.yaml (the layer pattern), and with --sweep pivot_sweep.csv/.md (which detection
layer/score captures most attention). --write-pattern also installs the pattern as
configs/layer_patterns/<model>.yaml, which the akvq policy reads.

  python scripts/profile_layers.py --model smollm2-135m --samples 8 --length 512 --sweep --write-pattern
  python scripts/profile_layers.py --model llava-1.5-7b --milebench-root DIR --dataset SceneTransition \
      --samples 8 --write-pattern          # on a GPU

Text-only models are profiled on real English text (CPython's pydoc topics); vision models on MileBench
samples (--milebench-root) or, for mechanics only, on synthetic images (--synthetic-images).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from akvq.models import ModelSpec, build_inputs, load_model  # noqa: E402
from akvq.models.registry import num_layers  # noqa: E402
from akvq.paths import write_atomic  # noqa: E402
from akvq.saliency import patterns  # noqa: E402
from akvq.saliency.profiler import (  # noqa: E402
    PivotSite,
    ProfileSettings,
    classify,
    pivot_location_markdown,
    pivot_table_markdown,
    plot_profile,
    profile_attention,
    settings_dict,
    write_csv,
)

log = logging.getLogger("profile_layers")


def load_spec(name: str) -> ModelSpec:
    p = Path(name)
    if not p.suffix:
        p = REPO / "configs" / "model" / f"{name}.yaml"
    return ModelSpec.from_dict(yaml.safe_load(p.read_text()))


def text_samples(loaded: Any, n: int, length: int) -> list[dict[str, torch.Tensor]]:
    """`n` windows of `length` tokens spread evenly over CPython's pydoc topic help (real English prose)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    if n * length > len(ids):
        raise ValueError(f"corpus has {len(ids)} tokens; {n} windows of {length} do not fit")
    stride = (len(ids) - length) // max(n - 1, 1)
    device = loaded.model.get_input_embeddings().weight.device
    out = []
    for i in range(n):
        win = torch.tensor([ids[i * stride : i * stride + length]], device=device)
        out.append({"input_ids": win, "attention_mask": torch.ones_like(win)})
    return out


def milebench_samples(loaded: Any, root: str, dataset: str, n: int, length: int) -> list[Any]:
    from PIL import Image

    from akvq.tasks import milebench as mb
    from akvq.tasks.generation import image_token_count

    tokens_per_image = image_token_count(
        loaded
    )  # the model's own count (576 for LLaVA-1.5, 16 for synth-vlm)
    out = []
    for sample in mb.load_dataset(mb.resolve_root(root), dataset, limit=n):
        prompt = mb.build_prompt(sample, loaded.tokenizer, length, tokens_per_image)
        images = [Image.open(p).convert("RGB") for p in prompt.images]
        out.append(build_inputs(loaded, [prompt.text.replace(mb.IMAGE, "<image>")], [images]))
    return out


def synthetic_vision_samples(loaded: Any, n: int, length: int) -> list[Any]:
    """Prompts with three smooth synthetic images between real text: exercises the mechanics, not a finding."""
    import numpy as np
    from PIL import Image

    text = text_samples(loaded, n, length)
    out = []
    for i, s in enumerate(text):
        words = loaded.tokenizer.decode(s["input_ids"][0]).split()
        third = max(1, len(words) // 3)
        prompt = (
            " ".join(words[:third]) + " <image> " + " ".join(words[third : 2 * third]) + " <image> <image> "
        )
        prompt += " ".join(words[2 * third :])
        rs = np.random.RandomState(i)
        imgs = []
        for j in range(3):
            g = np.linspace(0, 1, 64)[None, :, None] * rs.rand(1, 1, 3) + rs.rand(64, 1, 1) * 0.3
            imgs.append(Image.fromarray((np.clip(g, 0, 1) * 255).astype("uint8")).resize((56 + 28 * j, 56)))
        out.append(build_inputs(loaded, [prompt], [imgs]))
    return out


def sweep_candidates(n_layers: int) -> dict[str, dict[str, Any]]:
    layers = sorted({1, 2, 3, 4, 5, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1} - {0})
    cands: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for score in ("max_abs", "norm", "massive_channels"):
            cands[f"massive/{score}/L{layer}"] = {"rule": "massive", "score": score, "layer": layer}
    cands["attention/w32"] = {"rule": "attention", "window": 32}
    return cands


def summarize_sweep(rows: list[dict[str, Any]], pattern: list[str], out: Path) -> None:
    import pandas as pd

    names = sorted({k[5:] for r in rows for k in r if k.startswith("mass:")})
    table = []
    for name in names:
        vals = [r[f"mass:{name}"] for r in rows]
        table.append(
            {
                "candidate": name,
                "mean_mass_all_layers": sum(vals) / len(vals),
                "mean_mass_layers_2plus": sum(vals[2:]) / max(1, len(vals[2:])),
                "min_mass": min(vals),
            }
        )
    df = pd.DataFrame(table).sort_values("mean_mass_all_layers", ascending=False)
    df.to_csv(out / "pivot_sweep.csv", index=False, float_format="%.4f")
    oracle = sum(r["topk_prefix_share"] for r in rows) / len(rows)
    rand = sum(r["random_mass"] for r in rows) / len(rows)
    lines = [
        f"Attention mass that the last window of prompt queries (held out from detection) gives to k pivots, "
        f"averaged over layers (per-layer oracle top-k over the same positions {oracle:.3f}, random k tokens "
        f"{rand:.3f}).",
        "",
        "| candidate | mean mass (all layers) | mean mass (layers 2+) | min over layers |",
        "|---|---:|---:|---:|",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.candidate} | {r.mean_mass_all_layers:.3f} | {r.mean_mass_layers_2plus:.3f} | {r.min_mass:.3f} |"
        )
    write_atomic(out / "pivot_sweep.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="configs/model/<name>.yaml name, or a YAML path")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--length", type=int, default=512, help="prompt tokens per text sample / context budget")
    ap.add_argument("--out", default=None, help="output dir (default results/saliency/<model>)")
    ap.add_argument("--milebench-root", default=None)
    ap.add_argument("--dataset", default="SceneTransition")
    ap.add_argument("--synthetic-images", action="store_true", help="VLM mechanics check without MileBench")
    ap.add_argument("--k", type=int, default=15)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--recent", type=int, default=32)
    ap.add_argument("--tsa-ratio", type=float, default=1.0)
    ap.add_argument("--psa-share", type=float, default=0.5)
    ap.add_argument("--pivot-rule", default="massive")
    ap.add_argument("--pivot-layer", type=int, default=None)
    ap.add_argument("--pivot-score", default="max_abs")
    ap.add_argument("--sweep", action="store_true", help="also compare pivot detection layers/scores")
    ap.add_argument(
        "--write-pattern", action="store_true", help="install configs/layer_patterns/<model>.yaml"
    )
    ap.add_argument("--pattern-dir", default=str(patterns.PATTERNS_DIR))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)

    t0 = time.time()
    spec = load_spec(args.model)
    loaded = load_model(spec)
    name = spec.layer_pattern or spec.name
    out = Path(args.out) if args.out else REPO / "results" / "saliency" / name
    out.mkdir(parents=True, exist_ok=True)
    if loaded.is_vision and args.milebench_root:
        samples = milebench_samples(loaded, args.milebench_root, args.dataset, args.samples, args.length)
        data = f"MileBench/{args.dataset}, {len(samples)} samples"
    elif loaded.is_vision:
        if not args.synthetic_images:
            ap.error("vision models need --milebench-root (or --synthetic-images for a mechanics check)")
        samples = synthetic_vision_samples(loaded, args.samples, args.length)
        data = f"synthetic images + pydoc text, {len(samples)} samples (mechanics only)"
    else:
        samples = text_samples(loaded, args.samples, args.length)
        data = f"pydoc topics text, {len(samples)} windows of {args.length} tokens"
    settings = ProfileSettings(
        k=args.k,
        window=args.window,
        recent=args.recent,
        tsa_ratio=args.tsa_ratio,
        psa_share=args.psa_share,
        pivot_rule=args.pivot_rule,
        pivot_layer=args.pivot_layer,
        pivot_score=args.pivot_score,
    )
    n = num_layers(loaded.model)
    cands = sweep_candidates(n) if args.sweep else None
    sites: list[PivotSite] = []
    rows = profile_attention(loaded.model, samples, settings, cands, sites)
    pattern = classify(rows, settings.tsa_ratio, settings.psa_share)
    command = "python scripts/profile_layers.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    write_csv(
        [{k: v for k, v in r.items() if not k.startswith("mass:")} for r in rows],
        out / "profile.csv",
        name,
        pattern,
    )
    plot_profile(rows, out / "profile", f"{name}: {data}")
    write_atomic(
        out / "pivots.md",
        f"# {name}: attention mass on detected pivots vs random tokens\n\n"
        f"Data: {data}. Pivots: rule={settings.pivot_rule}, score={settings.pivot_score}, "
        f"layer={settings.pivot_layer if settings.pivot_layer is not None else 'default'}, k={settings.k}. "
        f"Mass = share of the attention of the last {settings.window} prompt queries (heads averaged); "
        f"'all queries' = every query row. Random = mean of {settings.random_draws} draws of k prompt tokens.\n\n"
        + pivot_table_markdown(rows, settings.k)
        + "\n\n## Where the pivots fall\n\n"
        + pivot_location_markdown(sites, lambda i: loaded.tokenizer.decode([i]))
        + f"\n\nCommand: `{command}`\n",
    )
    if cands:
        summarize_sweep(rows, pattern, out)
    source = f"profiler: `{command}` ({data})"
    extra = {
        "rule": {
            k: v
            for k, v in settings_dict(settings).items()
            if k in ("tsa_ratio", "psa_share", "k", "window", "skip_first")
        }
    }
    aliases = [spec.path] if spec.source == "hub" and spec.path else []
    kw = dict(profiled=True, aliases=aliases, extra=extra)
    patterns.write_layer_pattern(out / "pattern.yaml", name, pattern, source, **kw)
    if args.write_pattern:
        p = patterns.write_layer_pattern(Path(args.pattern_dir) / f"{name}.yaml", name, pattern, source, **kw)
        log.info("installed layer pattern %s", p)
    log.info("pattern: %s", pattern)
    log.info("wrote %s in %.0f s", out, time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
