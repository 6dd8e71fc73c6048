"""Markdown table of the fidelity tasks (ppl, passkey, agreement) from run records, for results/fidelity/."""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's akvq, also where it is not installed (the device machine)

from akvq.artifacts.data import setting_of  # noqa: E402
from akvq.records import read_records  # noqa: E402


def paired_ratio(rows: list[dict], base: list[dict], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of ppl / ppl_fp16 resampling windows in pairs: windows differ far more in difficulty than
    methods do, so the paired interval is the one that can separate methods."""
    a = {d["window"]: d["nll"] for d in rows}
    b = {d["window"]: d["nll"] for d in base}
    diffs = [a[w] - b[w] for w in sorted(set(a) & set(b))]
    if len(diffs) < 2:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    k = len(diffs)
    stats = sorted(math.exp(sum(rng.choices(diffs, k=k)) / k) for _ in range(n))
    return stats[int(0.025 * (n - 1))], stats[int(0.975 * (n - 1))]


def _fmt(x: object, nd: int = 2) -> str:
    return f"{x:.{nd}f}" if isinstance(x, int | float) else "–"


def decode_mode(r: dict) -> str:
    """How the continuation was read: token by token (chunk=1, replayed or stepped: the same numbers) or the
    biased chunked proxy."""
    chunk = int(((r.get("config") or {}).get("task") or {}).get("chunk", 1))
    return "token-by-token" if chunk == 1 else f"chunk={chunk} (proxy)"


def setting(r: dict) -> tuple:
    """Records compare (and pair with fp16) only within one model and task setting (`akvq.artifacts.data.
    setting_of`, the one definition the tables and Fig. 8 use); the rest is what the ppl rows display."""
    t = (r.get("config") or {}).get("task") or {}
    return (
        r["model"],
        t.get("prompt_len"),
        t.get("cont_len"),
        t.get("windows"),
        decode_mode(r),
        setting_of(r),
    )


def table(rows: list[dict], task: str, order: list[str] | None = None) -> str:
    rows = [r for r in rows if r.get("task") == task]
    if not rows:
        return ""
    latest: dict[tuple, dict] = {}
    for r in rows:  # the last record of each (setting, quant) wins
        latest[(setting(r), r["quant"])] = r
    if order:  # the listed quants first, in that order
        rank = {q: i for i, q in enumerate(order)}
        latest = dict(sorted(latest.items(), key=lambda kv: (kv[0][0], rank.get(kv[0][1], len(rank)))))
    fp16 = {st: r for (st, q), r in latest.items() if q == "fp16"}
    metric_keys = sorted({k for r in latest.values() for k in r["metrics"]})
    if task.startswith("ppl"):
        head = (
            "| model | text (prompt+scored x windows) | decode | quant | ppl | 95% CI (windows) | vs fp16 "
            "| ppl/fp16, paired 95% CI | effective bits | KV MiB |"
        )
        lines = [head, "|" + "---|" * 10]
        for (st, q), r in latest.items():
            met = r["metrics"]
            base = fp16.get(st, {}).get("metrics", {}).get("ppl")
            rel = f"{100 * (met['ppl'] / base - 1):+.1f}%" if base else "–"
            lo, hi = paired_ratio(r.get("details") or [], fp16.get(st, {}).get("details") or [])
            lines.append(
                f"| {st[0]} | {st[1]}+{st[2]} x {st[3]} | {st[4]} | {q} | {_fmt(met['ppl'])} | "
                f"[{_fmt(met.get('ppl_lo'))}, {_fmt(met.get('ppl_hi'))}] | {rel} | [{_fmt(lo, 3)}, {_fmt(hi, 3)}] | "
                f"{_fmt(r.get('kv_effective_bits'), 3)} | {_fmt((r.get('kv_bytes') or 0) / 2**20)} |"
            )
        return "\n".join(lines)
    head = "| model | setting | quant | " + " | ".join(metric_keys) + " | effective bits |"
    lines = [head, "|" + "---|" * (len(metric_keys) + 4)]
    for (st, q), r in latest.items():
        vals = " | ".join(_fmt(r["metrics"].get(k)) for k in metric_keys)
        lines.append(f"| {st[0]} | {st[5]} | {q} | {vals} | {_fmt(r.get('kv_effective_bits'), 3)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", default="results/runs.jsonl")
    ap.add_argument(
        "--task", action="append", default=None, help="task label(s); default: ppl passkey agreement"
    )
    ap.add_argument("--order", default="", help="comma-separated quants listed first, in this order")
    args = ap.parse_args()
    if not Path(args.records).is_file():
        ap.error(f"--records: {args.records!r}: no such file")
    rows = list(read_records(Path(args.records)))
    tasks = args.task or ["ppl", "passkey", "agreement"]
    tables = [(task, table(rows, task, [q for q in args.order.split(",") if q])) for task in tasks]
    if not any(t for _, t in tables):
        ap.error(f"--records: no records of {', '.join(tasks)} in {args.records}")
    for task, t in tables:
        if t:
            print(f"### {task}\n\n{t}\n")


if __name__ == "__main__":
    main()
