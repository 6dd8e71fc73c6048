"""Decode steps on a saved 8K cache, for a sampling profiler (issue #14): what bounds the fused call.

    python scripts/bench_decode.py prompt_len=8192 runs=akvq:79,fp16:14 rounds=1   # saves the caches once
    python scripts/profile_decode.py akvq 79 --threads 1 --ready /tmp/go &
    while [ ! -f /tmp/go ]; do sleep 0.5; done; perf record -e cpu-clock -F 999 -p $! -o /tmp/perf.data

    python scripts/profile_decode.py akvq 79 --cprofile /tmp/steps.prof   # Python's view of the same steps

The warm-up steps run before `--ready` is written, so the profile holds only the timed steps (a VM without hardware
counters still has the software clock). Prints seconds per step."""

from __future__ import annotations

import argparse
import cProfile
import gc
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_decode import DEFAULTS  # noqa: E402  (the saved caches' directory: bench_decode writes them)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("quant")
    ap.add_argument("batch", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--steps", type=int, default=16, help="timed steps (a multiple of flush_every, so each flush counts)"
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=9,
        help="untimed steps first: past the first flush, which grows every table",
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-len", type=int, default=8192)
    ap.add_argument("--ready", type=Path, help="file written when the timed steps start")
    ap.add_argument("--gc-off", action="store_true", help="gc.freeze() and gc.disable() after the warm-up")
    ap.add_argument("--cprofile", type=Path, help="cProfile the timed steps only (pstats file)")
    args = ap.parse_args()

    from akvq import api
    from akvq.attention import register
    from akvq.bench.memory import load_cache, repeat_cache
    from akvq.bench.throughput import load, make_policy, steps_error
    from akvq.errors import ConfigError
    from akvq.policies.loader import quant_config

    try:
        why = steps_error(args.steps, {args.quant: quant_config(args.quant)})
    except ConfigError as e:
        ap.error(str(e))
    if why:
        ap.error(f"--{why}")

    path = ROOT / DEFAULTS["work_dir"] / f"{args.model}-{args.prompt_len}" / f"{args.quant}.pt"
    if not path.exists():
        sys.exit(f"no saved cache {path}: run scripts/bench_decode.py with this quant and prompt_len once")
    torch.set_num_threads(args.threads)
    model = load(yaml.safe_load((ROOT / "configs/model" / f"{args.model}.yaml").read_text()), "cpu").model
    register.register_attention()
    policy = api.resolve_policy(model, make_policy(quant_config(args.quant), "float16"))
    cache, extra = load_cache(policy, str(path))
    repeat_cache(cache, args.batch)
    ids = torch.full((args.batch, 1), extra["next_id"])
    register.use_packed(model, cache, "auto")

    def step(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = model(input_ids=ids, **{api.cache_kwarg(): cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1:].argmax(-1)

    for _ in range(args.warmup):
        ids = step(ids)
    if args.gc_off:
        gc.freeze()
        gc.disable()
    if args.ready:
        args.ready.write_text("go")
    prof = cProfile.Profile() if args.cprofile else None
    t = time.perf_counter()
    if prof is not None:
        prof.enable()
    for _ in range(args.steps):
        ids = step(ids)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.cprofile)
    print(f"{args.quant} batch {args.batch}: {(time.perf_counter() - t) / args.steps:.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
