"""Figures 2-5, 8 and 9: each a function from tidy data to (figure, data frame), saved by `style.save`.

Why split data from drawing: the CSV beside each figure is exactly the frame drawn, and the notebook can
show the frame and the figure without writing files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from akvq.artifacts import data, style
from akvq.artifacts.tables import is_paper_task

# ----------------------------------------------------------------------------------------------- shared


def one_kind_of_model(models: Any, random_weights: bool | None = None) -> set[str]:
    """The models one figure may show: real and random-weight models are never drawn together. By default the
    real ones when there are any (the random ones only show the pipeline's mechanics)."""
    names = {str(m) for m in models}
    real = {m for m in names if not style.is_random_weights(m)}
    if random_weights is None:
        return real or names
    return names - real if random_weights else real


def legend_on_top(fig: Any, axes: Any, rows: int, order: Any = None) -> None:
    """One legend for all panels, off the data: above them while it fits in two rows, else in columns to the
    right (the figure widens for it), so a long method list never squeezes the panels."""
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if not handles:
        fig.tight_layout()
        return
    names = sorted(handles, key=order) if order else list(handles)
    width, height = fig.get_size_inches()
    longest = max(len(n) for n in names)
    entry_w = 0.45 + 0.075 * longest  # inches: marker + text at the house font size
    ncol = max(1, min(len(names), int(width / entry_w)))
    if math.ceil(len(names) / ncol) <= 2:
        top = 1 - 0.28 * math.ceil(len(names) / ncol) / height
        fig.tight_layout(rect=(0, 0, 1, top))
        fig.legend([handles[n] for n in names], names, loc="upper center", ncol=ncol, frameon=False,
                   bbox_to_anchor=(0.5, 1.0))  # fmt: skip
        return
    per_col = max(1, int((height - 0.2) / 0.21))
    cols = math.ceil(len(names) / per_col)
    extra = cols * entry_w
    fig.set_size_inches(width + extra, height)
    right = width / (width + extra)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend([handles[n] for n in names], names, loc="center left", ncol=cols, frameon=False,
               bbox_to_anchor=(right, 0.5))  # fmt: skip


# ----------------------------------------------------------------------------------------------- Fig. 8


def fig8_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """(model, task panel, method, effective bits, headline metric). MileBench datasets are averaged into one
    `milebench (avg)` panel per model, as the paper's Fig. 8 plots the average; other tasks get a panel each."""
    prim = data.primary_frame(records)
    if prim.empty:
        return pd.DataFrame()
    prim = prim.dropna(subset=["kv_effective_bits", "value"])
    if prim.empty:
        return pd.DataFrame()
    prim = prim.assign(
        panel=[t.split("/")[0] + " (avg)" if is_paper_task(t) and "/" in t else t for t in prim["task"]]
    )
    agg = (
        prim.groupby(["model", "panel", "quant"], as_index=False)
        .agg(kv_effective_bits=("kv_effective_bits", "mean"), value=("value", "mean"), metric=("metric", "first"),
             lower_is_better=("lower_is_better", "first"), n_tasks=("task", "nunique"))
    )  # fmt: skip
    # an average over fewer tasks is not comparable (e.g. ablation steps run on Scene Transition only)
    full = agg.groupby(["model", "panel"])["n_tasks"].transform("max")
    agg = agg[agg["n_tasks"] == full].reset_index(drop=True)
    return agg


def fig8(records: list[dict[str, Any]]) -> tuple[Any, pd.DataFrame] | None:
    """Accuracy (or perplexity) vs KV effective bits, one marker per method, one panel per (model, task).
    Real models only when there are any (random-weight models' numbers mean nothing beside them)."""
    df = fig8_frame(records)
    if df.empty:
        return None
    df = df[df["model"].isin(one_kind_of_model(df["model"]))].reset_index(drop=True)
    panels = sorted(df.groupby(["model", "panel"]).groups, key=lambda k: (not is_paper_task(k[1]), k))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = style.figure(nrows, ncols, width=4.2, height=3.6)
    for ax, (model, panel) in zip(axes.flat, panels):
        sub = df[(df["model"] == model) & (df["panel"] == panel)]
        for _, r in sub.iterrows():
            ax.scatter(r["kv_effective_bits"], r["value"], color=style.color(r["quant"]), marker=style.marker(r["quant"]),
                       s=40, label=style.label(r["quant"]), zorder=3, edgecolor="black", linewidth=0.4)  # fmt: skip
        fp = sub[sub["quant"] == "fp16"]
        if not fp.empty:
            ax.axhline(float(fp["value"].iloc[0]), color=style.color("fp16"), linestyle="--", linewidth=0.8)
        metric = str(sub["metric"].iloc[0])
        log_y = bool((sub["value"] > 0).all() and sub["value"].max() / sub["value"].min() >= 10)
        if log_y:  # e.g. perplexity 12 (fp16) to 230 (RTN-2): linear squashes the methods that matter
            ax.set_yscale("log")
            lo, hi = float(sub["value"].min()), float(sub["value"].max())
            ticks = [m * 10**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                     for m in (1, 2, 5) if lo / 1.3 <= m * 10**k <= hi * 1.3]  # fmt: skip
            ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
            ax.yaxis.set_minor_formatter("")
        ax.set_xscale("log", base=2)
        ax.set_xticks([2, 3, 4, 6, 8, 16], ["2", "3", "4", "6", "8", "16"])
        ax.minorticks_off()
        ax.set_xlabel("KV effective bits per element")
        n = int(sub["n_tasks"].max())
        text = style.metric_label(metric, "" if n > 1 else panel.split("/")[0])
        ylab = f"mean {text} over {n} tasks" if n > 1 else text
        lower = bool(sub["lower_is_better"].iloc[0])
        if not log_y and not lower:
            ax.set_ylim(bottom=0)  # accuracy from 0, so the distance to fp16 reads true
        ax.set_ylabel(ylab + (", log" if log_y else "") + (" (lower is better)" if lower else ""))
        ax.set_title(f"{model} | {panel}")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    by_label = {style.label(q): q for q in df["quant"].unique()}
    legend_on_top(fig, axes, nrows, order=lambda lab: style.method_sort_key(by_label.get(lab, lab)))
    return fig, df


# ----------------------------------------------------------------------------------------------- Fig. 9

BATCH_KEYS = ("batch", "batch_size")
MEM_KEYS = ("peak_memory_bytes", "peak_bytes", "memory_bytes", "peak_memory")


def memory_curve(rec: dict[str, Any]) -> list[tuple[float, float]]:
    """(batch, peak bytes) points in one efficiency record: a list of points under any metrics key
    (`memory_vs_batch`, `points`, ...), else the benchmark's two summary points (the fixed batch and the
    largest batch found, `peak_gib_at_batch` / `peak_gib_at_largest`)."""
    metrics = rec.get("metrics") or {}
    pts: list[tuple[float, float]] = []
    for val in metrics.values():
        if isinstance(val, list):
            for p in val:
                if isinstance(p, dict) and not p.get("oom"):
                    b = next((p[k] for k in BATCH_KEYS if data.is_number(p.get(k))), None)
                    m = next((p[k] for k in MEM_KEYS if data.is_number(p.get(k))), None)
                    if b is not None and m is not None:
                        pts.append((float(b), float(m)))
    if not pts:
        fixed = ((rec.get("config") or {}).get("bench") or {}).get("batch")
        for b, gib in (
            (fixed, metrics.get("peak_gib_at_batch")),
            (metrics.get("largest_batch"), metrics.get("peak_gib_at_largest")),
        ):
            if data.is_number(b) and data.is_number(gib):
                pts.append((float(b), float(gib) * 2**30))
    return sorted(set(pts))


FIG9_COLUMNS = ["model", "prompt_len", "quant", "batch", "peak_memory_gib", "device", "source"]


def _source(path: Path) -> str:
    """A points file as the CSV beside the figure names it: relative to the repository, never absolute."""
    from akvq.artifacts.sweeps import REPO

    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name


def points_frame(paths: list[Path]) -> pd.DataFrame:
    """Every measured (batch, peak) point from the benchmark's `points.csv` files (OOM points dropped)."""
    frames = []
    for p in paths:
        if not p.is_file():
            continue
        df = pd.read_csv(p)
        if not {"model", "prompt_len", "quant", "batch", "peak_bytes"} <= set(df.columns):
            continue
        if "oom" in df.columns:
            df = df[~df["oom"].astype(str).str.lower().isin(("true", "1"))]
        df = df.assign(
            peak_memory_gib=pd.to_numeric(df["peak_bytes"], errors="coerce") / 2**30, source=_source(p)
        )
        frames.append(df.reindex(columns=FIG9_COLUMNS))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FIG9_COLUMNS)


