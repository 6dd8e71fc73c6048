"""Run records -> tidy pandas frames that every table and figure reads.

Why one place: records come from several producers (the runner's tasks, the efficiency benchmark, multi-task
runs such as `task=milebench` that report each dataset inside one record). Flattening them once, with one rule
for "the number a table shows" and one for "which record wins", keeps every artifact consistent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from akvq import records as records_mod
from akvq.records import read_records

# The MileBench folder names (the runner's `task=milebench` may key its metrics by them); copied rather than
# imported so reading records never needs the task code.
MILEBENCH_DATASETS: frozenset[str] = frozenset(
    {
        "ActionLocalization", "ActionPrediction", "ActionSequence", "CharacterOrder", "CounterfactualInference",
        "EgocentricNavigation", "MovingAttribute", "MovingDirection", "ObjectExistence", "ObjectInteraction",
        "ObjectShuffle", "SceneTransition", "StateChange", "ALFRED", "CLEVR-Change", "DocVQA", "IEdit", "MMCoQA",
        "MultiModalQA", "nuscenes", "OCR-VQA", "SlideVQA", "Spot-the-Diff", "TQA", "WebQA", "WikiVQA",
        "GPR1200", "ImageNeedleInAHaystack", "TextNeedleInAHaystack",
    }
)  # fmt: skip
# Column order of Table II: the paper's four named datasets first, then the other eight of `task=milebench`.
MILEBENCH_ORDER: tuple[str, ...] = (
    "SceneTransition", "WebQA", "TQA", "DocVQA", "ActionLocalization", "ActionPrediction", "ActionSequence",
    "ObjectExistence", "CounterfactualInference", "SlideVQA", "OCR-VQA", "MultiModalQA",
)  # fmt: skip
LOWER_IS_BETTER: tuple[str, ...] = ("ppl", "perplexity", "nll", "loss", "bpb", "error", "wer")
EFFICIENCY_TASKS: tuple[str, ...] = ("efficiency", "bench", "bench_efficiency")

LONG_COLUMNS = [
    "model", "task", "quant", "metric", "value", "primary", "lower_is_better", "kv_effective_bits", "kv_bytes",
    "peak_memory_bytes", "tokens_per_second", "wall_seconds", "device", "time", "config_hash", "git_rev", "stale", "setting", "samples",
    "order",
]  # fmt: skip


# Where runs write records: the runner (run.py) and the efficiency benchmark (configs/bench/efficiency.yaml).
DEFAULT_RECORDS: tuple[str, ...] = ("results/runs.jsonl", "results/efficiency/runs.jsonl")


def default_records_paths() -> list[Path]:
    """`$AKVQ_RECORDS` (one path or several joined by `os.pathsep`; the notebook and tests point it at
    fixtures), else the runner's and the benchmark's record files."""
    env = os.environ.get("AKVQ_RECORDS")
    return [Path(p) for p in env.split(os.pathsep) if p] if env else [Path(p) for p in DEFAULT_RECORDS]


def load(paths: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None) -> list[dict[str, Any]]:
    """All readable records of one or several files, in order; a torn line (a run killed mid-write by a naive
    writer) is skipped, a missing file is empty, and ad-hoc runs are left out: a task config with `adhoc: true`
    (the quick start's ppl_quick) and any file under a `_scratch` folder (`results/_scratch/`, where ad-hoc runs
    write) are try-outs, not results."""
    if paths is None:
        paths = list(default_records_paths())
    elif not isinstance(paths, list):
        paths = [paths]
    return [r for p in paths if not is_scratch(p) for r in read_records(p) if not is_adhoc(r)]


SCRATCH_DIR = "_scratch"  # runner.SCRATCH_RECORDS lives under it


def is_scratch(path: str | os.PathLike[str]) -> bool:
    return SCRATCH_DIR in Path(path).parts


def is_adhoc(rec: dict[str, Any]) -> bool:
    task = (rec.get("config") or {}).get("task")
    return bool(isinstance(task, dict) and task.get("adhoc"))


def is_number(x: Any) -> bool:
    return (
        isinstance(x, int | float)
        and not isinstance(x, bool)
        and not (isinstance(x, float) and math.isnan(x))
    )


def lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return any(m == w or m.startswith(w + "_") or m.endswith("_" + w) for w in LOWER_IS_BETTER)


def is_efficiency(record: dict[str, Any]) -> bool:
    return str(record.get("task", "")).split("/")[0] in EFFICIENCY_TASKS


def split_metrics(task: str, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task label: {metric: number}}: a multi-task record (nested dicts, `Sub/metric` keys, or MileBench
    dataset names as keys) becomes one entry per sub-task, e.g. `milebench/WebQA`."""
    out: dict[str, dict[str, float]] = {}
    base = task.split("/")[0]
    for k, v in (metrics or {}).items():
        if isinstance(v, dict):
            sub = {m: float(x) for m, x in v.items() if is_number(x)}
            if sub:
                out.setdefault(f"{base}/{k}", {}).update(sub)
        elif not is_number(v):
            continue
        elif "/" in k and k.split("/")[0] in MILEBENCH_DATASETS | {"milebench"}:
            sub_name, metric = k.rsplit("/", 1)
            label = sub_name if sub_name.startswith(base + "/") else f"{base}/{sub_name}"
            out.setdefault(label, {})[metric] = float(v)
        elif k in MILEBENCH_DATASETS:
            out.setdefault(f"{base}/{k}", {})["score"] = float(v)
        else:
            out.setdefault(task, {})[k] = float(v)
    if len(out) > 1 and task in out:
        # a multi-task record: what is left at its own level is an aggregate (`average`, which the tables
        # recompute) or run metadata (`tokens_per_image`), not a task of its own
        del out[task]
    return out


