"""Records and tables: a measured run becomes one record (the shape every table and figure reads), and rows
become the small fixed-width tables `run.py` prints."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from akvq import records
from akvq.paths import atomic_open
from akvq.runner.execute import Measured
from akvq.runner.plan import RunPlan

DETAILS_MAX_BYTES = 200_000  # larger task details go to a sidecar file next to the records
TRACKED = (
    "metrics",
    "kv_effective_bits",
    "kv_bytes",
    "peak_memory_bytes",
    "tokens_per_second",
    "wall_seconds",
)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def _num(x: Any) -> float | int | None:
    if x is None:
        return None
    x = x.item() if hasattr(x, "item") else x
    return x if isinstance(x, int) else float(x)


def details_entry(details: Any, chash: str, records_path: Path) -> dict[str, Any]:
    """Small details go in the record; large ones to `<records dir>/details/<hash>.json`, linked by path."""
    data = records.to_json(details)
    blob = json.dumps(data)
    if len(blob) <= DETAILS_MAX_BYTES:
        return {"details": data}
    out = records_path.parent / "details" / f"{chash}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        fh.write(blob)
    return {"details_path": os.path.relpath(out, records_path.parent)}


def record(p: RunPlan, m: Measured, records_path: Path) -> dict[str, Any]:
    """The record of one measured run (not yet written)."""
    result = m.result
    metrics = records.to_json(dict(_get(result, "metrics") or {}))
    num_tokens = _get(result, "num_tokens")
    own = _get(result, "seconds")  # the task's own time (a shared prefill counted in each run)
    seconds = own if own is not None else (m.wall_seconds if m.shared_with == 1 else None)
    rec: dict[str, Any] = {
        "model": p.model,
        "task": p.task,
        "quant": p.quant,
        "metrics": metrics,
        "kv_effective_bits": _num(_get(result, "kv_effective_bits")),
        "kv_bytes": _num(_get(result, "kv_bytes")),
        "peak_memory_bytes": m.peak_memory_bytes,
        "tokens_per_second": (num_tokens / seconds) if num_tokens and seconds else None,
        "wall_seconds": m.wall_seconds,
        "config": p.config,
        "config_hash": p.config_hash,
        "git_rev": records.git_rev(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": m.device,
        "num_tokens": num_tokens,
        "primary_metric": records.primary_metric(metrics, getattr(p.task_obj, "primary_metric", None)),
    }
    if resumed := _get(result, "resumed_samples"):  # wall_seconds and peak memory are this sitting's only
        rec["resumed_samples"] = int(resumed)
    if m.shared_with > 1:  # runs done together, one prefill per prompt (their wall time and peak)
        rec["prefill_shared_by"] = m.shared_with
    details = _get(result, "details")
    if details:
        rec.update(details_entry(details, p.config_hash, records_path))
    return rec


def tracked(rec: dict[str, Any]) -> dict[str, Any]:
    """What goes to W&B from a record."""
    return {k: rec[k] for k in TRACKED if rec[k] is not None}


# ---------------------------------------------------------------- the printed table


def _human_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Small fixed-width tables, one per (model, task): quant, the task's main metric, effective bits, KV bytes,
    peak memory, tokens/s, wall seconds."""
    if not rows:
        return "(no runs)"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]), str(r["task"])), []).append(r)
    out = "\n\n".join(_one_table(f"{m} | {t}", g) for (m, t), g in groups.items())
    if any(records.is_stale(r) for r in rows):
        out += f"\n* {records.STALE_NOTE} (now {records.git_rev()}); redo=true reruns it"
    return out


def _one_table(title: str, rows: list[dict[str, Any]]) -> str:
    last = rows[-1].get("metrics") or {}
    metric = rows[-1].get("primary_metric") or records.primary_metric(last) or next(iter(last), None)
    head = ["quant", str(metric), "eff. bits", "KV bytes", "peak mem", "tok/s", "wall s"]
    body = []
    for r in rows:
        m = (r.get("metrics") or {}).get(metric)
        body.append(
            [
                r["quant"] + (" *" if records.is_stale(r) else ""),
                _fmt(m, ".4g") if isinstance(m, int | float) else str(m if m is not None else "-"),
                _fmt(r.get("kv_effective_bits"), ".2f"),
                _human_bytes(r.get("kv_bytes")),
                _human_bytes(r.get("peak_memory_bytes")),
                _fmt(r.get("tokens_per_second"), ".1f"),
                _fmt(r.get("wall_seconds"), ".1f"),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(cells: list[Any]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([title, line(head), line(["-" * w for w in widths]), *map(line, body)])
