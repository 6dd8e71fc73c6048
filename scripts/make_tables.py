"""Run records -> the paper's Table II layout: one row per (model, quant), one column per task, the average, its
delta to fp16 and the effective bits per KV element. Writes CSV and Markdown under results/tables/.

    python scripts/make_tables.py                      # results/runs.jsonl -> results/tables/table2.{csv,md}
    python scripts/make_tables.py --tasks ppl,passkey --metric passkey=accuracy --name fidelity

Each task shows its record's `primary_metric` (or the first numeric metric) unless `--metric task=name` says
otherwise. When a (model, task, quant) was run several times the newest record counts.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from akvq.records import read_records  # noqa: E402

# Row order inside a model: the reference, 4-bit, 2-bit baselines, the ablation ladder, the method.
QUANT_ORDER = [
    "fp16",
    "rtn4",
    "kivi4",
    "rtn2",
    "kivi2",
    "skvq",
    "smoothquant",
    "akvq_rtn",
    "akvq_wht",
    "akvq_tsa",
    "akvq_psa",
    "akvq_paper",
    "akvq",
    "akvq_plus",
]
LOWER_IS_BETTER = ("ppl", "nll", "loss", "error", "ppl_lo", "ppl_hi")


def metric_of(rec: dict, overrides: dict[str, str]) -> tuple[str | None, float]:
    """(metric name, value) that represents this record's task in the table."""
    metrics = rec.get("metrics") or {}
    name = overrides.get(rec["task"]) or rec.get("primary_metric")
    if not name or name not in metrics:
        name = next(
            (k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)), None
        )
    val = metrics.get(name) if name else None
    return name, float(val) if isinstance(val, int | float) else math.nan


def load(records: list[dict], overrides: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (model, task, quant): the newest record's metric, effective bits and KV bytes."""
    rows = []
    for i, r in enumerate(records):
        if not all(k in r for k in ("model", "task", "quant")):
            continue
        name, val = metric_of(r, overrides or {})
        rows.append(
            {
                "model": r["model"],
                "task": r["task"],
                "quant": r["quant"],
                "metric": name,
                "value": val,
                "bits": r.get("kv_effective_bits"),
                "kv_bytes": r.get("kv_bytes"),
                "time": r.get("time") or "",
                "order": i,
            }
        )
    df = pd.DataFrame(
        rows, columns=["model", "task", "quant", "metric", "value", "bits", "kv_bytes", "time", "order"]
    )
    if df.empty:
        return df
    df = df.sort_values(["time", "order"]).drop_duplicates(["model", "task", "quant"], keep="last")
    return df.drop(columns=["order"]).reset_index(drop=True)


def _quant_key(q: str) -> tuple[int, str]:
    base = q.split("[")[0]
    return (QUANT_ORDER.index(base) if base in QUANT_ORDER else len(QUANT_ORDER), q)


def table(df: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Wide table: index (model, quant); task columns, then Avg., Δ fp16 (Avg. minus the model's fp16 Avg.), bits."""
    if tasks:
        df = df[df.task.isin(tasks)]
    if df.empty:
        return pd.DataFrame()
    wide = df.pivot_table(
        index=["model", "quant"], columns="task", values="value", aggfunc="last", dropna=False
    )
    cols = tasks or sorted(df.task.unique())
    wide = wide.reindex(columns=[c for c in cols if c in wide.columns])
    wide.columns.name = None
    out = wide.copy()
    out["Avg."] = wide.mean(axis=1, skipna=True)
    fp16 = (
        out["Avg."].xs("fp16", level="quant")
        if "fp16" in out.index.get_level_values("quant")
        else pd.Series()
    )
    out["Δ fp16"] = [avg - fp16.get(m, math.nan) for (m, _), avg in out["Avg."].items()]
    out["bits"] = df.groupby(["model", "quant"])["bits"].mean().reindex(out.index)
    order = sorted(out.index, key=lambda mq: (mq[0], _quant_key(mq[1])))
    return out.loc[order]


def to_markdown(t: pd.DataFrame, metrics: dict[str, str]) -> str:
    """A GitHub Markdown table in the paper's layout, with the metric each task column shows underneath."""
    if t.empty:
        return "(no records)\n"
    head = ["Model", "Method", *map(str, t.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(t.columns)) + "|"]
    last_model = None
    for (model, quant), row in t.iterrows():
        cells = [model if model != last_model else "", quant]
        last_model = model
        cells += [
            "–" if pd.isna(v) else (f"{v:+.2f}" if c == "Δ fp16" else f"{v:.2f}") for c, v in row.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ", ".join(
        f"{task}: {m}{' (lower is better)' if m in LOWER_IS_BETTER else ''}" for task, m in metrics.items()
    )
    lines += [
        "",
        f"Metrics: {notes}. Avg. is the plain mean over task columns; bits = effective bits per KV element.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="results/runs.jsonl")
    ap.add_argument("--out", default="results/tables")
    ap.add_argument("--name", default="table2", help="file stem of the CSV and Markdown")
    ap.add_argument("--tasks", default=None, help="comma-separated task columns, in order (default: all)")
    ap.add_argument("--models", default=None, help="comma-separated models (default: all)")
    ap.add_argument("--metric", action="append", default=[], help="task=metric, repeatable")
    args = ap.parse_args(argv)

    overrides = dict(x.split("=", 1) for x in args.metric)
    df = load(read_records(args.records), overrides)
    if df.empty:
        print(f"no records in {args.records}; run e.g. `python run.py` first", file=sys.stderr)
        return 1
    if args.models:
        df = df[df.model.isin(args.models.split(","))]
    tasks = args.tasks.split(",") if args.tasks else None
    t = table(df, tasks)
    shown = df[df.task.isin(t.columns)]
    metrics = shown.groupby("task")["metric"].agg(lambda s: "/".join(sorted(set(map(str, s))))).to_dict()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t.reset_index().to_csv(out / f"{args.name}.csv", index=False, float_format="%.6g")
    md = to_markdown(t, metrics)
    (out / f"{args.name}.md").write_text(md)
    print(md)
    print(f"wrote {out / (args.name + '.csv')} and {out / (args.name + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