def fig9_frame(records: list[dict[str, Any]], points: list[Path] | None = None) -> pd.DataFrame:
    """(model, prompt length, method, batch, peak GiB): the benchmark's measured points when its points.csv is
    there, plus the points the records hold; a point measured twice keeps the last."""
    rows = []
    for r in data.efficiency_records(records):
        m = r.get("metrics") or {}
        prompt = m.get("prompt_len") or ((r.get("config") or {}).get("bench") or {}).get("prompt_len")
        for b, mem in memory_curve(r):
            rows.append({"model": str(r.get("model")), "prompt_len": prompt, "quant": str(r.get("quant")),
                         "batch": b, "peak_memory_gib": mem / 2**30, "device": r.get("device"), "source": "records"})  # fmt: skip
    df = pd.concat([pd.DataFrame(rows, columns=FIG9_COLUMNS), points_frame(points or [])], ignore_index=True)
    if df.empty:
        return df
    df["prompt_len"] = pd.to_numeric(df["prompt_len"], errors="coerce")
    df["batch"] = pd.to_numeric(df["batch"], errors="coerce")
    return (
        df.dropna(subset=["batch", "peak_memory_gib"])
        .drop_duplicates(["model", "prompt_len", "quant", "batch"], keep="last")
        .reset_index(drop=True)
    )


