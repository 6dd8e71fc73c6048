"""The integer path of the C kernel (int8 query in q . k, u8 weights p s in the values) against its float path
(fp32 query and weights) on a real model (issue #14): teacher-forced perplexity of the same windows through both
paths (paired; decoded step by step, so every continuation token goes through the path), and greedy continuations
of three corpus prompts of prompt_len tokens.

    python scripts/check_int8_numerics.py model=smollm2-135m quant=akvq prompt_len=512 cont_len=32 windows=4

Both paths decode through "akvq_packed" on CPU (the C kernel), one token at a time, over the same prefill; only
the precision of the query in q . k and of the value weights differs. Prints per-window NLLs, the paired difference
with a bootstrap interval, and whether the greedy tokens agree; appends one record to `records`."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULTS = {
    "model": "smollm2-135m",
    "quant": "akvq",
    "prompt_len": "512",
    "cont_len": "32",
    "windows": "4",
    "gen_tokens": "24",
    "records": "results/efficiency/int8_numerics.jsonl",
}


def main(args: dict[str, str]) -> None:
    from akvq import api
    from akvq.attention import register
    from akvq.bench.throughput import load, make_policy
    from akvq.policies.loader import quant_config
    from akvq.tasks.fidelity import _decode, cache_from_prefill, prefill
    from akvq.tasks.text import corpus_ids, windows

    cfg = {**DEFAULTS, **args}
    torch.set_num_threads(1)
    loaded = load(yaml.safe_load((ROOT / "configs" / "model" / f"{cfg['model']}.yaml").read_text()), "cpu")
    model, tok = loaded.model, loaded.tokenizer
    policy = api.resolve_policy(model, make_policy(quant_config(cfg["quant"]), "float16"))
    p_len, c_len = int(cfg["prompt_len"]), int(cfg["cont_len"])
    nll: dict[bool, list[float]] = {True: [], False: []}
    t0 = time.time()
    try:
        for ids in windows(corpus_ids(tok), p_len + c_len, int(cfg["windows"])):
            ids = torch.tensor([ids])
            prompt, cont = ids[:, :p_len], ids[:, p_len:]
            pre = prefill(model, prompt, [policy])
            for int8 in (True, False):
                cache = cache_from_prefill(model, policy, prompt, pre, read_path="dequantize")
                register.use_packed(model, cache, "packed_c" if int8 else "packed_c_fp32")
                # the step loop (replay=False): replay computes the steps in one forward, outside the decode paths
                logits = torch.cat([pre.last_logits, _decode(model, cache, cont[:, :-1], replay=False)])
                register.use_packed(model, None, "sdpa")
                nll[int8].append(torch.nn.functional.cross_entropy(logits, cont[0]).item())
            print(f"window: nll int8 {nll[True][-1]:.5f} float {nll[False][-1]:.5f}", flush=True)
        gens: dict[bool, list[list[int]]] = {True: [], False: []}
        for ids in windows(corpus_ids(tok), p_len, 3):  # prompts longer than the window: the int8 path runs
            enc = {
                "input_ids": torch.tensor([ids]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            }
            for int8 in (True, False):
                cache = api.build_cache(model, policy, enc)
                register.use_packed(model, cache, "packed_c" if int8 else "packed_c_fp32")
                with api.pivot_detection(model, cache), torch.inference_mode():
                    out = model.generate(
                        **enc,
                        **{api.cache_kwarg(): cache},
                        max_new_tokens=int(cfg["gen_tokens"]),
                        do_sample=False,
                    )
                register.use_packed(model, None, "sdpa")
                gens[int8].append(out[0, enc["input_ids"].shape[1] :].tolist())
    finally:
        register.use_packed(model, None, "sdpa")
    diff = [a - b for a, b in zip(nll[True], nll[False])]
    rng = random.Random(0)
    boot = sorted(sum(rng.choices(diff, k=len(diff))) / len(diff) for _ in range(1000))
    ppl8, ppl32 = (math.exp(sum(nll[x]) / len(nll[x])) for x in (True, False))
    same = [a == b for a, b in zip(gens[True], gens[False])]
    print(
        f"ppl int8 {ppl8:.4f}, float {ppl32:.4f}; paired mean NLL difference {sum(diff) / len(diff):+.2e} "
        f"(95% bootstrap {boot[24]:+.2e} .. {boot[974]:+.2e}); greedy tokens equal on {sum(same)}/{len(same)} prompts"
    )
    rec = {
        "bench": "int8_numerics",
        "config": cfg,
        "nll_int8": nll[True],
        "nll_float": nll[False],
        "ppl_int8": ppl8,
        "ppl_float": ppl32,
        "nll_diff_ci95": [boot[24], boot[974]],
        "greedy_equal": same,
        "greedy_int8": gens[True],
        "greedy_float": gens[False],
        "wall_seconds": time.time() - t0,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with (ROOT / cfg["records"]).open("a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    from akvq.bench.cli import config_name, count, key_values

    checks = {"model": config_name("model"), "quant": config_name("quant")}
    checks |= {k: count() for k in ("prompt_len", "cont_len", "windows", "gen_tokens")}
    main(key_values(sys.argv[1:], DEFAULTS, __doc__, "check_int8_numerics", checks))
