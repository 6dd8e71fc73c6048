"""llama.cpp on the same SmolLM2 GGUF as an outside anchor: perplexity and decode speed with its KV cache in
f16, q8_0 or q4_0 (needs the extra: pip install 'akvq[llamacpp]', which builds llama.cpp from source).

    python scripts/llamacpp_peer.py ppl   [--kv f16 q8_0 q4_0] [--prompt-len 4096 --cont-len 256 --windows 8]
    python scripts/llamacpp_peer.py bench [--kv f16 q4_0] [--prompt-len 8192 --budget-gib 4 --threads 1]

`ppl`: exactly the windows, token ids and scored positions of our `task=ppl` (`akvq.tasks.text.windows` over
`corpus_ids` with the GGUF's own tokenizer): the prompt in one llama_decode, then the continuation one token per
llama_decode (token by token, as llama.cpp decodes); the logits of the prompt's last token and of each fed
token score the 256 continuation tokens. One record per KV type goes to results/runs.jsonl in the runner's
schema (quant `llamacpp_<type>`), so the fidelity table picks it up next to ours.

`bench`: decode tokens/s at a long prompt, at batch 1 and at the largest batch (parallel sequences, one KV
stream each: `n_seq_max`, `kv_unified=false`) whose peak RSS fits the budget, flash attention on, the same
threads as our benchmark. The prompt is prefilled once, saved with llama_state_seq_save_file, and each point (a
fresh process) loads it into sequence 0 and copies it to the others (a real copy across streams).

Effective bits are those of ggml's block formats (ggml/src/ggml-common.h): q8_0 = 32 int8 + one fp16 scale =
34 bytes / 32 values = 8.5 bits; q4_0 = 32 4-bit + one fp16 scale = 18 bytes / 32 values = 4.5 bits; f16 = 16.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BITS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}  # ggml block formats, see the module docstring
RESULT = "RESULT "


def need_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        sys.exit(
            "llama.cpp peer needs llama-cpp-python: pip install 'akvq[llamacpp]' (builds llama.cpp from source)"
        )
    return llama_cpp


def gguf_path() -> str:
    from akvq.models.smollm2 import smollm2_location

    d, f = smollm2_location()
    return os.path.join(d, f)


class Engine:
    """One llama.cpp model + context with a given KV type; the few low-level calls the peer needs."""

    def __init__(self, kv: str, n_ctx: int, n_seq: int = 1, threads: int = 1, n_batch: int = 512):
        lc = need_llama_cpp()
        self.lc = lc
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(gguf_path().encode(), mp)
        cp = lc.llama_context_default_params()
        n_batch = max(n_batch, n_seq)  # one decode step of every sequence is one llama_decode
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED  # quantized V needs it; on for all, alike
        cp.type_k = cp.type_v = getattr(lc, f"GGML_TYPE_{kv.upper()}")
        cp.kv_unified = n_seq == 1
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise MemoryError(f"llama.cpp could not create a context (kv={kv}, n_ctx={n_ctx}, n_seq={n_seq})")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.n_batch = n_batch

    def decode(self, tokens: list[int], pos: list[int], seqs: list[int], want: list[bool]) -> None:
        lc = self.lc
        for s in range(0, len(tokens), self.n_batch):
            n = min(self.n_batch, len(tokens) - s)
            b = lc.llama_batch_init(n, 0, 1)
            try:
                for i in range(n):
                    b.token[i], b.pos[i], b.n_seq_id[i] = tokens[s + i], pos[s + i], 1
                    b.seq_id[i][0], b.logits[i] = seqs[s + i], int(want[s + i])
                b.n_tokens = n
                rc = lc.llama_decode(self.ctx, b)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
            finally:
                lc.llama_batch_free(b)

    def logits(self, i: int) -> Any:
        import numpy as np

        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    def close(self) -> None:
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


def nll_at(logits: Any, target: int) -> float:
    """-log softmax(logits)[target], in float64."""
    import numpy as np

    m = logits.max()
    return float(m + np.log(np.exp(logits - m).sum()) - logits[target])


def task_cfg(args: argparse.Namespace) -> dict[str, Any]:
    """The ppl task config as our runner records it (configs/task/ppl.yaml with this run's sizes)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "task" / "ppl.yaml").read_text())
    cfg.update(prompt_len=args.prompt_len, cont_len=args.cont_len, windows=args.windows, chunk=1)
    return cfg


def ppl(args: argparse.Namespace) -> None:
    import yaml

    from akvq import records
    from akvq.models.smollm2 import smollm2_tokenizer
    from akvq.records import git_rev
    from akvq.tasks.fidelity import bootstrap_ppl
    from akvq.tasks.text import corpus_ids, windows

    need_llama_cpp()
    tcfg = task_cfg(args)
    p_len, c_len = args.prompt_len, args.cont_len
    wins = windows(corpus_ids(smollm2_tokenizer()), p_len + c_len, args.windows)
    model_cfg = yaml.safe_load((ROOT / "configs" / "model" / "smollm2-135m.yaml").read_text())
    for kv in args.kv:
        t0 = time.perf_counter()
        eng = Engine(kv, n_ctx=p_len + c_len, threads=args.threads)
        window_nll, details = [], []
        for w, ids in enumerate(wins):
            eng.lc.llama_memory_clear(eng.lc.llama_get_memory(eng.ctx), True)
            prompt, cont = ids[:p_len], ids[p_len:]
            eng.decode(prompt, list(range(p_len)), [0] * p_len, [i == p_len - 1 for i in range(p_len)])
            nll = [nll_at(eng.logits(-1), cont[0])]
            for i, tok in enumerate(cont[:-1]):  # token by token: each step's logits score the next token
                eng.decode([tok], [p_len + i], [0], [True])
                nll.append(nll_at(eng.logits(-1), cont[i + 1]))
            window_nll.append(sum(nll) / len(nll))
            details.append(
                {
                    "window": w,
                    "nll": window_nll[-1],
                    "ppl": math.exp(window_nll[-1]),
                    "effective_bits": BITS[kv],
                }
            )
            print(f"{kv} window {w}: ppl {math.exp(window_nll[-1]):.3f}", flush=True)
        eng.close()
        wall = time.perf_counter() - t0
        lo, hi = bootstrap_ppl(window_nll, int(tcfg["bootstrap"]), int(tcfg["seed"]))
        mean = sum(window_nll) / len(window_nll)
        qcfg = {"policy": "llamacpp", "type_k": kv, "type_v": kv, "flash_attn": True, "threads": args.threads}
        label = f"llamacpp_{kv}"
        config = {
            "model": model_cfg,
            "task": tcfg,
            "quant": qcfg,
            "names": {"model": "smollm2-135m", "task": "ppl", "quant": label},
        }
        layers, kv_dim = 30, 3 * 64  # SmolLM2-135M: 30 layers, 3 KV heads of 64
        tokens = p_len + c_len - 1  # what the cache holds after the last step
        rec = {
            "model": "smollm2-135m",
            "task": "ppl",
            "quant": label,
            "metrics": {"ppl": math.exp(mean), "ppl_lo": lo, "ppl_hi": hi, "nll": mean},
            "kv_effective_bits": BITS[kv],
            "kv_bytes": int(tokens * layers * 2 * kv_dim * BITS[kv] / 8),
            "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "tokens_per_second": args.windows * c_len / wall,
            "wall_seconds": wall,
            "config": config,
            "config_hash": records.config_hash(config),
            "git_rev": git_rev(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": f"cpu (llama.cpp {eng.lc.__version__}, {args.threads} threads)",
            "num_tokens": args.windows * c_len,
            "primary_metric": "ppl",
            "details": details,
        }
        records.append_record(ROOT / args.records, rec)
        print(
            f"{label}: ppl {math.exp(mean):.3f} [{lo:.3f}, {hi:.3f}] at {BITS[kv]} bits ({wall:.0f} s)",
            flush=True,
        )


def point(spec: dict[str, Any]) -> dict[str, Any]:
    """One (kv, batch) measurement in this fresh process: load the saved prompt state into sequence 0, copy
    it to the other sequences, decode `steps` + 1 tokens per sequence, time all but the first."""
    import numpy as np

    batch, n_prompt = spec["batch"], spec["prompt_len"]
    if spec.get("data_limit"):  # an over-budget point fails to allocate instead of swapping a shared machine
        resource.setrlimit(resource.RLIMIT_DATA, (spec["data_limit"], spec["data_limit"]))
    per_seq = n_prompt + spec["steps"] + 8
    try:
        eng = Engine(spec["kv"], n_ctx=per_seq * batch, n_seq=batch, threads=spec["threads"])
    except MemoryError as e:
        return {"oom": True, "batch": batch, "error": str(e), "peak_bytes": None}
    lc = eng.lc
    toks = (lc.llama_token * n_prompt)()
    got = ctypes.c_size_t(0)
    if lc.llama_state_seq_load_file(eng.ctx, spec["state"].encode(), 0, toks, n_prompt, got) == 0:
        if batch == 1:
            raise RuntimeError(f"could not load the prompt state {spec['state']}")
        # llama.cpp refuses a one-stream sequence state in a context with one stream per sequence ("n_stream
        # mismatch"): prefill sequence 0 here instead (untimed; only the decode steps below are timed)
        ids = prompt_ids(n_prompt)
        pre = int(spec.get("prefill_threads") or spec["threads"])
        lc.llama_set_n_threads(eng.ctx, pre, pre)
        eng.decode(ids, list(range(n_prompt)), [0] * n_prompt, [False] * n_prompt)
        # timed steps decode `batch` tokens in one llama_decode, which llama.cpp runs on n_threads_batch
        lc.llama_set_n_threads(eng.ctx, spec["threads"], spec["threads"])
    mem = lc.llama_get_memory(eng.ctx)
    for s in range(1, batch):
        lc.llama_memory_seq_cp(mem, 0, s, -1, -1)
    nxt = [spec["next_id"]] * batch
    walls = []
    for step in range(spec["steps"] + 1):
        t = time.perf_counter()
        eng.decode(nxt, [n_prompt + step] * batch, list(range(batch)), [True] * batch)
        nxt = [int(np.argmax(eng.logits(i))) for i in range(batch)]
        walls.append(time.perf_counter() - t)
    walls = walls[1:]  # the first step warms up
    wall = sum(walls) / len(walls)
    out = {
        "oom": False,
        "batch": batch,
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds_per_step": wall,
        "tokens_per_second": batch / wall,
        "steps": len(walls),
    }
    eng.close()
    return out


def prompt_ids(n_prompt: int) -> list[int]:
    """The benchmark prompt of our decode benchmark (`akvq.bench.throughput.build_prompt`), as token ids."""
    from akvq.bench.throughput import build_prompt
    from akvq.models.smollm2 import smollm2_tokenizer

    class _Loaded:  # build_prompt needs only the tokenizer of a text model
        processor = None
        tokenizer = smollm2_tokenizer()

    return [int(x) for x in build_prompt(_Loaded(), n_prompt)["input_ids"][0]]


def prepare_state(kv: str, n_prompt: int, threads: int, path: Path) -> int:
    """Prefill the benchmark prompt once (batch 1) with this KV type and save it; returns the next token."""
    import numpy as np

    ids = prompt_ids(n_prompt)
    eng = Engine(kv, n_ctx=n_prompt + 16, threads=threads)
    eng.decode(ids, list(range(len(ids))), [0] * len(ids), [i == len(ids) - 1 for i in range(len(ids))])
    nxt = int(np.argmax(eng.logits(-1)))
    arr = (eng.lc.llama_token * len(ids))(*ids)
    if eng.lc.llama_state_seq_save_file(eng.ctx, str(path).encode(), 0, arr, len(ids)) == 0:
        raise RuntimeError(f"could not save the prompt state to {path}")
    eng.close()
    return nxt


def bench(args: argparse.Namespace) -> None:
    from akvq.bench.batch_search import Point, largest_batch
    from akvq.bench.memory import GiB

    need_llama_cpp()
    work = ROOT / "results" / "_scratch" / "llamacpp"
    work.mkdir(parents=True, exist_ok=True)
    budget = int(args.budget_gib * GiB)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for kv in args.kv:
        state = work / f"prompt-{args.prompt_len}-{kv}.bin"
        t0 = time.perf_counter()
        next_id = prepare_state(kv, args.prompt_len, args.prefill_threads, state)
        print(f"{kv}: prefill {args.prompt_len} tokens in {time.perf_counter() - t0:.1f} s", flush=True)
        spec = {
            "kv": kv,
            "prompt_len": args.prompt_len,
            "steps": args.steps,
            "threads": args.threads,
            "prefill_threads": args.prefill_threads,
            "state": str(state),
            "next_id": next_id,
            "data_limit": int(budget * 1.5),
        }
        measured: dict[int, dict[str, Any]] = {}

        def measure(b: int, spec=spec, measured=measured, kv=kv) -> Point:
            r = run_point({**spec, "batch": b}, args.timeout)
            measured[b] = r
            print(
                f"  {kv} batch {b}: "
                + (
                    "OOM"
                    if r.get("oom")
                    else f"peak {r['peak_bytes'] / GiB:.2f} GiB, {r['tokens_per_second']:.2f} tok/s"
                ),
                flush=True,
            )
            return Point(b, None if r.get("oom") else r["peak_bytes"], r)

        first = measure(1)
        per_seq = args.prompt_len * 30 * 2 * 192 * BITS[kv] / 8
        found = largest_batch(measure, budget, first, per_seq, args.max_batch, args.max_points)
        best = measured.get(found.batch) if found.batch else None
        row = {
            "engine": "llama.cpp",
            "kv": kv,
            "prompt_len": args.prompt_len,
            "threads": args.threads,
            "kv_bytes_per_token": 30 * 2 * 192 * BITS[kv] / 8,
            "effective_bits": BITS[kv],
            "tokens_per_second_b1": first.info.get("tokens_per_second"),
            "peak_gib_b1": first.info["peak_bytes"] / GiB if first.peak_bytes else None,
            "largest_batch": found.batch,
            "largest_batch_capped": found.capped,
            "peak_gib_at_largest": best["peak_bytes"] / GiB if best else None,
            "tokens_per_second_at_largest": best["tokens_per_second"] if best else None,
            "points": [p.info for p in found.points],
        }
        # each KV type's record as soon as its search ends (one line, one write): a stopped run keeps the types done
        with out.open("a") as f:
            f.write(
                json.dumps(
                    {
                        **row,
                        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "budget_gib": args.budget_gib,
                        "command": " ".join(sys.argv),
                    }
                )
                + "\n"
            )
        print(json.dumps({k: v for k, v in row.items() if k != "points"}), flush=True)


def run_point(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A fresh process per point, so its peak RSS is that point's."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "point", json.dumps(spec)]
    p = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    for line in p.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    # out of memory: killed, or an allocation failure (not any log line with "alloc" in it: llama.cpp's
    # verbose log says "allocating" on every start, which once turned a failed state load into "OOM")
    failed_alloc = any(
        m in p.stderr for m in ("failed to allocate", "MemoryError", "std::bad_alloc", "Cannot allocate")
    )
    if p.returncode in (-9, -6, 134, 137) or failed_alloc:
        return {"oom": True, "batch": spec["batch"], "peak_bytes": None, "error": p.stderr[-300:]}
    raise RuntimeError(f"llama.cpp point failed (rc {p.returncode}):\n{p.stderr[-1500:]}")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "point":
        print(RESULT + json.dumps(point(json.loads(argv[1]))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ppl", help="perplexity on the windows of task=ppl, one record per KV type")
    a.add_argument("--kv", nargs="+", default=["f16", "q8_0", "q4_0"], choices=sorted(BITS))
    a.add_argument("--prompt-len", type=int, default=4096)
    a.add_argument("--cont-len", type=int, default=256)
    a.add_argument("--windows", type=int, default=8)
    a.add_argument("--threads", type=int, default=2, help="threads (the numbers do not depend on them)")
    a.add_argument("--records", default="results/runs.jsonl")
    b = sub.add_parser("bench", help="decode tokens/s at batch 1 and at the largest batch under the budget")
    b.add_argument("--kv", nargs="+", default=["f16", "q4_0"], choices=sorted(BITS))
    b.add_argument("--prompt-len", type=int, default=8192)
    b.add_argument("--budget-gib", type=float, default=4.0)
    b.add_argument(
        "--steps", type=int, default=2, help="timed decode steps per point, after one warm-up step"
    )
    b.add_argument("--threads", type=int, default=1, help="decode threads (our benchmark's default: 1)")
    b.add_argument("--prefill-threads", type=int, default=2)
    b.add_argument("--max-batch", type=int, default=4096)
    b.add_argument("--max-points", type=int, default=4)
    b.add_argument("--timeout", type=float, default=1800)
    b.add_argument("--out", default="results/efficiency/llamacpp.jsonl")
    args = ap.parse_args(argv)
    if args.cmd == "ppl":
        ppl(args)
    else:
        bench(args)


if __name__ == "__main__":
    main(sys.argv[1:])