def fig9(
    records: list[dict[str, Any]], points: list[Path] | None = None, random_weights: bool = False
) -> tuple[Any, pd.DataFrame] | None:
    """Peak memory vs batch size per method, one panel per (model, prompt length): the paper's Fig. 9.
    Real models, or (`random_weights=True`) the tiny random-weight ones: never both in one figure."""
    df = fig9_frame(records, points)
    if df.empty:
        return None
    df = df[df["model"].isin(one_kind_of_model(df["model"], random_weights))].reset_index(drop=True)
    if df.empty:
        return None
    panels = sorted(
        df.groupby(["model", "prompt_len"], dropna=False).groups,
        key=lambda k: (style.model_sort_key(str(k[0])), str(k)),
    )
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = style.figure(nrows, ncols, width=3.4, height=2.6)
    budgets = {
        (str(r.get("model")), (r.get("metrics") or {}).get("prompt_len")): (
            (r.get("config") or {}).get("bench") or {}
        ).get("budget_gib")
        for r in data.efficiency_records(records)
    }
    for ax, (model, prompt) in zip(axes.flat, panels):
        sub = df[
            (df["model"] == model)
            & ((df["prompt_len"] == prompt) | (df["prompt_len"].isna() & pd.isna(prompt)))
        ]
        for q in sorted(sub["quant"].unique(), key=style.method_sort_key):
            s = sub[sub["quant"] == q].sort_values("batch")  # joined in batch order, not measurement order
            ax.plot(
                s["batch"],
                s["peak_memory_gib"],
                marker=style.marker(q),
                color=style.color(q),
                label=style.label(q),
                markersize=3.5,
                linewidth=1.0,
            )
        budget = budgets.get((str(model), prompt))
        if data.is_number(budget):
            ax.axhline(float(budget), color="grey", linestyle="--", linewidth=0.8, label="budget")
        ax.set_xlabel("batch size (sequences)")
        ax.set_ylabel("peak memory (GiB)")
        ax.set_title(
            f"{model}"
            + (f" | prompt {int(prompt)} tokens" if prompt is not None and not pd.isna(prompt) else "")
        )
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    by_label = {style.label(q): q for q in df["quant"].unique()}
    legend_on_top(fig, axes, nrows, order=lambda lab: style.method_sort_key(by_label.get(lab, lab)))
    if random_weights:
        fig.suptitle(
            "tiny random-weight models (memory only; no accuracy meaning)", y=0.0, va="top", fontsize=8
        )
    return fig, df


# ----------------------------------------------------------------------------------------------- Fig. 5

FIG5_STATS = ("min", "p01", "p25", "p50", "p75", "p99", "max")


