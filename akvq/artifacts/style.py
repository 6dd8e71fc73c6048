"""One look for every figure: the same fonts, colours per method and markers, and the same way to save.

Why a module: the paper's figures compare methods across many panels; a method must keep its colour in
every figure, and every figure must ship as PNG (README), PDF (paper) and the CSV it was drawn from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI, SLURM nodes and the notebook kernel all draw to files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from akvq.paths import atomic_open, save_figure  # noqa: E402

RC: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 5,
    "pdf.fonttype": 42,  # TrueType in PDFs, so the text stays editable and searchable
}

# Quant config name -> colour; ablation steps share AKVQ's hue family so the ladder reads as one method.
METHOD_COLORS: dict[str, str] = {
    "fp16": "#333333",
    "rtn2": "#d62728",
    "rtn4": "#ff9896",
    "kivi2": "#1f77b4",
    "kivi4": "#aec7e8",
    "skvq": "#9467bd",
    "smoothquant": "#8c564b",
    "akvq": "#2ca02c",
    "akvq_paper": "#2ca02c",
    "akvq_rtn": "#c7e9c0",
    "akvq_wht": "#a1d99b",
    "akvq_tsa": "#74c476",
    "akvq_psa": "#238b45",
    "akvq_flush8": "#006d2c",
    "akvq_plus": "#ff7f0e",
    "akvq_plus_w32": "#fdae6b",
    "akvq_plus_w16": "#fdd0a2",
    "akvq_plus_w0_p4": "#e6550d",
    "akvq_plus_w8": "#a63603",
    "akvq_plus_w8_w32": "#d94801",
    # outside peers: transformers' QuantizedCache (quanto, HQQ) and llama.cpp's KV types
    "hf_quanto2": "#17becf",
    "hf_quanto4": "#9edae5",
    "hf_hqq2": "#bcbd22",
    "hf_hqq4": "#dbdb8d",
    "llamacpp_f16": "#636363",
    "llamacpp_q8_0": "#e377c2",
    "llamacpp_q4_0": "#f7b6d2",
    "fp16@akvq_packed": "#7f7f7f",
}
METHOD_MARKERS: dict[str, str] = {
    "fp16": "*",
    "rtn2": "v",
    "rtn4": "^",
    "kivi2": "s",
    "kivi4": "D",
    "skvq": "P",
    "smoothquant": "X",
    "akvq": "o",
    "akvq_paper": "o",
    "akvq_rtn": "<",
    "akvq_wht": ">",
    "akvq_tsa": "h",
    "akvq_psa": "o",
    "akvq_flush8": "o",
    "akvq_plus": "D",
    "akvq_plus_w32": "d",
    "akvq_plus_w16": "d",
    "akvq_plus_w0_p4": "d",
    "akvq_plus_w8": "*",
    "akvq_plus_w8_w32": "*",
    "hf_quanto2": "v",
    "hf_quanto4": "v",
    "hf_hqq2": ">",
    "hf_hqq4": ">",
    "llamacpp_f16": "p",
    "llamacpp_q8_0": "p",
    "llamacpp_q4_0": "p",
    "fp16@akvq_packed": "*",
}
METHOD_LABELS: dict[str, str] = {
    "fp16": "FP16",
    "rtn2": "RTN-2",
    "rtn4": "RTN-4",
    "kivi2": "KIVI-2",
    "kivi4": "KIVI-4",
    "skvq": "SKVQ",
    "smoothquant": "SmoothQuant",
    "akvq": "AKVQ-VL",
    "akvq_paper": "AKVQ-VL",
    "akvq_rtn": "RTN (+window)",
    "akvq_wht": "+WHT",
    "akvq_tsa": "+WHT+TSA",
    "akvq_psa": "+WHT+TSA+PSA",
    "akvq_flush8": "AKVQ-VL, window flushed 8 at a time",
    "akvq_plus": "AKVQ-VL+ (ours)",
    "akvq_plus_w32": "AKVQ-VL+, V window 32",
    "akvq_plus_w16": "AKVQ-VL+, V window 16",
    "akvq_plus_w0_p4": "AKVQ-VL+, no V window, 4 pivots",
    "akvq_plus_w8": "AKVQ-VL+, 8-bit window",
    "akvq_plus_w8_w32": "AKVQ-VL+, 8-bit V window 32",
    "hf_quanto2": "HF QuantizedCache quanto-2",
    "hf_quanto4": "HF QuantizedCache quanto-4",
    "hf_hqq2": "HF QuantizedCache HQQ-2",
    "hf_hqq4": "HF QuantizedCache HQQ-4",
    "llamacpp_f16": "llama.cpp f16",
    "llamacpp_q8_0": "llama.cpp q8_0",
    "llamacpp_q4_0": "llama.cpp q4_0",
    "fp16@akvq_packed": "FP16, fused kernel",
}
# Axis labels of the metrics records carry, with units ("acc" alone is not a label a reader can use).
METRIC_LABELS: dict[str, str] = {
    "acc": "accuracy (fraction)",
    "accuracy": "accuracy (%)",
    "ppl": "perplexity",
    "perplexity": "perplexity",
    "average": "average score (%)",
    "rouge_l_f": "ROUGE-L F (%)",
    "agreement": "agreement with FP16 (fraction)",
    "mmmu_acc": "MMMU accuracy (fraction)",
}
# Order of methods in tables and legends: baseline first, ours last, ablation ladder after.
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_COLORS)

# Paper order of models in tables (Table II lists the LLaVA models in this order); others after, alphabetically.
MODEL_ORDER: tuple[str, ...] = (
    "llava-1.5-7b", "llava-1.5-13b", "llava-1.6-vicuna-7b", "llava-1.6-mistral-7b", "qwen2-vl-7b", "qwen2.5-vl-7b",
    "smollm2-135m",
)  # fmt: skip


def model_sort_key(name: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(name), "") if name in MODEL_ORDER else (len(MODEL_ORDER), name)


ROLE_COLORS: dict[str, str] = {
    "text": "#1f77b4",
    "vision": "#ff7f0e",
    "pivot": "#2ca02c",
    "recent": "#9467bd",
    "random": "#7f7f7f",
    "sink": "#d62728",
    "other": "#bcbd22",
}
_FALLBACK = plt.get_cmap("tab20").colors


def color(name: str) -> Any:
    """A stable colour for a method (or role); unknown names get one from tab20 chosen by a stable hash."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    if name in ROLE_COLORS:
        return ROLE_COLORS[name]
    return _FALLBACK[sum(map(ord, name)) % len(_FALLBACK)]


