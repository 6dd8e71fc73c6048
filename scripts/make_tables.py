"""Run records -> Table II (CSV and Markdown under results/tables/): a thin CLI over `akvq.artifacts.tables.table2`,
the one Table II builder (`scripts/make_artifacts.py` writes the same table).

    python scripts/make_tables.py                      # results/runs.jsonl -> results/tables/table2.{csv,md}
    python scripts/make_tables.py --tasks ppl,passkey --metric passkey=accuracy --name fidelity

One row per (model, method), one column per task or MileBench dataset (the record's `primary_metric` unless
`--metric task=name` says otherwise); averages only over columns of one benchmark and one metric kind; a Δ to
FP16; effective bits; cells from another commit or uncommitted code are listed as stale, with a footnote.
Ad-hoc records (`adhoc: true`, files under `_scratch/`) never enter. The newest record of a cell wins.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from akvq.artifacts import data, tables  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="results/runs.jsonl")
    ap.add_argument("--out", default="results/tables")
    ap.add_argument("--name", default="table2", help="file stem of the CSV and Markdown")
    ap.add_argument("--tasks", default=None, help="comma-separated task columns, in order (default: all)")
    ap.add_argument("--models", default=None, help="comma-separated models (default: all)")
    ap.add_argument("--metric", action="append", default=[], help="task=metric, repeatable")
    args = ap.parse_args(argv)

    bad = [x for x in args.metric if "=" not in x]
    if bad:
        ap.error(f"--metric takes task=metric, got {bad[0]!r}")
    t = tables.table2(
        data.load(args.records),
        paper_tasks=None,
        tasks=args.tasks.split(",") if args.tasks else None,
        models=args.models.split(",") if args.models else None,
        metrics=dict(x.split("=", 1) for x in args.metric),
        ablation=True,
    )
    if t.empty:
        print(f"no records in {args.records} for this table; run e.g. `python run.py` first", file=sys.stderr)
        return 1
    paths = tables.write(t, args.out, args.name, "Table II", tables.NOTE)
    print(paths[1].read_text())
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
