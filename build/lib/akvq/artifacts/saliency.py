"""Inputs of Table I and Fig. 2-4: layer-pattern files and the profiler's per-layer attention shares.

Why tolerant readers: the profiler (akvq.saliency) and the shipped `configs/layer_patterns/*.yaml` are
written by another part of the project; these readers accept the shapes a layer pattern is naturally
written in (a list per layer, or TSA/PSA index lists or ranges) and CSVs with a `layer` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

ROLES = ("tsa", "psa")
REPO = Path(__file__).resolve().parents[2]


def parse_indices(spec: Any, num_layers: int | None = None) -> list[int]:
    """The layer-pattern files' index syntax, parsed by the code that writes and reads them for the cache."""
    from akvq.saliency.patterns import parse_indices as _parse

    return _parse(spec, num_layers or 0)


def pattern_from_mapping(d: dict[str, Any]) -> list[str] | None:
    """Per-layer labels from a layer-pattern mapping; None when the mapping holds no pattern."""
    for key in ("pattern", "layers", "layer_pattern", "patterns"):
        val = d.get(key)
        if isinstance(val, list) and val and all(isinstance(x, str) for x in val):
            return [x.lower() for x in val]
    n = d.get("num_layers") or d.get("n_layers")
    if any(k in d for k in ROLES):
        tsa = parse_indices(d.get("tsa") or d.get("tsa_layers"), n)
        psa = parse_indices(d.get("psa") or d.get("psa_layers"), n)
        n = n or (max([*tsa, *psa], default=-1) + 1)
        return ["tsa" if i in tsa else "psa" if i in psa else "none" for i in range(n)]
    return None


def load_layer_patterns(*dirs: Path) -> list[dict[str, Any]]:
    """[{model, layers: [...], source}] from every YAML/JSON in the given directories; later dirs win
    (profiler outputs under results/saliency/ override the shipped configs for the same model)."""
    found: dict[str, dict[str, Any]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        # recursive: the profiler writes results/saliency/<model>/pattern.yaml
        for p in sorted([*d.rglob("*.yaml"), *d.rglob("*.yml"), *d.rglob("*.json")]):
            try:
                node = OmegaConf.to_container(OmegaConf.load(p), resolve=False)
            except Exception:  # noqa: BLE001 - a foreign file in the folder is not a pattern
                continue
            if not isinstance(node, dict):
                continue
            layers = pattern_from_mapping(node)
            if not layers:
                continue
            src = node.get("source") or node.get("provenance") or node.get("origin") or ""
            if isinstance(src, dict):
                src = ", ".join(f"{k}: {v}" for k, v in src.items())
            if (node.get("profiled") is False or node.get("unprofiled")) and "unprofiled" not in str(src):
                src = f"unprofiled; {src}".strip("; ")
            model = str(node.get("model") or node.get("name") or p.stem)
            where = str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
            found[model] = {
                "model": model,
                "layers": layers,
                "source": str(src) or f"profiled: {where}",
                "path": where,
            }
    return list(found.values())


# ------------------------------------------------------------------------------------- profiler CSVs

# Fig. 2 (locality), 3 (TSA), 4 (PSA): legend label -> profiler CSV columns (first present wins), as written by
# akvq.saliency.profiler.write_csv (`results/saliency/<model>/profile.csv`).
FIG_SERIES: dict[str, dict[str, tuple[str, ...]]] = {
    "fig2_locality": {"recent window": ("recent_share",), "first token": ("first_token_share",)},
    "fig3_tsa": {"text (per token)": ("text_mean_attn",), "vision (per token)": ("vision_mean_attn",)},
    "fig4_psa": {
        "detected pivots": ("pivot_mass", "pivot_share"),
        "top-k (oracle)": ("topk_share",),
        "random tokens": ("random_mass", "random_share"),
    },
}
# A figure needs these series to say anything (TSA compares text with vision: text-only models are left out).
REQUIRED: dict[str, tuple[str, ...]] = {
    "fig2_locality": ("recent window",),
    "fig3_tsa": ("text (per token)", "vision (per token)"),
    "fig4_psa": ("detected pivots",),
}
SERIES_ROLE = {"recent window": "recent", "first token": "sink", "text (per token)": "text",
               "vision (per token)": "vision", "detected pivots": "pivot", "top-k (oracle)": "other",
               "random tokens": "random"}  # fmt: skip
KNOWN_COLUMNS = frozenset(c for series in FIG_SERIES.values() for cols in series.values() for c in cols)


def load_profiles(*dirs: Path) -> pd.DataFrame:
    """Per-layer profiler CSVs under the given dirs (`profile.csv` files, or any CSV with a `layer` column and
    profiler columns), one per model: the newest file wins. `model` comes from the CSV, else the folder name."""
    frames: dict[str, pd.DataFrame] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*.csv"), key=lambda x: x.stat().st_mtime):
            try:
                df = pd.read_csv(p)
            except Exception:  # noqa: BLE001
                continue
            if "layer" not in df.columns or not (KNOWN_COLUMNS & set(df.columns)):
                continue
            if "model" not in df.columns:
                df.insert(0, "model", p.parent.name if p.stem == "profile" else p.stem)
            df["source_file"] = str(p)
            for model, sub in df.groupby("model"):
                frames[str(model)] = sub
    return pd.concat(frames.values(), ignore_index=True) if frames else pd.DataFrame()


def series_columns(sub: pd.DataFrame, fig: str) -> dict[str, str]:
    """{legend label: column} of one of Fig. 2-4 that this model's profile has (columns that are all NaN, such
    as vision attention of a text-only model, do not count); empty when a required series is absent."""
    out: dict[str, str] = {}
    for lab, cands in FIG_SERIES[fig].items():
        col = next((c for c in cands if c in sub.columns and sub[c].notna().any()), None)
        if col:
            out[lab] = col
    return out if all(r in out for r in REQUIRED[fig]) else {}
