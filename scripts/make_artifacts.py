"""Rebuild every paper table and figure from the run records, and say what to run for the missing ones.

    python scripts/make_artifacts.py [--records results/runs.jsonl] [--out results] [--only table2,fig8]

Writes tables (CSV + Markdown) under OUT/tables/, figures (PNG + PDF + data CSV) under OUT/figures/, and
OUT/artifacts_status.md. Reads records only (plus layer-pattern files, profiler CSVs and the Fig. 5 data),
so it takes seconds; a torn last line in the records is skipped. Exit status 0 even when inputs are missing:
missing inputs are listed with the exact sweep command that produces them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from akvq.artifacts import build  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--records",
        action="append",
        default=None,
        help="records file, repeatable (default: $AKVQ_RECORDS, else results/runs.jsonl and "
        "results/efficiency/runs.jsonl)",
    )
    ap.add_argument("--out", default="results", help="output root (tables/ and figures/ go under it)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(build.BY_NAME)}")
    ap.add_argument(
        "--saliency", action="append", default=None, help="profiler output dir(s) (default results/saliency)"
    )
    ap.add_argument(
        "--layer-patterns",
        action="append",
        default=None,
        help="layer-pattern dir(s) (default configs/layer_patterns)",
    )
    ap.add_argument(
        "--fig5-data", default=None, help="Fig. 5 stats CSV (default OUT/figures/data/fig5_kv_stats.csv)"
    )
    ap.add_argument(
        "--points",
        action="append",
        default=None,
        help="efficiency benchmark points CSV(s) for Fig. 9 (default results/efficiency/points.csv)",
    )
    args = ap.parse_args(argv)

    for key in ("records", "saliency", "layer_patterns", "points"):
        for path in getattr(args, key) or []:
            if not Path(path).exists():  # a typo would rebuild the artifacts as if nothing had run
                ap.error(f"--{key.replace('_', '-')}: {path!r}: no such file or directory")
    if args.fig5_data and not Path(args.fig5_data).is_file():
        ap.error(f"--fig5-data: {args.fig5_data!r}: no such file")
    t0 = time.perf_counter()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(build.BY_NAME))
    if unknown:
        ap.error(f"unknown artifact(s) {unknown}; known: {', '.join(build.BY_NAME)}")
    kw: dict = {}
    if args.saliency:
        kw["saliency_dirs"] = [Path(p) for p in args.saliency]
    if args.layer_patterns:
        kw["layer_pattern_dirs"] = [Path(p) for p in args.layer_patterns]
    if args.points:
        kw["efficiency_points"] = [Path(p) for p in args.points]
    if args.fig5_data:
        kw["fig5_data"] = [Path(args.fig5_data)]
    ctx = build.context(args.records, args.out, **kw)
    outcomes = build.build_all(ctx, only or None)
    text = build.report(outcomes, Path.cwd())
    header = (
        f"{len(ctx.records)} records read; {sum(o.built for o in outcomes)}/{len(outcomes)} artifacts built"
    )
    print(header)
    print(text)
    ctx.out.mkdir(parents=True, exist_ok=True)
    if not only:  # a partial build (--only) says nothing of the others: leave the full status as it was
        (ctx.out / "artifacts_status.md").write_text(f"# Artifact status\n\n{header}\n\n```\n{text}\n```\n")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
