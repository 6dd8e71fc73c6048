"""SynthBench tables and the example-answer figure for results/vlm/, from run records only.

    python scripts/vlm_report.py results/vlm/synthbench_needle2.jsonl --out results/vlm --cell 1K/100
    python scripts/vlm_report.py results/vlm/synthbench_recipe_2k100.jsonl --cell 2K/100 --table table_2k100.md \
        --figure none   # a second cell's table beside the main one
    python scripts/vlm_report.py results/vlm/synthbench_ctx1_shipped.jsonl results/vlm/synthbench_bf16_1k100.jsonl \
        --cell 1K/100 --table table_1k100_dtypes.md --figure none   # float32 against bf16 on the same samples
    python scripts/vlm_report.py results/vlm/synthbench_ctx1_shipped.jsonl results/vlm/recipe/synthbench.jsonl \
        --seed 2026 --cell 1K/100 --by-weights --table table_recipe.md --out results/vlm/recipe   # two weights files
    python scripts/vlm_report.py results/vlm/synthbench_context.jsonl results/vlm/recipe/synthbench_val.jsonl \
        --seed 4242 --cell 1K/100 --by-weights --weights c573d30e,ddff4d9e --table t.md   # only these two files

Writes OUT/table.md: accuracy (%) per method, task and context cell with a 95 % bootstrap interval over the
samples (each record's per-sample `details`), the mean over tasks, effective KV bits, and the vision x text
bits grid when its records are there, the paired comparison (ladder steps, fp16 against each method: items won
and lost on the same samples, sign test), the needle task by the depth of its answer in the haystack; and
OUT/examples.png: example images of one sample per task, the question, and each method's answer (right or wrong).
Records of one method on several roots (cells) or tasks add up; the last record of each (quant, task, cell) wins.
Records of one (quant, task, cell) on two weights files or on roots of two seeds are refused in one line (`--seed S`
keeps one seed's records; `--by-weights` compares weights files instead). A model run in bf16 (or fp16) makes cells
of its own ("8K/100/bf16"), and a cell's methods run in both dtypes are paired item by item.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's akvq, also where it is not installed (the device machine)

from akvq.paths import save_figure, write_atomic  # noqa: E402
from akvq.records import read_records  # noqa: E402
from akvq.tasks.milebench import chosen_option, load_dataset  # noqa: E402

TASK_ORDER = ("SceneTransition", "Spot-the-Diff", "ImageNeedleInAHaystack", "ObjectExistence")
SHORT = {"SceneTransition": "Transition", "Spot-the-Diff": "Spot-diff", "ImageNeedleInAHaystack": "Needle",
         "ObjectExistence": "Object"}  # fmt: skip
CELL_ORDER = ("1K", "2K", "4K", "8K")
MAIN_CELL = "1K/20"
"""`--cell`'s default: the cell every method ran on with the first weights (`synthbench.jsonl`)."""


