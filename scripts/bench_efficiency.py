"""Efficiency benchmark: KV bytes per token, peak memory, largest batch under a budget, decode tokens/s.

    python scripts/bench_efficiency.py model=smollm2-135m prompt_len=8192 gen_len=2 quants=[fp16,kivi2,akvq] budget_gib=4

Hydra-style overrides of configs/bench/efficiency.yaml. One prefill (batch 1) is shared by all quant configs;
every (quant, batch) point runs in a fresh process (peak RSS on CPU, max_memory_allocated on CUDA). Writes run
records, a CSV of all points, a summary CSV, a memory-vs-batch plot (paper Fig. 9) and a throughput table
(paper Table IV) under `out_dir`. See docs/efficiency.md."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from akvq.bench.batch_search import Point, available_memory, check_budget, largest_batch  # noqa: E402
from akvq.bench.memory import GiB  # noqa: E402
from akvq.bench.throughput import RESULT  # noqa: E402
from akvq.paths import atomic_open, save_figure, write_atomic  # noqa: E402
from akvq.policies import POLICIES, Policy  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def worker(kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one worker process; its RESULT line, or {"oom": True} when it died of memory."""
    cmd = [sys.executable, "-m", "akvq.bench.throughput", kind, json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(spec.get("threads") or "")}
    if not env["OMP_NUM_THREADS"]:
        env.pop("OMP_NUM_THREADS")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    for line in p.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    tail = (p.stderr or "")[-1500:]
    if p.returncode in (-9, 137) or "MemoryError" in tail or "alloc" in tail.lower():
        return {"oom": True, "batch": spec.get("batch"), "error": tail[-300:], "peak_bytes": None}
    raise RuntimeError(f"{kind} worker failed (rc {p.returncode}):\n{tail}")


def parse_entries(names: list[str]) -> list[tuple[str, str, str | None]]:
    """(label, quant config, forced attention) per entry. "name@attention" measures quant config `name` through
    another attention path, e.g. fp16@akvq_packed: the 16-bit cache read by the fused C kernel, a control for what
    the kernel alone buys. Each quant config is prepared once however many entries use it."""
    out = []
    for q in names:
        name, _, att = q.partition("@")
        if not name or (att == "" and "@" in q):
            raise ValueError(f"bad quants entry {q!r}: expected NAME or NAME@ATTENTION")
        out.append((q, name, att or None))
    if len({label for label, _, _ in out}) != len(out):
        raise ValueError(f"duplicate quants entries in {names}")
    return out


