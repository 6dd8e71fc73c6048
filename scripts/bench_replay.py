"""Per-token time of teacher-forced decoding: the step loop (one forward per token) against the replayed
forward (`akvq.attention.replay`), in one process, interleaved, best of two each; with each NLL, which must agree.

    python scripts/bench_replay.py --prompt 1024 --scored 33 --quants fp16,akvq_plus
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's akvq, also where it is not installed (the device machine)

from akvq.models import load_model  # noqa: E402
from akvq.paths import CONFIG_DIR  # noqa: E402
from akvq.policies import make_policy  # noqa: E402
from akvq.tasks.fidelity import _decode, cache_from_prefill, prefill  # noqa: E402
from akvq.tasks.text import corpus_ids, windows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--scored", type=int, default=33)
    ap.add_argument("--quants", default="fp16,akvq_plus")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import yaml

    loaded = load_model(yaml.safe_load((CONFIG_DIR / "model" / f"{args.model}.yaml").read_text()))
    model, tok = loaded.model, loaded.tokenizer
    ids = torch.tensor([windows(corpus_ids(tok), args.prompt + args.scored, 1)[0]])
    prompt, cont = ids[:, : args.prompt], ids[:, args.prompt :]
    print("| quant | step loop, ms / token | replayed, ms / token | ratio | NLL step loop / replayed |")
    print("|---|---|---|---|---|")
    for q in args.quants.split(","):
        policy = make_policy(q)
        pre = prefill(model, prompt, [policy])
        res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for replay in (False, True, False, True):
            cache = cache_from_prefill(model, policy, prompt, pre)
            t = time.perf_counter()
            logits = _decode(model, cache, cont[:, :-1], 1, replay)
            dt = time.perf_counter() - t
            res[replay].append((dt, torch.nn.functional.cross_entropy(logits, cont[0, 1:]).item()))
        n = cont.shape[-1] - 1
        step, once = min(r[0] for r in res[False]), min(r[0] for r in res[True])
        print(
            f"| {q} | {1000 * step / n:.1f} | {1000 * once / n:.1f} | {step / once:.1f}x | "
            f"{res[False][0][1]:.6f} / {res[True][0][1]:.6f} |"
        )


if __name__ == "__main__":
    main()
