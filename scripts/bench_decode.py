"""Decode throughput of akvq against the fp16 control, interleaved in one process, with a per-step profile and a
memory-bandwidth probe measured in the same run (issue #14).

    python scripts/bench_decode.py model=smollm2-135m prompt_len=8192 runs=akvq:79,fp16:14 threads=1,2 rounds=3

`reuse=true` takes the prefilled caches an earlier run saved under work_dir (same model, prompt_len, quants).
`runs`: QUANT:BATCH[:float|:twopass] entries (":float" keeps the query in fp32 in the C kernel, two kernels;
":twopass" the int8 path's two-kernel form, scores through memory and torch's softmax; default: the fused kernel).
Every entry decodes through "akvq_packed" (the C kernel on CPU; fp16 is the 16-bit control, fp16@akvq_packed of
the efficiency benchmark). One prefill (batch 1) is shared; each entry's cache is that prefill copied along the
batch. Each round runs `steps` consecutive decode steps of every (threads, entry) in turn and a STREAM-like copy, so
the machine's noise hits all of them alike: report the ratios. `steps` must be a multiple of every entry's
`flush_every`, so that each round counts its entries' flushes once per flush_every steps (one step per round would
let the median skip the flush steps of a flush_every > 1 cache). Per step: attention (the registered attention
function: C kernel, softmax, WHT of q/out, 16-bit rows), cache updates (append + quantizing the token leaving the
window), and the rest (weight matmuls, norms, rotary, Python). `dtype=bfloat16` runs the model (weights and
activations, both rows alike) in bf16, with its own saved caches; the default is the model YAML's (float32).
Prints a markdown table; appends one record to `records`."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from akvq.bench.cli import config_name, count, counts, key_values, one_of  # noqa: E402
from akvq.bench.throughput import prepare  # noqa: E402
from akvq.records import git_rev  # noqa: E402

DEFAULTS = {
    "model": "smollm2-135m",
    "prompt_len": "8192",
    "runs": "akvq:79,fp16:14",
    "threads": "1,2",
    "rounds": "3",
    "steps": "8",
    "work_dir": "results/_scratch/decode",
    "records": "results/efficiency/decode_runs.jsonl",
}


class Profile:
    """Seconds spent in the attention function and in cache updates during one step (wrappers, no globals left)."""

    def __init__(self) -> None:
        self.attention = 0.0
        self.update = 0.0

    def wrap_attention(self, fn):  # noqa: ANN001, ANN201
        def timed(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            out = fn(*a, **kw)
            self.attention += time.perf_counter() - t
            return out

        return timed


# entry suffix -> (attention path, label in the table)
FORMS = {
    "": ("auto", ""),
    "float": ("packed_c_fp32", " (float q)"),
    "twopass": ("packed_c_twopass", " (two-pass)"),
}


def parse_runs(text: str) -> list[tuple[str, int, str]]:
    out = []
    quants = config_name("quant")
    for item in text.split(","):
        parts = item.split(":")
        form = parts[2] if len(parts) == 3 else ""
        if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1 or form not in FORMS:
            raise ValueError(
                f"entry {item!r}: expected QUANT:BATCH, QUANT:BATCH:float or QUANT:BATCH:twopass (BATCH >= 1)"
            )
        if why := quants(parts[0]):
            raise ValueError(f"entry {item!r}: quant {parts[0]!r}: {why}")
        out.append((parts[0], int(parts[1]), form))
    return out


def runs_check(text: str) -> str | None:
    try:
        parse_runs(text)
    except ValueError as e:
        return str(e)
    return None


CHECKS = {
    "model": config_name("model"),
    "prompt_len": count(),
    "runs": runs_check,
    "threads": counts(),
    "rounds": count(),
    "steps": count(),  # and a multiple of every entry's flush_every: steps_error, once the quants are read
    "dtype": one_of("float32", "bfloat16"),
    "reuse": one_of("true", "false"),
}


def main(args: dict[str, str]) -> None:
    from transformers import AttentionInterface

    from akvq import api
    from akvq.attention import register
    from akvq.bench.memory import copy_bandwidths, load_cache, repeat_cache
    from akvq.bench.throughput import load, make_policy, steps_error
    from akvq.cache.layer import AKVQLayer
    from akvq.policies.loader import quant_config

    cfg = {**DEFAULTS, **args}
    runs = parse_runs(cfg["runs"])
    threads = [int(x) for x in cfg["threads"].split(",")]
    rounds = int(cfg["rounds"])
    model_cfg = yaml.safe_load((ROOT / "configs" / "model" / f"{cfg['model']}.yaml").read_text())
    if cfg.get("dtype"):  # the model's weights and activations (both rows alike); saved caches are per dtype
        model_cfg["dtype"] = cfg["dtype"]
    quants = {q: quant_config(q) for q in dict.fromkeys(q for q, _, _ in runs)}
    why = steps_error(cfg["steps"], quants)
    if why:
        sys.exit(f"bench_decode: {why}")
    steps = int(cfg["steps"])
    work = ROOT / cfg["work_dir"] / f"{cfg['model']}-{cfg['prompt_len']}"
    if model_cfg["dtype"] != "float32":
        work = work.with_name(f"{work.name}-{model_cfg['dtype']}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    paths = {q: work / f"{q}.pt" for q in quants}
    if cfg.get("reuse") == "true" and all(
        p.exists() for p in paths.values()
    ):  # caches saved by an earlier run
        prep = {"quants": {q: {"cache_path": str(p)} for q, p in paths.items()}}
    else:
        prep = prepare(
            {
                "device": "cpu",
                "model": model_cfg,
                "prompt_len": int(cfg["prompt_len"]),
                "quants": quants,
                "work_dir": str(work),
                "hp_dtype": "float16",
                "threads": 1,
            }
        )
        print(f"prefill {prep['prefill_seconds']:.1f} s, seq {prep['seq_len']}", flush=True)
    model = load(model_cfg, "cpu").model
    register.register_attention()
    prof = Profile()
    AttentionInterface.register(register.PACKED, prof.wrap_attention(register.packed_attention))
    orig_update = AKVQLayer.update

    def update(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        t = time.perf_counter()
        out = orig_update(self, *a, **kw)
        prof.update += time.perf_counter() - t
        return out

    AKVQLayer.update = update
    caches = []
    for q, b, form in runs:
        policy = api.resolve_policy(model, make_policy(quants[q], "float16"))
        cache, extra = load_cache(policy, prep["quants"][q]["cache_path"])
        prep["seq_len"] = extra["seq_len"]
        repeat_cache(cache, b)
        caches.append(
            {
                "quant": q,
                "batch": b,
                "form": form,
                "cache": cache,
                "ids": torch.full((b, 1), extra["next_id"]),
                "kv_bytes": cache.memory_report().total_bytes,
            }
        )
    samples: dict[tuple[int, int], list[dict[str, float]]] = {}
    bw: list[dict[int, float]] = []
    try:
        for r in range(rounds + 1):  # round 0 warms up
            bw.append(copy_bandwidths({1, *threads}))
            for nt in threads:
                torch.set_num_threads(nt)
                for i, e in enumerate(caches):
                    register.use_packed(model, e["cache"], FORMS[e["form"]][0])
                    prof.attention = prof.update = 0.0
                    t, c = time.perf_counter(), time.process_time()
                    for _ in range(steps):
                        with torch.inference_mode():
                            out = model(
                                input_ids=e["ids"],
                                **{api.cache_kwarg(): e["cache"]},
                                use_cache=True,
                                logits_to_keep=1,
                            )
                        e["ids"] = out.logits[:, -1:].argmax(-1)
                    wall, cpu = time.perf_counter() - t, time.process_time() - c
                    if r:  # per step, averaged over the round's steps (flushes included)
                        samples.setdefault((nt, i), []).append(
                            {
                                "wall": wall / steps,
                                "cpu": cpu / steps,
                                "attention": prof.attention / steps,
                                "update": prof.update / steps,
                            }
                        )
    finally:
        AKVQLayer.update = orig_update
        AttentionInterface.register(register.PACKED, register.packed_attention)
    copy = {nt: statistics.median(x[nt] for x in bw[1:]) for nt in bw[0]}
    rows = []
    for nt in threads:
        for i, e in enumerate(caches):
            s = samples[(nt, i)]
            med = {k: statistics.median(x[k] for x in s) for k in s[0]}
            rows.append(
                {
                    "threads": nt,
                    "quant": e["quant"] + FORMS[e["form"]][1],
                    "form": e["form"],
                    "batch": e["batch"],
                    "kv_bytes": e["kv_bytes"],
                    **med,
                    "tokens_per_second": e["batch"] / med["wall"],
                    "attention_bytes_per_second": e["kv_bytes"] / med["attention"],
                    "tokens_per_second_rounds": [e["batch"] / x["wall"] for x in s],
                    "copy_bytes_per_second": copy[nt],
                }
            )
    # ratios to the fp16 control of the same form and threads (its largest batch: the first such entry)
    for r in rows:
        same = [x for x in rows if x["threads"] == r["threads"]]
        ctl = next((x for x in same if x["quant"] == "fp16" + FORMS[r["form"]][1]), None)
        ctl = ctl or next((x for x in same if x["quant"] == "fp16"), None)
        r["x_control"] = r["tokens_per_second"] / ctl["tokens_per_second"] if ctl else None
        # per round: both ran within seconds of each other, so this pairing cancels the VM's slow drifts
        r["x_control_rounds"] = (
            [
                a / c
                for a, c in zip(r["tokens_per_second_rounds"], ctl["tokens_per_second_rounds"], strict=True)
            ]
            if ctl
            else None
        )
    head = (
        "copy probe (STREAM-like, read + write): "
        + ", ".join(f"{copy[nt] / 1e9:.2f} GB/s on {nt} thread(s)" for nt in sorted(copy))
        + "\n\n| threads | cache | batch | KV GB | s/step | tok/s | x fp16 control | attention s | cache update s "
        "| rest s | KV read by attention GB/s (x copy on as many threads) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['threads']} | {r['quant']} | {r['batch']} | {r['kv_bytes'] / 1e9:.2f} | {r['wall']:.2f} | "
        f"{r['tokens_per_second']:.1f} | {r['x_control']:.2f} | {r['attention']:.2f} | {r['update']:.2f} | "
        f"{r['wall'] - r['attention'] - r['update']:.2f} | {r['attention_bytes_per_second'] / 1e9:.2f} "
        f"({r['attention_bytes_per_second'] / r['copy_bytes_per_second']:.2f}) |"
        for r in rows
    ]
    table = head + "\n".join(lines) + "\n"
    rounds_lines = [
        f"- {r['threads']} thread(s), {r['quant']} {r['batch']}: tok/s "
        + " ".join(f"{x:.1f}" for x in r["tokens_per_second_rounds"])
        + (
            "; x control per round " + " ".join(f"{x:.2f}" for x in r["x_control_rounds"])
            if r["x_control_rounds"]
            else ""
        )
        for r in rows
    ]
    print(table + "\nPer round (the ratio is taken within each round):\n" + "\n".join(rounds_lines) + "\n")
    rec = {
        "bench": "decode_interleaved",
        "config": cfg,
        "copy_bytes_per_second": copy[1],
        "copy_bytes_per_second_by_threads": {str(nt): v for nt, v in copy.items()},
        "rows": rows,
        "seq_len": prep["seq_len"],
        "wall_seconds": time.time() - t0,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_rev": git_rev(),
    }
    with (ROOT / cfg["records"]).open("a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main(key_values(sys.argv[1:], (*DEFAULTS, "dtype", "reuse"), __doc__, "bench_decode", CHECKS))