def fig5(stats: pd.DataFrame, layers: list[int] | None = None) -> tuple[Any, pd.DataFrame] | None:
    """Per-channel value ranges of K and V before and after the Walsh-Hadamard transform, for a few layers.

    `stats` has one row per (model, layer, kind, transform, channel) with the columns FIG5_STATS (what
    `scripts/fig5_kv_distribution.py` writes). Rows: layers; columns: K raw, K WHT, V raw, V WHT."""
    if stats is None or stats.empty:
        return None
    all_layers = sorted(stats["layer"].unique())
    layers = [x for x in (layers or all_layers) if x in all_layers][:4]
    df = stats[stats["layer"].isin(layers)].copy()
    cols = [("key", "none"), ("key", "wht"), ("value", "none"), ("value", "wht")]
    fig, axes = style.figure(len(layers), 4, width=2.6, height=1.9, sharex=True)
    for i, layer in enumerate(layers):
        for j, (kind, tr) in enumerate(cols):
            ax = axes[i, j]
            s = df[(df["layer"] == layer) & (df["kind"] == kind) & (df["transform"] == tr)].sort_values(
                "channel"
            )
            if s.empty:
                ax.set_visible(False)
                continue
            x = s["channel"].to_numpy()
            c = style.color("kivi2" if kind == "key" else "akvq")
            ax.fill_between(x, s["min"], s["max"], color=c, alpha=0.25, linewidth=0, label="min-max")
            ax.fill_between(x, s["p01"], s["p99"], color=c, alpha=0.55, linewidth=0, label="1-99%")
            ax.plot(x, s["p50"], color="black", linewidth=0.6, label="median")
            if "head_dim" in s.columns:  # head boundaries: the WHT mixes channels within a head only
                hd = int(s["head_dim"].iloc[0])
                for b in range(hd, int(x.max()) + 1, hd):
                    ax.axvline(b - 0.5, color="grey", linewidth=0.5, linestyle=":")
            # same y range before and after the transform, so the flattening is visible
            pair = df[(df["layer"] == layer) & (df["kind"] == kind)]
            lim = float(np.nanmax(np.abs(pair[["min", "max"]].to_numpy()))) * 1.05
            ax.set_ylim(-lim, lim)
            name = "K" if kind == "key" else "V"
            ax.set_title(f"layer {layer}: {name} {'after WHT' if tr == 'wht' else 'raw'}")
            if i == len(layers) - 1:
                ax.set_xlabel("channel (KV head x head dim)")
            if j == 0:
                ax.set_ylabel("value")
    axes[0, 0].legend(loc="upper left", fontsize=6)
    model = str(df["model"].iloc[0]) if "model" in df else ""
    fig.suptitle(f"{model}: per-channel K/V value range before and after WHT", y=1.0)
    fig.tight_layout()
    return fig, df


def load_fig5(paths: list[Path]) -> pd.DataFrame | None:
    """The first existing Fig. 5 data file among `paths` (the extraction script's CSV)."""
    for p in paths:
        if p.is_file():
            df = pd.read_csv(p)
            if set(FIG5_STATS) | {"layer", "kind", "transform", "channel"} <= set(df.columns):
                return df
    return None


# ----------------------------------------------------------------------------------------------- Fig. 2-4

FIG_TITLES = {
    "fig2_locality": "Locality: attention share on the recent window",
    "fig3_tsa": "Text-salient attention: mean attention per text vs vision token",
    "fig4_psa": "Pivot-salient attention: share held by k pivot tokens vs k random tokens",
}


def fig_attention(profiles: pd.DataFrame, fig_name: str) -> tuple[Any, pd.DataFrame] | None:
    """One of Fig. 2-4 from the profiler's per-layer CSVs: one panel per model, x = layer, one line per
    token role; TSA layers shaded when the CSV says which layers are TSA."""
    from akvq.artifacts.saliency import SERIES_ROLE, series_columns

    if profiles is None or profiles.empty:
        return None
    panels = []
    for model, sub in profiles.groupby("model", sort=True):
        cols = series_columns(sub, fig_name)
        if cols:
            panels.append((model, sub.sort_values("layer"), cols))
    keep = one_kind_of_model(m for m, _, _ in panels)
    panels = [p for p in panels if p[0] in keep]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = style.figure(nrows, ncols, width=4.6 if ncols == 1 else 3.4, height=2.6)
    drawn = []
    for ax, (model, sub, cols) in zip(axes.flat, panels):
        ptype = next((c for c in ("pattern", "layer_pattern") if c in sub.columns), None)
        tsa = (
            sub.loc[sub[ptype].astype(str).str.lower() == "tsa", "layer"] if ptype else pd.Series(dtype=float)
        )
        for layer in tsa:
            ax.axvspan(layer - 0.5, layer + 0.5, color="#dddddd", zorder=0, linewidth=0)
        for lab, c in cols.items():
            ax.plot(sub["layer"], sub[c], marker=".", color=style.color(SERIES_ROLE.get(lab, lab)), label=lab)
            drawn.append(
                pd.DataFrame(
                    {"model": model, "layer": sub["layer"], "series": lab, "column": c, "value": sub[c]}
                )
            )
        if fig_name == "fig3_tsa":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1)
        ax.set_xlabel("layer" + (" (grey: TSA layers)" if len(tsa) else ""))
        ax.set_ylabel(
            "mean attention per token (log)"
            if fig_name == "fig3_tsa"
            else "share of attention mass (fraction)"
        )
        ax.set_title(f"{model}: {FIG_TITLES[fig_name]}" if len(panels) == 1 else str(model), wrap=True)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if len(panels) > 1:
        fig.suptitle(FIG_TITLES[fig_name], y=0.0, va="top")
    legend_on_top(fig, axes, nrows)
    return fig, pd.concat(drawn, ignore_index=True)
