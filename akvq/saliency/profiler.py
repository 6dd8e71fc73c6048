"""Layer-pattern profiler: per-layer attention statistics (paper Fig. 2-4) and the TSA/PSA rule (Table I).

Runs a few prompts one at a time with eager attention (the only place akvq materialises attention
probabilities) and measures, per decoder layer, what the last `window` prompt queries attend to (the queries
closest to decoding; each row sums to 1, so every number below is a share of attention mass):

- `recent_share`: mass on the last `recent` tokens (locality, Fig. 2); `rest_share` = 1 - recent_share.
- `text_mean_attn` / `vision_mean_attn`: mean mass per text / vision token, excluding the first `skip_first`
  tokens (as the paper does) and the observation window itself (so recency does not count as salience) (Fig. 3).
- `topk_share`: mass on the layer's own top-k tokens (how concentrated the layer is, an oracle);
  `pivot_mass`: mass on the detected pivots; `random_mass`: on k random prompt tokens (mean of draws);
  `first_token_share`: on the first token (Fig. 4). `*_all` variants average over every query row.
  `pivot_vision_mass`: the part of `pivot_mass` on vision-token pivots; `topk_vision_frac`: the share of the
  prefix oracle's top-k that are vision tokens (whether a layer's attention sinks sit on images or text).
  Pivots are detected on the prompt *without* the observation window (held out, like decode queries), so
  `pivot_mass` measures prediction, not fit; `topk_prefix_share` is the oracle over the same positions and
  the random tokens are drawn from them too. (When vision tokens fall inside the window, detection sees the
  whole prompt; `heldout` says which.)
- `act_max`, `act_median`, `act_ratio`, `act_argmax`: residual-stream magnitudes after the layer (where
  massive activations appear; used to pick the pivot detection layer).

Rule (`classify`): a layer is TSA when the prompt has vision tokens, text tokens get at least `tsa_ratio` times
the mean attention of vision tokens, and attention is not concentrated (`topk_share < psa_share`); otherwise PSA.
Text-only models therefore come out all-PSA: TSA is a statement about text vs vision tokens.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from akvq.models.registry import decoder_layers
from akvq.paths import save_figure
from akvq.saliency.pivots import DEFAULT_K, PivotDetector
from akvq.saliency.roles import vision_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PivotSite:
    """Where one prompt's pivots fell: the prompt's ids and the pivot / vision masks, all [T]."""

    input_ids: torch.Tensor
    pivots: torch.Tensor
    vision: torch.Tensor


@dataclass
class ProfileSettings:
    k: int = DEFAULT_K
    window: int = 32
    recent: int = 32
    skip_first: int = 5
    tsa_ratio: float = 1.0
    psa_share: float = 0.5
    random_draws: int = 32
    seed: int = 0
    pivot_rule: str = "massive"
    pivot_layer: int | None = None
    pivot_score: str = "max_abs"


def _layer_stats(
    attn: torch.Tensor,
    vis: torch.Tensor,
    pivots: torch.Tensor,
    hidden: torch.Tensor | None,
    s: ProfileSettings,
    gen: torch.Generator,
    cand: int,
) -> dict[str, float]:
    """Statistics of one layer for one prompt; attn [H, T, T] (no padding), vis / pivots [T] bool.

    `cand`: pivots were chosen among positions < cand (the prefix before the held-out window), so the
    random baseline and the prefix oracle draw from the same positions."""
    a = attn.float().mean(0)  # [T, T], heads averaged
    t = a.shape[0]
    w = min(s.window, t)
    r = a[t - w :].mean(0)  # [T] mass each key gets from the window queries; sums to 1
    r_all = a.mean(0)
    pos = torch.arange(t)
    body = (pos >= s.skip_first) & (pos < t - w)
    text_b, vis_b = body & ~vis, body & vis
    k = min(s.k, cand)
    rand = torch.stack([torch.randperm(cand, generator=gen)[:k] for _ in range(s.random_draws)])  # [D, k]
    top_prefix = r[:cand].topk(k)  # the oracle over the positions pivots are chosen from
    out = {
        "tokens": float(t),
        "vision_tokens": float(vis.sum()),
        "recent_share": float(r[max(0, t - s.recent) :].sum()),
        "first_token_share": float(r[0]),
        "topk_share": float(r.topk(min(s.k, t)).values.sum()),
        "topk_prefix_share": float(top_prefix.values.sum()),
        "pivot_mass": float(r[pivots].sum()),
        "pivot_vision_mass": float(r[pivots & vis].sum()),
        "topk_vision_frac": float(vis[top_prefix.indices].float().mean()),
        "random_mass": float(r[rand].sum(-1).mean()),
        "pivot_mass_all": float(r_all[pivots].sum()),
        "random_mass_all": float(r_all[rand].sum(-1).mean()),
        "text_mean_attn": float(r[text_b].mean()) if text_b.any() else math.nan,
        "vision_mean_attn": float(r[vis_b].mean()) if vis_b.any() else math.nan,
    }
    out["rest_share"] = 1.0 - out["recent_share"]
    if hidden is not None:
        mag = hidden.float().abs()  # [T, D]
        per_tok = mag.amax(-1)
        out["act_max"] = float(per_tok.max())
        out["act_median"] = float(mag.median())
        out["act_ratio"] = out["act_max"] / max(out["act_median"], 1e-12)
        out["act_argmax"] = float(per_tok.argmax())
    return out


def _prefix(inputs: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first n prompt tokens: every [1, T] tensor is cut; pixel tensors stay (no vision token is cut)."""
    t = inputs["input_ids"].shape[1]
    out = {}
    for key, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == (1, t) and key != "image_sizes":
            out[key] = v[:, :n]
        else:
            out[key] = v
    return out