def long_frame(records: list[dict[str, Any]], metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (record, task label, metric) for accuracy-style records (efficiency records excluded).
    `metrics` ({task label: metric}) overrides which metric is a task's headline; `stale` is
    `akvq.records.is_stale` of the row's record."""
    overrides = metrics or {}
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(records):
        if is_efficiency(r) or not {"model", "task", "quant"} <= r.keys():
            continue
        common = {
            k: r.get(k)
            for k in ("kv_effective_bits", "kv_bytes", "peak_memory_bytes", "tokens_per_second", "wall_seconds",
                      "device", "time", "config_hash", "git_rev")
        }  # fmt: skip
        common["stale"] = records_mod.is_stale(r)
        common["setting"] = setting_of(r)
        common["samples"] = samples_of(r)
        for task, metrics in split_metrics(str(r["task"]), r.get("metrics") or {}).items():
            declared = r.get("primary_metric") if task == r["task"] else None
            prim = records_mod.primary_metric(metrics, overrides.get(task) or declared)
            for m, v in metrics.items():
                rows.append({"model": str(r["model"]), "task": task, "quant": str(r["quant"]), "metric": m,
                             "value": v, "primary": m == prim, "lower_is_better": lower_is_better(m),
                             **common, "order": i})  # fmt: skip
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def latest(df: pd.DataFrame, keys: tuple[str, ...] = ("model", "task", "quant", "metric")) -> pd.DataFrame:
    """The newest row per key (later records win, so a rerun with `redo=true` replaces the old number)."""
    if df.empty:
        return df
    return df.sort_values("order").drop_duplicates(list(keys), keep="last").reset_index(drop=True)


# Task config keys that do not change a number: names, how the work is scheduled, where data lives.
SETTING_IGNORE: frozenset[str] = frozenset({"name", "primary_metric", "replay", "adhoc", "bootstrap"})


def setting_of(record: dict[str, Any]) -> str:
    """The record's task setting (e.g. ppl's prompt/scored lengths, windows and decode chunk; passkey's lengths
    and trials) as one comparable string. Numbers compare only within one setting: a 512-token and a
    4096-token perplexity are different measurements, not a newer and an older one."""
    task = (record.get("config") or {}).get("task")
    if not isinstance(task, dict):
        return ""
    keep = {k: v for k, v in task.items()
            if k not in SETTING_IGNORE and not k.endswith(("_root", "_dir", "_path"))}  # fmt: skip
    return ", ".join(f"{k}={keep[k]}" for k in sorted(keep))


# Task config keys that count samples: a setting measured with more of them is the better measurement.
SAMPLE_KEYS: tuple[str, ...] = ("trials", "windows", "limit")


def samples_of(record: dict[str, Any]) -> int:
    """How many samples a record's setting draws (product of its SAMPLE_KEYS; 1 when it names none)."""
    task = (record.get("config") or {}).get("task")
    n = 1
    for k in SAMPLE_KEYS:
        v = task.get(k) if isinstance(task, dict) else None
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            n *= v
    return n


def primary_frame(records: list[dict[str, Any]], metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """Headline number per (model, task, quant), newest record winning, from one setting per (model, task):
    the one with the most measurements, methods x samples (e.g. 4 methods at 10 passkey trials over 5 at 2;
    ties: the newest). What tables and Fig. 8 show; a method measured only in another setting is left out
    rather than set beside numbers it cannot be compared with."""
    df = long_frame(records, metrics)
    if df.empty:
        return df
    df = latest(df[df["primary"]], ("model", "task", "setting", "quant"))
    rank = df.groupby(["model", "task", "setting"], as_index=False).agg(
        n=("quant", "nunique"), samples=("samples", "max"), newest=("order", "max")
    )
    rank["weight"] = rank["n"] * rank["samples"]
    best = rank.sort_values(["weight", "newest"]).drop_duplicates(["model", "task"], keep="last")
    keep = df.merge(best[["model", "task", "setting"]], on=["model", "task", "setting"])
    return keep.sort_values("order").reset_index(drop=True)


def efficiency_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if is_efficiency(r)]