def marker(name: str) -> str:
    return METHOD_MARKERS.get(name, "o")


def label(name: str) -> str:
    """The one display name of a quant config (tables, legends); `akvq[bits=4]`-style labels keep their fields."""
    base, _, fields = name.partition("[")
    return METHOD_LABELS.get(name) or (
        f"{METHOD_LABELS[base]} [{fields}" if fields and base in METHOD_LABELS else name
    )


def metric_label(metric: str, task: str = "") -> str:
    """Axis label of a metric, with its unit; the task names it when the metric alone does not (passkey)."""
    text = METRIC_LABELS.get(metric, metric)
    return f"{task} {text}" if task and metric in ("acc", "accuracy") and not text.startswith(task) else text


def is_random_weights(model: str) -> bool:
    """Tiny random-weight test models (configs/model/tiny-*.yaml): never drawn beside real models."""
    return model.startswith("tiny-")


def method_sort_key(name: str) -> tuple[int, str]:
    """Known methods in METHOD_ORDER, unknown ones after them alphabetically."""
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def figure(
    nrows: int = 1, ncols: int = 1, width: float = 3.4, height: float = 2.6, **kw: Any
) -> tuple[Any, Any]:
    """A figure of `nrows x ncols` panels, each `width x height` inches, in the house style."""
    apply()  # global on purpose: plotting calls after this (line widths, fonts) must see the style too
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    return fig, axes


def save(fig: Any, data: pd.DataFrame, out_dir: str | Path, stem: str) -> list[Path]:
    """Write `<stem>.png`, `<stem>.pdf` and `<stem>.csv` (the data drawn) into `out_dir`; close the figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf", out / f"{stem}.csv"]
    save_figure(fig, paths[0], metadata={"Software": None})
    save_figure(fig, paths[1], metadata={"CreationDate": None})  # no timestamp: reruns give identical PDFs
    plt.close(fig)
    with atomic_open(paths[2], "w", newline="") as fh:
        data.to_csv(fh, index=False, float_format="%.6g")
    return paths


def apply() -> None:
    """Apply the house style globally (the notebook calls this so inline figures match the files)."""
    plt.rcParams.update(RC)