def _keep_output(store: dict[int, torch.Tensor], i: int) -> Any:
    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        h = output[0] if isinstance(output, tuple | list) else output
        store[i] = h[0].detach().cpu()

    return hook


@torch.no_grad()
def profile_attention(
    model: torch.nn.Module,
    samples: Iterable[Mapping[str, Any]],
    settings: ProfileSettings | None = None,
    candidates: Mapping[str, Mapping[str, Any]] | None = None,
    sites: list[PivotSite] | None = None,
) -> list[dict[str, Any]]:
    """Per-layer rows averaged over `samples` (each a batch-1 input dict); eager attention only for this call.

    `candidates` ({name: PivotDetector kwargs}) are extra pivot rules run in the same forward; each adds a
    column `mass:<name>` (window-query mass on its pivots), used to choose the detector's defaults. With
    `sites`, each prompt's pivots are appended to it (for `pivot_location_markdown`)."""
    s = settings or ProfileSettings()
    layers = decoder_layers(model)
    n = len(layers)
    prev = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(s.seed)
    sums: list[dict[str, float]] = [{} for _ in range(n)]
    counts: list[dict[str, int]] = [{} for _ in range(n)]
    n_samples = 0
    try:
        for inputs in samples:
            ids = inputs["input_ids"]
            if ids.shape[0] != 1:
                raise ValueError("profile_attention takes batch-1 inputs (no padding)")
            vis = vision_mask(model, inputs)[0].cpu()
            det_kw: dict[str, Any] = {"k": s.k, "rule": s.pivot_rule, "score": s.pivot_score}
            if s.pivot_layer is not None:
                det_kw["layer"] = s.pivot_layer
            hiddens: dict[int, torch.Tensor] = {}
            handles = [
                layer.register_forward_hook(_keep_output(hiddens, i)) for i, layer in enumerate(layers)
            ]
            # Pivots are detected on the prompt without its last `window` tokens, whose queries then measure
            # the mass the pivots receive: held out, like decode-time queries (unless vision tokens sit there).
            t = ids.shape[1]
            w = min(s.window, t - 1)
            cand = t - w if w > 0 and not vis[t - w :].any() else t
            dets = {"": PivotDetector(model, None, **det_kw)}
            dets.update({name: PivotDetector(model, None, **kw) for name, kw in (candidates or {}).items()})
            with contextlib.ExitStack() as stack:
                for d in dets.values():
                    stack.enter_context(d)
                model(**_prefix(inputs, cand), use_cache=False)
            masks = {}
            for name, d in dets.items():
                if d.mask is None:
                    raise RuntimeError("a pivot detector did not fire on the profiling forward")
                m = torch.zeros(t, dtype=torch.bool)
                m[:cand] = d.mask[0].cpu()
                masks[name] = m
            pivots = masks.pop("")
            if sites is not None:
                sites.append(PivotSite(ids[0].cpu(), pivots.clone(), vis.clone()))
            try:
                out = model(**inputs, output_attentions=True, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            attns = out.attentions
            if attns is None or len(attns) != n:
                raise RuntimeError(
                    f"expected {n} attention maps, got {None if attns is None else len(attns)}"
                )
            for i in range(n):
                a_i = attns[i][0].cpu()
                st = _layer_stats(a_i, vis, pivots, hiddens.get(i), s, gen, cand)
                st["heldout"] = float(cand < t)
                if masks:
                    w = min(s.window, a_i.shape[-1])
                    r = a_i.float().mean(0)[-w:].mean(0)
                    st.update({f"mass:{name}": float(r[m].sum()) for name, m in masks.items()})
                for key, v in st.items():
                    if not math.isnan(v):
                        sums[i][key] = sums[i].get(key, 0.0) + v
                        counts[i][key] = counts[i].get(key, 0) + 1
            n_samples += 1
    finally:
        if prev is not None:
            model.set_attn_implementation(prev)
    if n_samples == 0:
        raise ValueError("no samples to profile")
    rows = []
    keys = sorted({k for d in sums for k in d} | {"text_mean_attn", "vision_mean_attn"})
    for i in range(n):
        row: dict[str, Any] = {"layer": i}
        for key in keys:
            c = counts[i].get(key, 0)
            row[key] = sums[i][key] / c if c else math.nan
        row["samples"] = n_samples
        rows.append(row)
    return rows


def classify(rows: list[dict[str, Any]], tsa_ratio: float = 1.0, psa_share: float = 0.5) -> list[str]:
    """TSA/PSA per layer by the rule in the module docstring."""
    out = []
    for r in rows:
        text, vis = r.get("text_mean_attn", math.nan), r.get("vision_mean_attn", math.nan)
        has_vision = not (math.isnan(vis) or math.isnan(text))
        diffuse = r["topk_share"] < psa_share
        out.append("tsa" if has_vision and diffuse and text >= tsa_ratio * vis else "psa")
    return out


def write_csv(
    rows: list[dict[str, Any]], path: str | Path, model: str, pattern: list[str] | None = None
) -> Path:
    import pandas as pd

    df = pd.DataFrame(rows)
    df.insert(0, "model", model)
    if pattern is not None:
        df["pattern"] = pattern
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(p, index=False, float_format="%.6g")
    return p


def plot_profile(rows: list[dict[str, Any]], out_prefix: str | Path, title: str) -> list[Path]:
    """Three panels in the spirit of paper Fig. 2-4: locality, text vs vision per token, pivots vs random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    ax = axes[0]
    ax.plot(layers, [r["recent_share"] for r in rows], marker="o", ms=3, label="recent window")
    ax.plot(layers, [r["first_token_share"] for r in rows], marker="s", ms=3, label="first token")
    ax.set_title("(a) locality: attention share")
    ax.set_ylim(0, 1)
    ax = axes[1]
    text = [r.get("text_mean_attn", math.nan) for r in rows]
    vis = [r.get("vision_mean_attn", math.nan) for r in rows]
    ax.plot(layers, text, marker="o", ms=3, label="text (per token)")
    if not all(math.isnan(v) for v in vis):
        ax.plot(layers, vis, marker="^", ms=3, label="vision (per token)")
    else:
        ax.text(
            0.5, 0.9, "text-only model: no vision tokens", transform=ax.transAxes, ha="center", fontsize=8
        )
    ax.set_yscale("log")
    ax.set_title("(b) TSA: mean attention per token")
    ax = axes[2]
    ax.plot(
        layers,
        [r["topk_prefix_share"] for r in rows],
        marker="o",
        ms=3,
        label="top-k (oracle, same positions)",
    )
    ax.plot(layers, [r["pivot_mass"] for r in rows], marker="s", ms=3, label="detected pivots")
    ax.plot(layers, [r["random_mass"] for r in rows], marker="x", ms=3, label="random tokens")
    ax.set_ylim(0, 1)
    ax.set_title("(c) PSA: share held by k tokens")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_suffix(".png"), prefix.with_suffix(".pdf")]
    for p in paths:
        save_figure(fig, p, dpi=150)
    plt.close(fig)
    return paths


def pivot_table_markdown(rows: list[dict[str, Any]], k: int) -> str:
    """Per-layer pivots-vs-random attention mass as a markdown table."""
    lines = [
        f"| layer | pivots (k={k}) | random k | ratio | oracle top-k (same positions) | first token "
        "| pivots, all queries | random, all queries | on vision pivots | oracle top-k: vision share |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["pivot_mass"] / max(r["random_mass"], 1e-12)
        lines.append(
            f"| {r['layer']} | {r['pivot_mass']:.3f} | {r['random_mass']:.3f} | {ratio:.1f}x | {r['topk_prefix_share']:.3f} "
            f"| {r['first_token_share']:.3f} | {r['pivot_mass_all']:.3f} | {r['random_mass_all']:.3f} "
            f"| {r.get('pivot_vision_mass', math.nan):.3f} | {r.get('topk_vision_frac', math.nan):.2f} |"
        )
    mean = {
        key: sum(r[key] for r in rows) / len(rows)
        for key in ("pivot_mass", "random_mass", "topk_prefix_share")
    }
    lines.append(
        f"| mean | {mean['pivot_mass']:.3f} | {mean['random_mass']:.3f} | "
        f"{mean['pivot_mass'] / max(mean['random_mass'], 1e-12):.1f}x | {mean['topk_prefix_share']:.3f} | | | | | |"
    )
    return "\n".join(lines)


def _runs(mask: torch.Tensor) -> torch.Tensor:
    """Offset of each position inside its run of consecutive True values (0 at a run's start); -1 outside."""
    off = torch.full(mask.shape, -1, dtype=torch.long)
    run = -1
    for i, m in enumerate(mask.tolist()):
        run = run + 1 if m else -1
        off[i] = run
    return off


def pivot_location_markdown(sites: list[PivotSite], decode: Any, top: int = 10) -> str:
    """Where pivots fall: vision vs text (against the prompt's own vision share), position in the prompt, the
    offset inside an image's tokens, and the text tokens most often chosen. `decode(id) -> str`."""
    if not sites:
        raise ValueError("no pivot sites")
    n_piv = n_vis_piv = n_tok = n_vis_tok = first = before = after = n_before = n_after = 0
    quarters = [0, 0, 0, 0]
    offsets: dict[int, int] = {}
    words: dict[str, int] = {}
    for s in sites:
        t = s.input_ids.shape[0]
        idx = s.pivots.nonzero().flatten().tolist()
        n_piv += len(idx)
        n_tok += t
        n_vis_tok += int(s.vision.sum())
        n_vis_piv += int((s.pivots & s.vision).sum())
        first += int(s.pivots[0])
        # text tokens right before / after an image's tokens (labels, separators)
        pre = torch.zeros_like(s.vision)
        pre[:-1] = ~s.vision[:-1] & s.vision[1:]
        post = torch.zeros_like(s.vision)
        post[1:] = ~s.vision[1:] & s.vision[:-1]
        before, after = before + int((s.pivots & pre).sum()), after + int((s.pivots & post).sum())
        n_before, n_after = n_before + int(pre.sum()), n_after + int(post.sum())
        off = _runs(s.vision)
        for i in idx:
            quarters[min(3, 4 * i // t)] += 1
            if s.vision[i]:
                offsets[int(off[i])] = offsets.get(int(off[i]), 0) + 1
            else:
                w = repr(decode(int(s.input_ids[i]))).replace("|", "\\|")
                words[w] = words.get(w, 0) + 1
    pct = lambda a, b: f"{100 * a / max(b, 1):.1f}%"  # noqa: E731
    lines = [
        f"{len(sites)} prompts, {n_piv} pivots ({n_piv / len(sites):.1f} per prompt).",
        "",
        "| where | pivots | prompt tokens |",
        "|---|---:|---:|",
        f"| vision tokens | {pct(n_vis_piv, n_piv)} | {pct(n_vis_tok, n_tok)} |",
        f"| text tokens | {pct(n_piv - n_vis_piv, n_piv)} | {pct(n_tok - n_vis_tok, n_tok)} |",
        f"| the first token | {pct(first, n_piv)} | {pct(len(sites), n_tok)} |",
        f"| the text token right before an image | {pct(before, n_piv)} | {pct(n_before, n_tok)} |",
        f"| the text token right after an image | {pct(after, n_piv)} | {pct(n_after, n_tok)} |",
    ]
    for q, c in enumerate(quarters):
        lines.append(f"| quarter {q + 1} of the prompt | {pct(c, n_piv)} | 25% |")
    if offsets:
        lines += [
            "",
            "Vision pivots by offset inside their image's tokens (0 = the image's first token):",
            "",
        ]
        lines += ["| offset | pivots |", "|---:|---:|"]
        lines += [f"| {o} | {c} |" for o, c in sorted(offsets.items())]
    if words:
        lines += ["", f"Text pivots, the {top} most frequent tokens:", "", "| token | pivots |", "|---|---:|"]
        ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        lines += [f"| `{w}` | {c} |" for w, c in ranked]
    return "\n".join(lines)


def settings_dict(s: ProfileSettings) -> dict[str, Any]:
    return asdict(s)
