"""Tables I, II, III (ablation) and IV as pandas frames, written as CSV + Markdown.

Why frames first: the notebook shows the same frames the script writes, and tests check numbers on
frames rather than parsing Markdown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from akvq import records
from akvq.artifacts import data, paper
from akvq.artifacts.style import label, method_sort_key, model_sort_key
from akvq.paths import atomic_open, write_atomic

ABLATION_STEPS: tuple[str, ...] = ("akvq_rtn", "akvq_wht", "akvq_tsa", "akvq_psa")


# ----------------------------------------------------------------------------------------------- output


def fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1e4 or (x != 0 and abs(x) < 10**-digits):
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


COUNT_COLUMNS = frozenset({"prompt_len", "largest batch", "fixed batch", "layers", "budget GiB"})


def _cell(col: str, v: Any, digits: int) -> str:
    """Counts print as integers, effective bits with two decimals, everything else with `digits`."""
    if col in COUNT_COLUMNS and isinstance(v, float) and v.is_integer():
        return str(int(v))
    return fmt(v, max(digits, 2) if "bits" in col else digits)


def to_markdown(df: pd.DataFrame, digits: int = 1, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` dependency)."""
    frame = df.reset_index() if index and not isinstance(df.index, pd.RangeIndex) else df
    cols = [str(c).replace("|", "\\|") for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = [_cell(c, v, digits) for c, v in zip(cols, row)]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def write(
    df: pd.DataFrame, out_dir: str | Path, stem: str, title: str, note: str = "", digits: int = 1
) -> list[Path]:
    """`<stem>.csv` (full precision) and `<stem>.md` (title, table, provenance note, the stale footnote)."""
    shown = df.attrs.get("metrics") or {}
    metrics = ", ".join(
        f"{c}: {m}" + (" (lower is better)" if data.lower_is_better(m) else "") for c, m in shown.items()
    )
    note = "\n\n".join(x for x in (note, f"Metrics: {metrics}." if metrics else "", stale_footnote(df)) if x)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{stem}.csv", out / f"{stem}.md"
    frame = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    with atomic_open(csv, "w", newline="") as fh:
        frame.to_csv(fh, index=False, float_format="%.6g")
    write_atomic(md, f"# {title}\n\n{to_markdown(df, digits)}" + (f"\n{note}\n" if note else ""))
    return [csv, md]


def short_task(task: str) -> str:
    """`milebench/SceneTransition` -> `SceneTransition` (column headers)."""
    return task.split("/", 1)[1] if "/" in task else task


def task_sort_key(task: str) -> tuple[str, int, str]:
    """Group by benchmark; MileBench datasets in the paper's order, the rest alphabetically."""
    sub = short_task(task)
    order = data.MILEBENCH_ORDER
    return (task.split("/")[0], order.index(sub) if sub in order else len(order), sub)


# ----------------------------------------------------------------------------------------------- Table II


def is_paper_task(task: str) -> bool:
    """Multimodal benchmark tasks (MileBench, lmms-eval), i.e. the paper's Table II; the rest is CPU-scale."""
    return task.startswith(("milebench", "lmms/", "mmmu"))


BENCHMARK_LABELS: dict[str, str] = {"milebench": "MileBench", "synthbench": "SynthBench", "lmms": "lmms-eval"}
# Benchmarks whose per-dataset number is the benchmark's own score (in %: accuracy or ROUGE-L F by question type,
# as the benchmark defines it), which the benchmark itself averages over datasets: one metric kind.
SCORE_BENCHMARKS: tuple[str, ...] = ("milebench", "synthbench")
METRIC_ALIASES: dict[str, str] = {"acc": "accuracy"}


def metric_kind(task: str, metric: str) -> str:
    """What a Table II cell measures; only columns of one kind (and one benchmark) are ever averaged."""
    if task.split("/")[0] in SCORE_BENCHMARKS:
        return "score"
    return METRIC_ALIASES.get(metric, metric)


def _wanted(task: str, tasks: list[str]) -> int | None:
    """Index of the first entry of `tasks` naming this task (full label, dataset name or benchmark), else None."""
    for i, t in enumerate(tasks):
        if task == t or short_task(task) == t or task.split("/")[0] == t:
            return i
    return None


def table2(
    records: list[dict[str, Any]],
    paper_tasks: bool | None = True,
    *,
    tasks: list[str] | None = None,
    models: list[str] | None = None,
    metrics: dict[str, str] | None = None,
    ablation: bool = False,
) -> pd.DataFrame:
    """The one Table II builder (`scripts/make_artifacts.py` and `scripts/make_tables.py` both call it).

    Rows (model, method); one column per task or dataset (its headline metric; `metrics` {task: metric}
    overrides it), so MileBench gives one column per dataset. Averages only over columns of one benchmark and
    one metric kind, labelled with both (`MileBench score avg`); different metrics (perplexity, passkey
    accuracy) are never averaged. Then a Δ to FP16 of the same model per average and per column outside any
    average, the effective bits, and `stale`: the columns whose record came from another commit or uncommitted
    code (`akvq.records.is_stale`; `write` adds the footnote). Ablation steps are left to Table III unless
    `ablation`. `paper_tasks`: True = the multimodal benchmarks, False = the CPU-scale tasks (perplexity,
    passkey, agreement), None = both. `tasks` picks and orders columns (a task, a dataset or a benchmark)."""
    prim = data.primary_frame(records, metrics)
    if prim.empty:
        return pd.DataFrame()
    keep = pd.Series(True, index=prim.index)
    if paper_tasks is not None:
        keep &= prim["task"].map(is_paper_task) == paper_tasks
    if not ablation:
        keep &= ~prim["quant"].isin(ABLATION_STEPS)
    if models:
        keep &= prim["model"].isin(models)
    if tasks:
        keep &= prim["task"].map(lambda t: _wanted(t, tasks) is not None)
    prim = prim[keep]
    if prim.empty:
        return pd.DataFrame()
    wide = prim.pivot_table(index=["model", "quant"], columns="task", values="value", aggfunc="last")
    order = sorted(wide.columns, key=lambda t: ((_wanted(t, tasks) if tasks else 0), task_sort_key(t)))
    wide = wide[order]
    names = [short_task(t) for t in order]
    if len(set(names)) < len(names):  # the same dataset name under two benchmarks: keep the full labels
        names = list(order)
    wide.columns = names
    name_of = dict(zip(order, names))

    groups: dict[tuple[str, str], list[str]] = {}
    for t in order:
        kinds = {metric_kind(t, m) for m in prim.loc[prim["task"] == t, "metric"]}
        if len(kinds) == 1:
            groups.setdefault((t.split("/")[0], kinds.pop()), []).append(name_of[t])
    averaged: set[str] = set()
    delta_cols: list[str] = []
    for (bench, kind), cols in groups.items():
        if len(cols) < 2:
            continue
        avg = f"{BENCHMARK_LABELS.get(bench, bench)} {kind} avg"
        wide[avg] = wide[cols].mean(axis=1, skipna=False)
        averaged.update(cols)
        delta_cols.append(avg)
    delta_cols += [c for c in names if c not in averaged]
    for col in delta_cols:
        ref = {m: wide.loc[(m, "fp16"), col] for m, q in wide.index if q == "fp16"}
        wide[f"Δ{col}"] = [v - ref.get(m, math.nan) for (m, _q), v in zip(wide.index, wide[col])]
    bits = prim.groupby(["model", "quant"])["kv_effective_bits"].mean()
    wide["eff. bits"] = bits.reindex(wide.index)
    stale = prim[prim["stale"].astype(bool)]
    if not stale.empty:
        flagged: dict[tuple[str, str], list[str]] = {}
        for m, q, t in zip(stale["model"], stale["quant"], stale["task"]):
            flagged.setdefault((m, q), []).append(name_of[t])
        wide["stale"] = [", ".join(c for c in names if c in flagged.get(mq, ())) for mq in wide.index]
    rows = sorted(wide.index, key=lambda mq: (model_sort_key(mq[0]), method_sort_key(mq[1])))
    wide = wide.loc[rows]
    wide.index = pd.MultiIndex.from_tuples([(m, label(q)) for m, q in wide.index], names=["model", "method"])
    wide.attrs["metrics"] = {
        name_of[t]: "/".join(sorted(set(prim.loc[prim["task"] == t, "metric"]))) for t in order
    }  # which metric each column shows (`write` prints it under the table)
    return wide


NOTE = (
    "One column per task or dataset (its headline metric); averages only over columns of one benchmark and one "
    "metric kind; Δ = difference to FP16 of the same model; eff. bits = effective bits per KV element."
)

STALE_FOOTNOTE = (
    f"stale: the cells listed were {records.STALE_NOTE} (now {{rev}}); rerun them with redo=true."
)


def stale_footnote(df: pd.DataFrame) -> str:
    """The footnote a table with stale cells carries ('' when none)."""
    if "stale" not in df.columns or not df["stale"].astype(bool).any():
        return ""
    return STALE_FOOTNOTE.format(rev=records.git_rev())


def table2_long(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Every headline cell with its FP16 reference and delta (the numbers behind Table II and Fig. 8)."""
    prim = data.primary_frame(records)
    if prim.empty:
        return prim
    ref = prim[prim["quant"] == "fp16"].set_index(["model", "task"])["value"]
    out = prim[
        ["model", "task", "quant", "metric", "value", "lower_is_better", "kv_effective_bits", "kv_bytes"]
    ].copy()
    out["fp16"] = [ref.get((m, t), math.nan) for m, t in zip(out["model"], out["task"])]
    out["delta_vs_fp16"] = out["value"] - out["fp16"]
    out["paper"] = [
        paper.TABLE2_CELLS.get((m, short_task(t), q), math.nan)
        for m, t, q in zip(out["model"], out["task"], out["quant"])
    ]
    out["_q"] = out["quant"].map(lambda q: method_sort_key(q)[0])
    return out.sort_values(["model", "task", "_q", "quant"]).drop(columns="_q").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- ablation


def ablation(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows FP16, RTN -> +WHT -> +TSA -> +PSA; for every (model, task) measured, its headline metric and the
    effective bits; last, the paper's column (LLaVA-1.5-7B, Scene Transition)."""
    prim = data.primary_frame(records)
    steps = ("fp16", *ABLATION_STEPS)
    if prim.empty:
        return pd.DataFrame()
    prim = prim[prim["quant"].isin(steps)]
    # only (model, task) pairs with at least one ablation step, not just FP16
    have = prim[prim["quant"].isin(ABLATION_STEPS)][["model", "task"]].drop_duplicates()
    if have.empty:
        return pd.DataFrame()
    prim = prim.merge(have, on=["model", "task"])
    out = pd.DataFrame(index=[s for s in steps if s in set(prim["quant"])])
    for (model, task), sub in prim.groupby(["model", "task"], sort=True):
        s = sub.set_index("quant")
        name = f"{model}: {short_task(task)}"
        out[f"{name} ({s['metric'].iloc[0]})"] = s["value"].reindex(out.index)
        out[f"{name} bits"] = s["kv_effective_bits"].reindex(out.index)
    out["paper: llava-1.5-7b: SceneTransition"] = [paper.ABLATION.get(q, math.nan) for q in out.index]
    out.index = pd.Index([label(q) for q in out.index], name="method")
    return out


# ----------------------------------------------------------------------------------------------- Table I


def table1(patterns: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows per model: number of layers, TSA layers, PSA layers (ranges), where the pattern came from, and
    the paper's row when the paper lists the model."""
    rows = []
    for p in patterns:
        layers = p["layers"]
        ref = paper.TABLE1.get(p["model"], {})
        rows.append({
            "model": p["model"],
            "layers": len(layers),
            "TSA layers": ranges([i for i, x in enumerate(layers) if x == "tsa"]),
            "PSA layers": ranges([i for i, x in enumerate(layers) if x == "psa"]),
            "source": p.get("source", ""),
            "paper TSA": ref.get("tsa", ""),
            "paper PSA": ref.get("psa", ""),
        })  # fmt: skip
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values("model").set_index("model")


def ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"; [] -> "none"."""
    if not idx:
        return "none"
    out, start, prev = [], idx[0], idx[0]
    for i in [*idx[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        if i is not None:
            start = prev = i
    return ", ".join(out)


# ----------------------------------------------------------------------------------------------- Table IV

# Table IV column -> where an efficiency record holds it (dotted paths, first present wins) and a scale.
# The benchmark (scripts/bench_efficiency.py) writes `task: efficiency/<prompt_len>` and these metrics.
EFF_FIELDS: dict[str, tuple[tuple[str, float], ...]] = {
    "prompt_len": (("metrics.prompt_len", 1), ("config.bench.prompt_len", 1), ("config.prompt_len", 1)),
    "largest batch": (("metrics.largest_batch", 1), ("metrics.max_batch", 1)),
    "tokens/s @ largest": (
        ("metrics.tokens_per_second_at_largest", 1),
        ("metrics.tokens_per_second_at_max_batch", 1),
    ),
    "fixed batch": (("config.bench.batch", 1), ("metrics.batch", 1)),
    "peak GiB @ fixed": (("metrics.peak_gib_at_batch", 1), ("metrics.peak_memory_bytes", 2**-30)),
    "tokens/s @ fixed": (
        ("metrics.tokens_per_second_at_batch", 1),
        ("metrics.tokens_per_second_at_fixed_batch", 1),
    ),
    "peak GiB @ largest": (("metrics.peak_gib_at_largest", 1),),
    "KV bytes/token": (("metrics.kv_bytes_per_token", 1),),
    "quant % of prefill": (("metrics.quant_share_of_prefill", 100),),
    "budget GiB": (("config.bench.budget_gib", 1), ("metrics.budget_gib", 1)),
}
# ratio column -> (value column, True when smaller is better so the ratio is fp16 / method)
EFF_RATIOS: dict[str, tuple[str, bool]] = {
    "batch ×": ("largest batch", False),
    "tokens/s ×": ("tokens/s @ largest", False),
    "memory ÷": ("peak GiB @ fixed", True),
    "KV ÷": ("KV bytes/token", True),
}


def _dig(rec: dict[str, Any], path: str) -> Any:
    node: Any = rec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _field(rec: dict[str, Any], sources: tuple[tuple[str, float], ...]) -> float:
    for path, scale in sources:
        v = _dig(rec, path)
        if data.is_number(v):
            return float(v) * scale
    return math.nan


def table4(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (model, prompt length, method): largest batch under the budget and tokens/s there, peak memory and
    tokens/s at the fixed batch, KV bytes per token, ratios to FP16 of the same model and prompt length.
    Newest efficiency record per (model, prompt length, quant) wins; the paper's rows are appended."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in data.efficiency_records(records):
        row: dict[str, Any] = {k: _field(r, src) for k, src in EFF_FIELDS.items()}
        row.update(model=str(r.get("model")), quant=str(r.get("quant")), device=str(r.get("device", "")))
        row["eff. bits"] = r.get("kv_effective_bits")
        row["capped"] = bool(_dig(r, "metrics.largest_batch_capped"))  # the search hit max_batch
        rows[(row["model"], row["prompt_len"], row["quant"])] = row
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(list(rows.values()))
    for ratio, (col, smaller_better) in EFF_RATIOS.items():
        ref = df[df["quant"] == "fp16"].set_index(["model", "prompt_len"])[col]
        vals = []
        for m, p, v in zip(df["model"], df["prompt_len"], df[col]):
            r = ref.get((m, p), math.nan)
            vals.append(
                (r / v if smaller_better else v / r)
                if r and v and not (math.isnan(r) or math.isnan(v))
                else math.nan
            )
        df[ratio] = vals
    df["_q"] = df["quant"].map(lambda q: method_sort_key(q)[0])
    df["_m"] = df["model"].map(lambda m: model_sort_key(m)[0])
    df = df.sort_values(["_m", "model", "prompt_len", "_q", "quant"]).drop(columns=["_q", "_m"])
    df["quant"] = df["quant"].map(label)
    df = df.rename(columns={"quant": "method"})
    df = pd.concat([df, pd.DataFrame(paper.TABLE4)], ignore_index=True)
    keep = ["model", "prompt_len", "method", "largest batch", "tokens/s @ largest", "batch ×", "tokens/s ×",
            "fixed batch", "peak GiB @ fixed", "memory ÷", "tokens/s @ fixed", "KV bytes/token", "KV ÷", "eff. bits",
            "quant % of prefill", "budget GiB", "capped", "device"]  # fmt: skip
    return df[[c for c in keep if c in df.columns]].set_index(["model", "prompt_len", "method"])