def bootstrap(scores: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean (percent) resampling samples."""
    if len(scores) < 2:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    k = len(scores)
    means = sorted(100 * sum(rng.choices(scores, k=k)) / k for _ in range(n))
    return means[int(0.025 * (n - 1))], means[int(0.975 * (n - 1))]


@dataclass
class Entry:
    """One method's per-sample scores (0/1) in one (task, cell), and the record they came from."""

    scores: list[float]
    bits: float
    record: dict[str, Any]


DTYPE_TAGS = {"bfloat16": "bf16", "float16": "fp16"}
"""The model's compute dtype, when not float32, is part of a cell ("8K/100/bf16"): a run in bf16 is not a row
beside float32 runs of the same samples, and `dtype_table` pairs the two."""


def cells(rec: dict[str, Any]) -> dict[tuple[str, str], list[float]]:
    """(task, cell) -> per-sample scores (0/1). A cell is a context length and a sample count ("1K/100"), so a
    100-sample run is a row of its own table, not a row beside 20-sample runs of the same length; a model run in
    another dtype than float32 adds its tag ("1K/100/bf16")."""
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    for d in rec["details"]:
        by[(d["dataset"], d.get("level") or "all")].append(float(d["score"]))
    per_level: dict[str, int] = defaultdict(int)
    for (_, level), scores in by.items():
        per_level[level] = max(per_level[level], len(scores))
    model = (rec.get("config") or {}).get("model") or {}
    tag = DTYPE_TAGS.get(str(model.get("dtype")))
    suffix = f"/{tag}" if tag else ""
    return {(task, f"{level}/{per_level[level]}{suffix}"): scores for (task, level), scores in by.items()}


def cell_title(cell: str) -> str:
    level, n, *tag = cell.split("/")
    dtype = {v: k for k, v in DTYPE_TAGS.items()}.get(tag[0], tag[0]) if tag else None
    return f"{level} cell, {n} samples per task" + (f", model in {dtype}" if dtype else "")


def weights_of(rec: dict[str, Any]) -> str:
    """The weights a record's model ran on: the file's SHA-256 when the config names one, else its path or name."""
    model = (rec.get("config") or {}).get("model") or {}
    return str(model.get("sha256") or model.get("weights") or model.get("name") or "?")


def seed_of(rec: dict[str, Any]) -> str:
    """The seed of the root a record ran on (its stamp, `config.data`): two roots of one length and sample count
    (the evaluation seed and the validation seed) hold different items."""
    data = (rec.get("config") or {}).get("data") or {}
    return str(
        data.get("seed", data.get("standard_root", "?"))
    )  # "?": a record from before roots were stamped


def is_synthbench(r: dict[str, Any]) -> bool:
    """A record the report reads: a synthbench run with its per-sample details."""
    return str(r.get("task", "")).startswith("synthbench") and bool(r.get("details"))


def collect(
    records: list[dict[str, Any]], by_weights: bool = False
) -> dict[str, dict[tuple[str, str], Entry]]:
    """quant -> (task, cell) -> the last synthbench record's scores there. Records of one method on other roots
    (context cells) or tasks add up; a later run of the same (task, cell) on the same weights and root seed replaces
    the earlier one. Records of one (quant, task, cell) on two weights files or two seeds are not one row: an error
    (`--seed` keeps one seed's records), unless `by_weights`, which keys each method as `quant@sha` (the first 8 hex
    digits) for `weights_table`."""
    out: dict[str, dict[tuple[str, str], Entry]] = defaultdict(dict)
    for r in records:
        if is_synthbench(r):
            w = weights_of(r)
            q = f"{r['quant']}@{w[:8]}" if by_weights else r["quant"]
            for key, scores in cells(r).items():
                old = out[q].get(key)
                if old is not None and weights_of(old.record) != w:
                    raise ValueError(
                        f"{r['quant']} on {key[0]} ({key[1]}) has records of two weights files "
                        f"({weights_of(old.record)[:8]}, {w[:8]}): pass one file's records, or --by-weights "
                        "to compare them"
                    )
                seeds = {seed_of(old.record), seed_of(r)} if old is not None else set()
                if len(seeds - {"?"}) > 1:  # a record from before roots were stamped could be either
                    raise ValueError(
                        f"{r['quant']} on {key[0]} ({key[1]}) has records of roots of two seeds "
                        f"({seed_of(old.record)}, {seed_of(r)}): --seed S keeps one"
                    )
                out[q][key] = Entry(scores, float(r.get("kv_effective_bits", float("nan"))), r)
    return out


def _task_key(t: str) -> int:
    return TASK_ORDER.index(t) if t in TASK_ORDER else 9


def _cell(scores: list[float]) -> str:
    lo, hi = bootstrap(scores)
    return f"{100 * sum(scores) / len(scores):.0f} [{lo:.0f}, {hi:.0f}]"


def _bits(entries: list[Entry]) -> float:
    """Mean effective bits over the distinct runs behind a row (each run counts every token it stored)."""
    runs = {id(e.record): e.bits for e in entries}
    return sum(runs.values()) / len(runs)


def levels(data: dict[str, dict[tuple[str, str], Entry]]) -> list[str]:
    """The cells present, by context length, then sample count."""
    found = {c for by in data.values() for _, c in by}

    def key(c: str) -> tuple[int, int, str]:
        level, n, *tag = c.split("/")
        return (CELL_ORDER.index(level) if level in CELL_ORDER else 9, int(n), "/".join(tag))

    return sorted(found, key=key)


def method_table(data: dict[str, dict[tuple[str, str], Entry]], order: list[str], level: str) -> str:
    """One context cell: a row per method, a column per task, the mean over tasks and the effective bits."""
    tasks = sorted({t for q in order for t, c in data.get(q, {}) if c == level}, key=_task_key)
    head = ["method", "KV bits", *[SHORT.get(t, t) for t in tasks], "mean", "n/task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in order:
        got = [data.get(q, {}).get((t, level)) for t in tasks]
        entries = [e for e in got if e is not None]
        if not entries:
            continue
        row = [q, f"{_bits(entries):.2f}"]
        row += ["–" if e is None else _cell(e.scores) for e in got]
        every = [x for e in entries for x in e.scores]
        mean = f"{100 * sum(every) / len(every):.1f}"
        n = len(entries)
        row.append(mean if n == len(tasks) else f"({mean}, {n} task{'s' if n > 1 else ''})")
        row.append(str(min(len(e.scores) for e in entries)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def roles_name(vision: int, text: int) -> str:
    """The grid's config for `vision`/`text` bits (configs/quant/akvq_roles_v*_t*.yaml)."""
    return f"akvq_roles_v{vision}_t{text}"


def roles_grid(data: dict[str, dict[tuple[str, str], Entry]], level: str = MAIN_CELL) -> str:
    """Vision x text bits (every layer, `roles_all_layers`): accuracy per task and mean effective bits. Where rows
    ran on different tasks (a partial grid), every row's bits are over the tasks all rows share, since a task's
    share of text tokens moves its bits; the header names them."""
    names = {(v, t): roles_name(v, t) for v in (1, 2, 4) for t in (2, 4)}
    tasks = sorted({t for q in names.values() for t, c in data.get(q, {}) if c == level}, key=_task_key)
    got = {vt: [data.get(q, {}).get((task, level)) for task in tasks] for vt, q in names.items()}
    got = {vt: row for vt, row in got.items() if any(e is not None for e in row)}
    if not got:
        return ""
    shared = [i for i in range(len(tasks)) if all(row[i] is not None for row in got.values())]
    over = shared or range(len(tasks))
    bits_head = "KV bits"
    if len(shared) < len(tasks):
        bits_head += (
            f" ({', '.join(SHORT.get(tasks[i], tasks[i]) for i in shared)})" if shared else " (each row's)"
        )
    head = ["vision", "text", bits_head, *[SHORT.get(t, t) for t in tasks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (v, t), row in got.items():
        bits = _bits([e for i in over if (e := row[i]) is not None])
        cells = ["–" if e is None else _cell(e.scores) for e in row]
        lines.append("| " + " | ".join([f"{v}-bit", f"{t}-bit", f"{bits:.2f}", *cells]) + " |")
    return "\n".join(lines)


ROLES_PAIRS = (
    ((2, 2), (1, 4), "a bit moved from vision to text"),
    ((4, 2), (2, 4), "the two widths swapped between vision and text"),
    ((4, 4), (2, 4), "vision 4 -> 2 bits, text at 4"),
    ((4, 4), (4, 2), "text 4 -> 2 bits, vision at 4"),
)
"""The grid's comparisons that answer where the bits belong: item by item, since 100 items' intervals overlap. Moving
a bit from vision to text keeps the mean bits only where vision and text tokens weigh alike (1K, 2K; at 4K vision
outweighs text), so a row calls its sides equal only where their measured bits are."""
EQUAL_BITS = 0.05
"""Two mean effective bits this close are called equal (the 1K and 2K grids differ by 0.01)."""


def roles_pairs(data: dict[str, dict[tuple[str, str], Entry]], level: str = MAIN_CELL) -> str:
    """The grid's paired comparisons (ROLES_PAIRS, then fp16 against the 2-bit/2-bit cell) with each side's mean
    effective bits; empty when no pair has both sides in this cell."""
    tasks = sorted(
        {t for q, by in data.items() if q.startswith("akvq_roles_") for t, c in by if c == level},
        key=_task_key,
    )

    def label(a: str, b: str, why: str) -> str:
        # each side's bits over the tasks both ran (a task's share of text tokens moves its bits)
        over = [t for t in tasks if (t, level) in data.get(a, {}) and (t, level) in data.get(b, {})]
        if not over:
            return why  # no task in common: _paired_rows leaves the row out
        ba, bb = (_bits([data[q][(t, level)] for t in over]) for q in (a, b))
        same = ", equal mean bits" if abs(ba - bb) <= EQUAL_BITS else ""
        return f"{ba:.2f} vs {bb:.2f} bits: {why}{same}"

    sides = [
        ((roles_name(*a), f"v{a[0]}/t{a[1]}"), (roles_name(*b), f"v{b[0]}/t{b[1]}"), why)
        for a, b, why in ROLES_PAIRS
    ]
    sides.append((("fp16", "fp16"), (roles_name(2, 2), "v2/t2"), "16 bits against 2/2"))
    rows = [(a, b, f"{la} vs {lb} ({label(a, b, why)})") for (a, la), (b, lb), why in sides]
    lines = _paired_rows(data, rows, tasks, level)
    if not lines:
        return ""
    head = ["pair (vision/text bits)", *[SHORT.get(t, t) for t in tasks]]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines])


LADDER = ("akvq_rtn", "akvq_wht", "akvq_tsa", "akvq")
"""The ablation ladder's rungs in order (rtn with the window, +WHT, +TSA, +PSA = the paper's recipe)."""


def sign_test(a: int, b: int) -> float:
    """Two-sided exact sign test of a wins against b losses (ties dropped)."""
    n, k = a + b, min(a, b)
    if not n:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def wins_losses(sa: dict[Any, float], sb: dict[Any, float]) -> tuple[int, int]:
    """Items right in `sa` and wrong in `sb`, and the reverse, over the samples both scored."""
    common = sa.keys() & sb.keys()
    return sum(sa[i] > sb[i] for i in common), sum(sa[i] < sb[i] for i in common)


def paired_text(win: int, loss: int) -> str:
    """`win-loss (p = ...)`, the sign test's p left out when nothing differs."""
    return f"{win}-{loss}" + (f" (p = {sign_test(win, loss):.2g})" if win + loss else "")


def _details(e: Entry, task: str, level: str) -> list[dict[str, Any]]:
    """The per-sample details of `task` in cell `level` of the record behind `e`."""
    length = level.split("/")[0]
    return [d for d in e.record["details"] if d["dataset"] == task and (d.get("level") or "all") == length]


def _per_sample(e: Entry, task: str, level: str) -> dict[Any, float]:
    return {d["sample_id"]: float(d["score"]) for d in _details(e, task, level)}


def paired_table(data: dict[str, dict[tuple[str, str], Entry]], order: list[str], level: str) -> str:
    """Items the first method gets right and the second wrong, against the reverse, on the same samples, with the
    sign test's p: the comparison a bootstrap interval per method is too wide for. Rows: each ladder step, fp16
    against every other method, and akvq against every method off the ladder (the baselines)."""
    tasks = sorted({t for by in data.values() for t, c in by if c == level}, key=_task_key)
    pairs = [(a, b) for a, b in zip(LADDER, LADDER[1:]) if a in data and b in data]
    pairs += [("fp16", q) for q in order if q != "fp16" and q in data and "fp16" in data]
    pairs += [("akvq", q) for q in order if q not in ("fp16", *LADDER) and q in data and "akvq" in data]
    head = ["pair", *[SHORT.get(t, t) for t in tasks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += _paired_rows(data, [(a, b, f"{a} vs {b}") for a, b in pairs], tasks, level)
    return "\n".join(lines) if len(lines) > 2 else ""


def _paired_rows(
    data: dict[str, dict[tuple[str, str], Entry]],
    pairs: list[tuple[str, str, str]],
    tasks: list[str],
    level: str,
) -> list[str]:
    """One table row per (a, b, label): a's wins-losses against b per task, rows with no task in common left out."""
    lines = []
    for a, b, label in pairs:
        row = [label]
        for t in tasks:
            ea, eb = data.get(a, {}).get((t, level)), data.get(b, {}).get((t, level))
            if ea is None or eb is None:
                row.append("–")
                continue
            sa, sb = _per_sample(ea, t, level), _per_sample(eb, t, level)
            row.append(paired_text(*wins_losses(sa, sb)))
        if any(c != "–" for c in row[1:]):
            lines.append("| " + " | ".join(row) + " |")
    return lines


NEEDLE = "ImageNeedleInAHaystack"


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact test of the 2x2 table [[a, b], [c, d]]: the probability, margins fixed, of a table
    no more likely than this one."""
    row, col, n = a + b, a + c, a + b + c + d

    def prob(x: int) -> float:
        return math.comb(col, x) * math.comb(n - col, row - x) / math.comb(n, row)

    seen = prob(a)
    lo, hi = max(0, row + col - n), min(row, col)
    return min(1.0, sum(p for x in range(lo, hi + 1) if (p := prob(x)) <= seen * (1 + 1e-9)))


def _choice_lists(rec: dict[str, Any], task: str) -> dict[Any, list[str]] | None:
    """sample_id -> the options shown, from the record's root; None when the root is not on this machine, or is
    another root now (a path reused for other items: an answer differs from the record's)."""
    root = Path(((rec.get("config") or {}).get("task") or {}).get("synthbench_root") or "")
    if not str(root) or not (root / task / f"{task}.json").is_file():
        return None
    samples = {s.sample_id: s for s in load_dataset(root, task)}
    for d in rec["details"]:
        shown = samples.get(d["sample_id"])
        if d["dataset"] == task and (shown is None or shown.answer != str(d.get("answer"))):
            return None
    return {i: list(s.choices or []) for i, s in samples.items()}


def depth_table(data: dict[str, dict[tuple[str, str], Entry]], order: list[str], level: str) -> str:
    """The needle task by where the answer's image sits in the haystack (its number over the item's images, in
    quarters): accuracy per quarter, and the ends (first and last quarter) against the middle half with Fisher's
    exact test. Says whether a long cell is lost everywhere or in the middle (the lever differs: a model that
    reads the ends attends that far; one that reads nowhere does not). With the root on this machine, also the
    share of answers that name none of the four options (no pick at all, where a wrong answer picks another)."""
    head = ["method", "1st quarter", "2nd", "3rd", "4th", "ends / middle", "p", "no option named"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in order:
        e = data.get(q, {}).get((NEEDLE, level))
        if e is None:
            continue
        right, n = [0] * 4, [0] * 4
        shown, named = _choice_lists(e.record, NEEDLE), [0, 0]
        for d in _details(e, NEEDLE, level):
            if shown is not None and shown.get(d["sample_id"]):
                named[0] += len(chosen_option(str(d.get("prediction", "")), shown[d["sample_id"]])) != 1
                named[1] += 1
            answer, images = str(d.get("answer", "")).strip(), int(d.get("images") or 0)
            if not answer.isdigit() or not 1 <= int(answer) <= images:
                break  # not a needle record with image numbers (an older format): no row
            k = min(3, 4 * (int(answer) - 1) // images)
            right[k] += int(float(d["score"]) > 0)
            n[k] += 1
        else:
            ends, mid = (right[0] + right[3], n[0] + n[3]), (right[1] + right[2], n[1] + n[2])
            if not (ends[1] and mid[1]):
                continue
            row = [q, *[f"{100 * r / k:.0f} ({r}/{k})" if k else "–" for r, k in zip(right, n, strict=True)]]
            row.append(f"{100 * ends[0] / ends[1]:.0f} / {100 * mid[0] / mid[1]:.0f}")
            p = fisher_exact(ends[0], ends[1] - ends[0], mid[0], mid[1] - mid[0])
            row.append(f"{p:.2g}")
            row.append(f"{100 * named[0] / named[1]:.0f} %" if named[1] else "–")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def dtype_table(data: dict[str, dict[tuple[str, str], Entry]], order: list[str], cell: str) -> str:
    """Each method run in float32 on `cell` and in another dtype on the same length: accuracy in each over the
    items both ran (a 20-item root is the first 20 of the 100-item one of the same seed), and items right in float32
    and wrong in the other against the reverse. Says whether a cell run in bf16 (affordable on a CPU with AMX) can
    stand beside the float32 ones."""
    base = "/".join(cell.split("/")[:2])
    length = base.split("/")[0]
    others = sorted(
        {c for by in data.values() for _, c in by if c.split("/")[0] == length and c.count("/") == 2}
    )
    tasks = sorted({t for by in data.values() for t, c in by if c == base}, key=_task_key)
    if not tasks:  # no float32 run of this length and count: nothing to pair with
        return ""
    head = ["method", "dtype", *[SHORT.get(t, t) for t in tasks], "mean", "items/task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for other in others:
        for q in order:
            a = [data.get(q, {}).get((t, base)) for t in tasks]
            b = [data.get(q, {}).get((t, other)) for t in tasks]
            if any(x is None for x in a + b):
                continue
            row = [q, f"float32 vs {other.split('/')[2]} ({other})"]
            right, n = [0.0, 0.0], []
            for t, ea, eb in zip(tasks, a, b, strict=True):
                sa, sb = _per_sample(ea, t, base), _per_sample(eb, t, other)
                common = sorted(sa.keys() & sb.keys())
                win, loss = wins_losses(sa, sb)
                ra, rb = sum(sa[i] for i in common), sum(sb[i] for i in common)
                k = max(len(common), 1)
                row.append(f"{100 * ra / k:.0f} / {100 * rb / k:.0f} ({win}-{loss})")
                right[0] += ra
                right[1] += rb
                n.append(len(common))
            total = max(sum(n), 1)
            row += [f"{100 * right[0] / total:.1f} / {100 * right[1] / total:.1f}", str(min(n))]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def weights_table(records: list[dict[str, Any]], cell: str, order: list[str]) -> str:
    """Each method on each weights file in `cell`: accuracy per task, and items the file gets right and the first
    file (the weights of the first record in `cell`) wrong against the reverse, on the samples both ran, with the sign test's
    p. Says whether a retrained file (`train_vlm.py --recipe`) reads the benchmark as the shipped one does."""
    data = collect(records, by_weights=True)
    tasks = sorted({t for by in data.values() for t, c in by if c == cell}, key=_task_key)
    firsts = [weights_of(r) for r in records if is_synthbench(r) and any(c == cell for _, c in cells(r))]
    if not tasks or not firsts:
        return ""
    ref = firsts[0][:8]
    shas = list(dict.fromkeys(w[:8] for w in firsts))
    head = ["method", "weights", *[SHORT.get(t, t) for t in tasks], "mean", "n/task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in order:
        for sha in shas:
            by = data.get(f"{q}@{sha}", {})
            got = [by.get((t, cell)) for t in tasks]
            if not any(got):
                continue
            row = [q, sha + (" (reference)" if sha == ref else "")]
            every: list[float] = []
            for t, e in zip(tasks, got, strict=True):
                if e is None:
                    row.append("–")
                    continue
                every += e.scores
                text = _cell(e.scores)
                base = data.get(f"{q}@{ref}", {}).get((t, cell))
                if sha != ref and base is not None:
                    sa, sb = _per_sample(e, t, cell), _per_sample(base, t, cell)
                    text += "; " + paired_text(*wins_losses(sa, sb))
                row.append(text)
            row += [f"{100 * sum(every) / len(every):.1f}", str(min(len(e.scores) for e in got if e))]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def as_records(data: dict[str, dict[tuple[str, str], Entry]], level: str) -> dict[str, dict[str, Any]]:
    """quant -> a record-like dict of one cell's per-sample details (for the figure), with its run's config."""
    out: dict[str, dict[str, Any]] = {}
    for q, by in data.items():
        details = [d for (task, c), e in by.items() if c == level for d in _details(e, task, level)]
        if details:
            config = next(e.record.get("config") for (_, c), e in by.items() if c == level)
            out[q] = {"details": details, "config": config}
    return out


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
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return out


DEFAULT_ORDER = [
    "fp16", "rtn2", "kivi2", "skvq", "smoothquant", "akvq_rtn", "akvq_wht", "akvq_tsa", "akvq_psa", "akvq",
    "akvq_plus",
]  # fmt: skip


def report(
    records: list[dict[str, Any]],
    out: Path,
    cell: str = MAIN_CELL,
    table_name: str = "table.md",
    figure_name: str | None = "examples.png",
    by_weights: bool = False,
) -> str:
    """Writes OUT/table.md (every cell) and OUT/examples.png (`cell`'s samples; None: no figure); returns the table
    text. Other names keep a second cell's table beside the main one (table_2k100.md).

    `cell` is the paired table's too: each set of weights has its own records, and the cell every method ran on
    differs between them (20 per task on the first weights, 100 on the needle run's). The vision x text grid is
    written for every cell that has its records. `by_weights`: only the weights table (`weights_table`), no figure."""
    if by_weights:
        order = DEFAULT_ORDER + sorted({r["quant"] for r in records if "quant" in r} - set(DEFAULT_ORDER))
        table = weights_table(records, cell, order)
        text = (
            f"## Each weights file ({cell_title(cell)}; accuracy %, 95 % bootstrap interval; then items right on"
            " this file and wrong on the reference - the reverse, two-sided sign test)\n\n"
            + (table or f"no synthbench records in cell {cell}")
            + "\n"
        )
        data = collect(records, by_weights=True)
        depth = depth_table(data, [k for q in order for k in data if k.split("@")[0] == q], cell)
        if depth:  # a retrained file is judged on the haystack's middle half (issue #12)
            text += f"\n## The needle by depth, each weights file ({cell_title(cell)}; as in the method tables)\n\n"
            text += depth + "\n"
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / table_name, text)
        print(text + f"table: {out / table_name}")
        return text
    data = collect(records)
    order = DEFAULT_ORDER + sorted(
        q for q in data if q not in DEFAULT_ORDER and not q.startswith("akvq_roles")
    )
    parts = ["## Method table (accuracy %, 95 % bootstrap interval over samples)"]
    for level in levels(data):
        table = method_table(data, order, level)
        if table.count("\n") > 1:  # a cell only the vision x text grid ran on has no method rows
            parts += ["", f"### {cell_title(level)}", "", table]
    pairs = paired_table(data, order, cell)
    if pairs:
        parts += [
            "",
            f"## Paired on the same samples ({cell_title(cell)}; first right and second wrong - the reverse,"
            " two-sided sign test)",
            "",
            pairs,
        ]
    depth = depth_table(data, order, cell)
    if depth:
        parts += [
            "",
            f"## The needle by depth ({cell_title(cell)}; accuracy % (right/items) by the quarter of the haystack"
            " the answer's image sits in; the first and last quarter against the middle half, Fisher's exact test;"
            " answers that name none of the four options, where the root is on this machine)",
            "",
            depth,
        ]
    dtypes = dtype_table(data, order, cell)
    if dtypes:
        parts += [
            "",
            f"## The same samples in float32 and another dtype ({cell_title(cell)}; accuracy % in each,"
            " and items right in float32 and wrong in the other - the reverse)",
            "",
            dtypes,
        ]
    for level in levels(data):
        grid = roles_grid(data, level)
        if grid:
            parts += [
                "",
                f"## Vision x text bits in every layer ({cell_title(level)}; accuracy %, mean effective bits)",
                "",
                grid,
            ]
            pairs = roles_pairs(data, level)
            if pairs:
                parts += [
                    "",
                    "Paired, the same items (the first's right answers where the second is wrong - the reverse;"
                    " sign test):",
                    "",
                    pairs,
                ]
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(parts) + "\n"
    write_atomic(out / table_name, text)
    if figure_name is None:
        print(text + f"table: {out / table_name}")
        return text
    fig = examples_figure(as_records(data, cell), order, out / figure_name)
    print(text + (f"figure: {fig}" if fig else f"figure: no fp16 record in cell {cell} with a readable root"))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("results/vlm"))
    ap.add_argument(
        "--cell",
        default=MAIN_CELL,
        help=f"the figure's and the paired tables' cell, LENGTH/SAMPLES[/DTYPE] (default {MAIN_CELL})",
    )
    ap.add_argument("--table", default="table.md", help="the table's file name under OUT (default table.md)")
    ap.add_argument(
        "--figure",
        default="examples.png",
        help="the figure's file name under OUT (default examples.png; none: no figure)",
    )
    ap.add_argument(
        "--by-weights",
        action="store_true",
        help="compare weights files: each method per file in --cell, paired against the first record's file",
    )
    ap.add_argument("--seed", type=int, help="only the records of roots of this seed (config.data.seed)")
    ap.add_argument(
        "--weights",
        help="only the records of these weights files: SHA-256 prefixes, comma-separated (with --by-weights: "
        "the files to compare, where a records file holds other candidates too)",
    )
    args = ap.parse_args()
    for key in ("table", "figure"):
        name = getattr(args, key)
        if "/" in name or not name or name.startswith("."):
            ap.error(f"--{key}: {name!r} is not a plain file name (it is written under --out)")
    parts = args.cell.split("/")
    if (
        len(parts) not in (2, 3)
        or not parts[1].isdigit()
        or parts[2:] not in ([], *([t] for t in DTYPE_TAGS.values()))
    ):
        tags = ", ".join(DTYPE_TAGS.values())
        ap.error(
            f"--cell: {args.cell!r} is not LENGTH/SAMPLES[/DTYPE] per task, e.g. 1K/100 or 8K/100/bf16 ({tags})"
        )
    for path in args.records:
        if not path.is_file():
            ap.error(f"records: {str(path)!r}: no such file")
    records = [r for p in args.records for r in read_records(p)]
    seed = f" of roots of seed {args.seed}" if args.seed is not None else ""
    files = ", ".join(map(str, args.records))
    if args.seed is not None:
        records = [r for r in records if seed_of(r) == str(args.seed)]
    if args.weights is not None:
        prefixes = [w.strip().lower() for w in args.weights.split(",")]
        for w in prefixes:
            if not w or any(c not in "0123456789abcdef" for c in w):
                ap.error(f"--weights: {w!r} is not a SHA-256 prefix (hex digits; comma-separated)")
            if not any(weights_of(r).startswith(w) and is_synthbench(r) for r in records):
                ap.error(f"--weights: no synthbench records{seed} of weights {w}... in {files}")
        records = [r for r in records if weights_of(r).startswith(tuple(prefixes))]
    if not any(is_synthbench(r) for r in records):
        # nothing to report: an empty table would replace the one under --out
        ap.error(f"records: no synthbench records{seed} in {files}")
    try:
        report(
            records,
            args.out,
            args.cell,
            args.table,
            None if args.figure == "none" else args.figure,
            args.by_weights,
        )
    except ValueError as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