def load_cfg(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(ROOT / "configs" / "bench"), version_base=None):
        cfg = compose(config_name="efficiency", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def _check_budget(budget: int, base_bytes: int | None, device: str) -> None:
    """Exit 2 with one line when no batch can be searched under the budget (before any point is measured)."""
    problem = check_budget(budget, base_bytes, available_memory(device))
    if problem:
        print(f"bench_efficiency: {problem}", file=sys.stderr)
        raise SystemExit(2)


def run(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    from akvq.policies import quant_config
    from akvq.records import append_record, config_hash, git_rev

    t_start = time.time()
    model_cfg = yaml.safe_load((ROOT / "configs" / "model" / f"{cfg['model']}.yaml").read_text())
    entries = parse_entries(cfg["quants"])
    quants = {qname: quant_config(qname) for _, qname, _ in entries}
    tag = f"{cfg['model']}-{cfg['prompt_len']}-{cfg['device']}"
    work = ROOT / cfg["work_dir"] / tag
    work.mkdir(parents=True, exist_ok=True)
    out_dir = ROOT / cfg["out_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = int(cfg["budget_gib"] * GiB)
    _check_budget(budget, None, cfg["device"])
    base = {
        "model": model_cfg,
        "device": cfg["device"],
        "threads": cfg["threads"],
        "hp_dtype": cfg["hp_dtype"],
        "gen_len": cfg["gen_len"],
    }
    log(f"prepare {tag}: prefill {cfg['prompt_len']} tokens once, quantize for {list(quants)}")
    prep = worker(
        "prepare",
        {**base, "prompt_len": cfg["prompt_len"], "quants": quants, "work_dir": str(work)},
        cfg["timeout_s"],
    )
    log(
        f"prefill {prep['prefill_seconds']:.1f}s, seq {prep['seq_len']}, vision tokens {prep['vision_tokens']}"
    )
    _check_budget(budget, prep.get("base_peak_bytes"), cfg["device"])
    # never let a point allocate past what the machine has (the data limit is the OOM guard on CPU)
    data_limit = min(int(budget * cfg["data_limit_factor"]), available_memory(cfg["device"]))
    points_csv = out_dir / "points.csv"
    rows: list[dict[str, Any]] = []
    for name, qname, forced in entries:
        qcfg, q = quants[qname], prep["quants"][qname]
        # fp16 and the peers' own caches (transformers' QuantizedCache) are read by transformers' attention
        plain = qcfg["policy"] == "fp16" or POLICIES[qcfg["policy"]].new_cache is not Policy.new_cache
        attention = forced or (cfg["fp16_attention"] if plain else cfg["attention"])
        spec = {
            **base,
            "quant_cfg": qcfg,
            "cache_path": q["cache_path"],
            "attention": attention,
            "data_limit": data_limit,
        }
        measured: dict[int, dict[str, Any]] = {}

        def measure(b: int, spec=spec, name=name, measured=measured, attention=attention) -> Point:
            r = worker("point", {**spec, "batch": b}, cfg["timeout_s"])
            measured[b] = r
            _append_csv(
                points_csv,
                {
                    "model": cfg["model"],
                    "prompt_len": cfg["prompt_len"],
                    "device": cfg["device"],
                    "quant": name,
                    "attention": attention,
                    **_flat(r),
                },
            )
            log(
                f"  {name} batch {b}: "
                + (
                    "OOM"
                    if r.get("oom")
                    else f"peak {r['peak_bytes'] / GiB:.2f} GiB, {r['tokens_per_second']:.2f} tok/s "
                    f"({r['seconds_per_step']:.2f} s/step, cpu {r['cpu_seconds_per_step']:.2f})"
                )
            )
            return Point(b, None if r.get("oom") else r["peak_bytes"], r)

        first = measure(cfg["batch"])
        per_seq = q["kv_bytes_per_token_b1"] * prep["seq_len"]
        found = largest_batch(measure, budget, first, per_seq, cfg["max_batch"], cfg["max_points"])
        at_batch = measured[cfg["batch"]]
        best = measured.get(found.batch) if found.batch else None
        rows.append(
            {
                "model": cfg["model"],
                "prompt_len": cfg["prompt_len"],
                "quant": name,
                "attention": attention,
                "kernel": at_batch.get("kernel"),
                "kv_bytes_per_token": at_batch.get("kv_bytes_per_token", q["kv_bytes_per_token_b1"]),
                "effective_bits": at_batch.get("effective_bits", q["effective_bits_b1"]),
                "peak_gib_at_batch": None if at_batch.get("oom") else at_batch["peak_bytes"] / GiB,
                "tokens_per_second_at_batch": at_batch.get("tokens_per_second"),
                "tokens_per_cpu_second_at_batch": at_batch.get("tokens_per_cpu_second"),
                "largest_batch": found.batch,
                "largest_batch_capped": found.capped,
                "largest_batch_fails_at": found.above,
                "search_note": found.reason,
                "peak_gib_at_largest": best["peak_bytes"] / GiB if best else None,
                "tokens_per_second_at_largest": best["tokens_per_second"] if best else None,
                "tokens_per_cpu_second_at_largest": best["tokens_per_cpu_second"] if best else None,
                # peers that re-quantize the whole cache every residual_length steps: that cost spread over the steps
                "tokens_per_second_amortized_at_batch": at_batch.get("tokens_per_second_amortized"),
                "tokens_per_second_amortized_at_largest": best.get("tokens_per_second_amortized")
                if best
                else None,
                "prefill_seconds": prep["prefill_seconds"],
                "quant_seconds": q["quant_seconds"],
                "quant_share_of_prefill": q["quant_seconds"] / prep["prefill_seconds"],
                "quant_share_of_prefill_cpu": (
                    q["quant_cpu_seconds"] / prep["prefill_cpu_seconds"] if "quant_cpu_seconds" in q else None
                ),
                "points": len(found.points),
            }
        )
    _ratios(rows)
    wall = time.time() - t_start
    records = []
    for r in rows:
        config = {
            "bench": {k: v for k, v in cfg.items() if k not in ("records", "out_dir", "work_dir")},
            "quant_cfg": quants[r["quant"].split("@")[0]],
            "attention": r["attention"],
            "model_cfg": model_cfg,
        }
        rec = {
            "model": cfg["model"],
            "task": f"efficiency/{cfg['prompt_len']}",
            "quant": r["quant"],
            "metrics": {k: v for k, v in r.items() if k not in ("model", "quant")},
            "kv_effective_bits": r["effective_bits"],
            "kv_bytes": r["kv_bytes_per_token"] * cfg["prompt_len"],
            "peak_memory_bytes": (r["peak_gib_at_batch"] or 0) * GiB,
            "tokens_per_second": r["tokens_per_second_at_largest"],
            "wall_seconds": wall,
            "config": config,
            "config_hash": config_hash(config),
            "git_rev": git_rev(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": device_name(cfg["device"]),
        }
        append_record(ROOT / cfg["records"], rec)
        records.append(rec)
        _append_csv(out_dir / "summary.csv", {**r, "device": cfg["device"]})
    table = render_table(rows, cfg)
    write_atomic(out_dir / f"table_{tag}.md", table)
    plot_memory(points_csv, cfg, out_dir / f"memory_vs_batch_{tag}.png", budget)
    print(table)
    log(f"done in {wall / 60:.1f} min")
    return records


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if not isinstance(v, dict | list)}


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append a row; the header grows to the union of keys (the file is rewritten when a new key appears)."""
    old: list[dict[str, Any]] = []
    keys: list[str] = []
    if path.exists():
        with path.open() as f:
            rd = csv.DictReader(f)
            keys = list(rd.fieldnames or [])
            old = list(rd)
    for k in row:
        if k not in keys:
            keys.append(k)
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([*old, row])


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's numbers divided by the fp16 row's of the same run (KV bytes: fp16 / quant, a compression)."""
    ref = next((r for r in rows if r["quant"] == "fp16"), None)
    for r in rows:

        def div(a, b):
            return a / b if (a is not None and b) else None

        if ref is None:
            continue
        r["kv_compression_vs_fp16"] = div(ref["kv_bytes_per_token"], r["kv_bytes_per_token"])
        r["largest_batch_vs_fp16"] = div(r["largest_batch"], ref["largest_batch"])
        r["tokens_per_second_at_largest_vs_fp16"] = div(
            r["tokens_per_second_at_largest"], ref["tokens_per_second_at_largest"]
        )
        r["tokens_per_second_at_batch_vs_fp16"] = div(
            r["tokens_per_second_at_batch"], ref["tokens_per_second_at_batch"]
        )
        r["cpu_tokens_per_second_at_batch_vs_fp16"] = div(
            r["tokens_per_cpu_second_at_batch"], ref["tokens_per_cpu_second_at_batch"]
        )
        r["peak_at_batch_vs_fp16"] = div(r["peak_gib_at_batch"], ref["peak_gib_at_batch"])


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def render_table(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> str:
    """Paper Table IV style, plus KV bytes and peak memory at the fixed batch."""
    b = cfg["batch"]
    head = (
        f"### {cfg['model']}, prompt {cfg['prompt_len']}, {cfg['device']}, budget {cfg['budget_gib']} GiB\n\n"
        f"| quant | KV B/token (x fp16) | eff. bits | peak GiB @b{b} | tok/s @b{b} (x fp16) | largest batch (x fp16) "
        f"| tok/s @largest (x fp16) | quant share of prefill |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        cap = "+" if r["largest_batch_capped"] else ""
        lines.append(
            f"| {r['quant']} | {_f(r['kv_bytes_per_token'], '{:.0f}')} ({_f(r.get('kv_compression_vs_fp16'), '1/{:.2f}')}) "
            f"| {_f(r['effective_bits'])} | {_f(r['peak_gib_at_batch'])} "
            f"| {_f(r['tokens_per_second_at_batch'])} ({_f(r.get('tokens_per_second_at_batch_vs_fp16'))}x) "
            f"| {r['largest_batch']}{cap} ({_f(r.get('largest_batch_vs_fp16'))}x) "
            f"| {_f(r['tokens_per_second_at_largest'])} ({_f(r.get('tokens_per_second_at_largest_vs_fp16'))}x) "
            f"| {_f(100 * r['quant_share_of_prefill'], '{:.1f}%')} |"
        )
    return head + "\n".join(lines) + "\n"


def plot_memory(points_csv: Path, cfg: dict[str, Any], out: Path, budget: int) -> None:
    """Peak memory vs batch per quant (paper Fig. 9), from every point measured for this model/prompt/device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with points_csv.open() as f:
        pts = [
            r
            for r in csv.DictReader(f)
            if r["model"] == cfg["model"]
            and r["prompt_len"] == str(cfg["prompt_len"])
            and r["device"] == cfg["device"]
            and r.get("oom") in ("False", "false", "0")
        ]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for q in cfg["quants"]:
        xs = sorted((int(r["batch"]), float(r["peak_bytes"]) / GiB) for r in pts if r["quant"] == q)
        if xs:
            ax.plot([x for x, _ in xs], [y for _, y in xs], "o-", label=q)
    ax.axhline(budget / GiB, color="grey", ls="--", lw=1, label="budget")
    ax.set_xlabel("batch")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(f"{cfg['model']}, prompt {cfg['prompt_len']} ({cfg['device']})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    plt.close(fig)


def report(cfg: dict[str, Any]) -> str:
    """`report=true`: one markdown table from summary.csv (latest row per model, prompt, device, quant), with
    wall and CPU-time throughput ratios to the fp16 row of the same run, into `out_dir/summary.md`."""
    out_dir = ROOT / cfg["out_dir"]
    with (out_dir / "summary.csv").open() as f:
        latest = {
            (r["model"], r["prompt_len"], r.get("device", "cpu"), r["quant"]): r for r in csv.DictReader(f)
        }

    def num(r: dict[str, Any], k: str) -> float | None:
        v = r.get(k)
        return float(v) if v not in (None, "", "None") else None

    lines = [
        "| model | prompt | quant | KV B/token | x fp16 | peak GiB @8 | tok/s @8 wall (x) | tok/CPU-s @8 (x) "
        "| largest batch (x) | tok/s @largest wall (x) | tok/CPU-s @largest (x) | quant/prefill CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, plen, dev, quant), r in sorted(
        latest.items(), key=lambda kv: (kv[0][0], int(kv[0][1]), kv[0][2])
    ):
        ref = latest.get((model, plen, dev, "fp16"))
        if ref is None:
            continue
        lb, lb0 = num(r, "largest_batch"), num(ref, "largest_batch")
        cap = "+" if r.get("largest_batch_capped") == "True" else ""
        tl, tl0 = num(r, "tokens_per_second_at_largest"), num(ref, "tokens_per_second_at_largest")
        c8, c80 = num(r, "tokens_per_cpu_second_at_batch"), num(ref, "tokens_per_cpu_second_at_batch")
        cl, cl0 = num(r, "tokens_per_cpu_second_at_largest"), num(ref, "tokens_per_cpu_second_at_largest")
        t8, t80 = num(r, "tokens_per_second_at_batch"), num(ref, "tokens_per_second_at_batch")
        kv, kv0 = num(r, "kv_bytes_per_token"), num(ref, "kv_bytes_per_token")
        share = num(r, "quant_share_of_prefill_cpu")
        share = share if share is not None else num(r, "quant_share_of_prefill")

        def x(a, b):
            return f"{a / b:.2f}x" if a and b else "n/a"

        lines.append(
            f"| {model} | {plen} | {quant} | {_f(kv, '{:.0f}')} | 1/{_f(kv0 / kv if kv else None)} "
            f"| {_f(num(r, 'peak_gib_at_batch'))} | {_f(t8)} ({x(t8, t80)}) | {_f(c8)} ({x(c8, c80)}) "
            f"| {_f(lb, '{:.0f}')}{cap} ({x(lb, lb0)}) | {_f(tl)} ({x(tl, tl0)}) | {_f(cl)} ({x(cl, cl0)}) "
            f"| {_f(100 * share if share is not None else None, '{:.1f}%')} |"
        )
    text = "\n".join(lines) + "\n"
    write_atomic(out_dir / "summary.md", text)
    return text


if __name__ == "__main__":
    _cfg = load_cfg([a for a in sys.argv[1:] if not a.startswith("report=")])
    if any(a in ("report=true", "report=True") for a in sys.argv[1:]):
        print(report(_cfg))
    else:
        run(_cfg)
