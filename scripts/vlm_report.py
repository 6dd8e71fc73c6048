"""SynthBench tables and the example-answer figure for results/vlm/, from run records only.

    python scripts/vlm_report.py results/vlm/synthbench.jsonl --out results/vlm

Writes OUT/table.md: accuracy (%) per method, task and context cell with a 95 % bootstrap interval over the
samples (each record's per-sample `details`), the mean over tasks, effective KV bits, and the vision x text
bits grid when its records are there; and OUT/examples.png: example images of one sample per task, the
question, and each method's answer (right or wrong). The last record of each (model, quant, cells) wins.
"""

from __future__ import annotations

import argparse
import json
import random
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from akvq.records import read_records

TASK_ORDER = ("SceneTransition", "Spot-the-Diff", "ImageNeedleInAHaystack", "ObjectExistence")
SHORT = {"SceneTransition": "Transition", "Spot-the-Diff": "Spot-diff", "ImageNeedleInAHaystack": "Needle",
         "ObjectExistence": "Object"}  # fmt: skip
CELL_ORDER = ("1K", "2K", "4K", "8K")


def bootstrap(scores: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean (percent) resampling samples."""
    if len(scores) < 2:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    k = len(scores)
    means = sorted(100 * sum(rng.choices(scores, k=k)) / k for _ in range(n))
    return means[int(0.025 * (n - 1))], means[int(0.975 * (n - 1))]


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """quant -> its last synthbench record with per-sample details."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if str(r.get("task", "")).startswith("synthbench") and r.get("details"):
            out[r["quant"]] = r
    return out


def cells(rec: dict[str, Any]) -> dict[tuple[str, str], list[float]]:
    """(task, cell) -> per-sample scores (0/1)."""
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    for d in rec["details"]:
        by[(d["dataset"], d.get("level") or "all")].append(float(d["score"]))
    return by


def method_table(recs: dict[str, dict[str, Any]], order: list[str]) -> str:
    keys = sorted(
        {k for r in recs.values() for k in cells(r)},
        key=lambda k: (TASK_ORDER.index(k[0]) if k[0] in TASK_ORDER else 9, CELL_ORDER.index(k[1])
                       if k[1] in CELL_ORDER else 9),
    )  # fmt: skip
    head = ["method", "KV bits", *[f"{SHORT.get(t, t)} {c}" for t, c in keys], "mean", "n/cell"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in order:
        if q not in recs:
            continue
        rec = recs[q]
        by = cells(rec)
        row = [q, f"{rec.get('kv_effective_bits', float('nan')):.2f}"]
        for k in keys:
            s = by.get(k)
            if not s:
                row.append("–")
                continue
            lo, hi = bootstrap(s)
            row.append(f"{100 * sum(s) / len(s):.0f} [{lo:.0f}, {hi:.0f}]")
        every = [x for k in keys for x in by.get(k, [])]
        row.append(f"{100 * sum(every) / max(1, len(every)):.1f}")
        row.append(str(min(len(by.get(k, [])) for k in keys)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def roles_grid(recs: dict[str, dict[str, Any]]) -> str:
    """Vision x text bits (every layer, `roles_all_layers`): mean accuracy and effective bits."""
    rows = []
    for v in (1, 2, 4):
        cols = []
        for t in (2, 4):
            rec = recs.get(f"akvq_roles_v{v}_t{t}")
            if rec is None:
                cols.append("–")
                continue
            every = [x for s in cells(rec).values() for x in s]
            lo, hi = bootstrap(every)
            cols.append(
                f"{100 * sum(every) / len(every):.1f} [{lo:.0f}, {hi:.0f}] ({rec['kv_effective_bits']:.2f} b)"
            )
        rows.append(f"| vision {v}-bit | " + " | ".join(cols) + " |")
    if all(c.count("–") == 2 for c in rows):
        return ""
    return "\n".join(["| | text 2-bit | text 4-bit |", "|---|---|---|", *rows])


def _shown(task: str, inst: dict[str, Any], n: int) -> list[int]:
    """Which images to draw (0-based): the option images for "which image" questions, the asked image and its
    neighbours for ObjectExistence, the first and last frames for SceneTransition."""
    choices = [str(c) for c in inst.get("choice_list") or []]
    if choices and all(c.isdigit() for c in choices):
        return [int(c) - 1 for c in choices]
    if task == "ObjectExistence":
        k = int(inst["context"].rsplit("Image ", 1)[-1].rstrip("?")) - 1
        return list(range(max(0, k - 2), min(n, k + 3)))
    return sorted({*range(min(4, n)), *range(max(0, n - 4), n)})


def _score(rec: dict[str, Any], task: str, sample_id: int) -> float:
    return next(
        (e["score"] for e in rec["details"] if e["dataset"] == task and e["sample_id"] == sample_id), 0.0
    )


def _spread(recs: dict[str, dict[str, Any]], methods: list[str], task: str, d: dict[str, Any]) -> float:
    """Highest when half the methods get the sample right: the samples that show a difference."""
    hits = [_score(recs[q], task, d["sample_id"]) for q in methods]
    return -abs(sum(hits) / len(hits) - 0.5)


def examples_figure(recs: dict[str, dict[str, Any]], order: list[str], out: Path) -> Path | None:
    """One sample per task: a strip of its images (the asked-about ones first), the question, each method's answer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    base = recs.get("fp16")
    if base is None:
        return None
    methods = [q for q in order if q in recs]
    root = Path(((base.get("config") or {}).get("task") or {}).get("synthbench_root") or "")
    picks = []
    for task in TASK_ORDER:
        # a 1K sample fp16 gets right where the methods disagree most (or any fp16-right sample)
        cands = [
            d for d in base["details"] if d["dataset"] == task and d.get("level") == "1K" and d["score"] > 0
        ]
        if not cands:
            continue

        picks.append(max(cands, key=lambda d, t=task: _spread(recs, methods, t, d)))
    if not picks or not (root / picks[0]["dataset"]).is_dir():
        return None
    fig = plt.figure(figsize=(13, 2.4 * len(picks)))
    for row, d in enumerate(picks):
        task = d["dataset"]
        data = json.loads((root / task / f"{task}.json").read_text(encoding="utf-8"))["data"]
        item = next(x for x in data if x["sample_id"] == d["sample_id"])
        inst = item["task_instance"]
        paths = inst["images_path"]
        show = _shown(task, inst, len(paths))
        ax_img = fig.add_axes((0.01, 1 - (row + 1) / len(picks) + 0.12 / len(picks), 0.42, 0.7 / len(picks)))
        ax_img.axis("off")
        strip = [Image.open(root / task / "images" / paths[i]).convert("RGB") for i in show]
        w = sum(im.width for im in strip) + 4 * (len(strip) - 1)
        canvas = Image.new("RGB", (w, max(im.height for im in strip)), "white")
        x = 0
        for im in strip:
            canvas.paste(im, (x, 0))
            x += im.width + 4
        ax_img.imshow(canvas)
        ax_img.set_title(
            f"{task} ({d.get('level')}, {d['images']} images); shown: " + ", ".join(f"{i + 1}" for i in show),
            fontsize=8,
            loc="left",
        )
        question = inst["context"].rsplit("Question:", 1)[-1].strip()
        choices = "  ".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(inst.get("choice_list") or []))
        text = [
            textwrap.fill("Q: " + question, 70),
            textwrap.fill(choices, 70),
            f"answer: {item['response']}",
            "",
        ]
        for q in methods:
            e = next(
                (e for e in recs[q]["details"] if e["dataset"] == task and e["sample_id"] == d["sample_id"]),
                None,
            )
            if e is None:
                continue
            mark = "✓" if e["score"] > 0 else "✗"
            text.append(f"{mark} {q:<12} {' '.join(str(e['prediction']).split())[:40]}")
        ax_txt = fig.add_axes((0.46, 1 - (row + 1) / len(picks) + 0.02 / len(picks), 0.53, 0.94 / len(picks)))
        ax_txt.axis("off")
        ax_txt.text(0, 1, "\n".join(text), va="top", family="monospace", fontsize=7.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


DEFAULT_ORDER = [
    "fp16", "rtn2", "kivi2", "skvq", "smoothquant", "akvq_rtn", "akvq_wht", "akvq_tsa", "akvq_psa", "akvq",
    "akvq_plus",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("results/vlm"))
    args = ap.parse_args()
    records = [r for p in args.records for r in read_records(p)]
    recs = latest(records)
    order = DEFAULT_ORDER + sorted(
        q for q in recs if q not in DEFAULT_ORDER and not q.startswith("akvq_roles")
    )
    parts = [
        "## Method table (accuracy %, 95 % bootstrap interval over samples)",
        "",
        method_table(recs, order),
    ]
    grid = roles_grid(recs)
    if grid:
        parts += ["", "## Vision x text bits in every layer (accuracy over the cells each record ran, effective bits)", "",
                  grid]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
    print("\n".join(parts))
    fig = examples_figure(recs, order, args.out / "examples.png")
    print(f"figure: {fig}" if fig else "figure: no fp16 record with a readable root")


if __name__ == "__main__":
    main()
