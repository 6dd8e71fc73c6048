"""A/B of the fused call (issue #14, fifteenth pass): the avx512 build against the amx build of the same source
(and the amx build with -DAKVQ_AMXKEYS=0 etc. as given), SmolLM2 shapes, 8K, bench_kernel's stores, interleaved,
the L3 evicted before each call; prints medians, ratios and max |diff| of the outputs against the avx512 build's
(the same integer sums: 0 expected).

    git apply results/efficiency/logs/kernel17-scratch/amx_keys.patch   # the amx variant (not shipped: slower)
    python results/efficiency/logs/kernel17-scratch/ab.py rounds=5 batches=79,8 threads=1 variants=amx,amx:-DAKVQ_AMXKEYS=0
    git checkout akvq/

Any build with -D switches of the shipped source works as well (variants=avx512:-DAKVQ_PF=0, ...).
"""

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import torch  # noqa: E402
from bench_kernel import D, G, H, store  # noqa: E402

from akvq.attention import packed_cpu  # noqa: E402
from akvq.policies.base import TensorPlan  # noqa: E402

args = dict(a.split("=", 1) for a in sys.argv[1:])
rounds = int(args.get("rounds", 7))
batches = [int(x) for x in args.get("batches", "79,8").split(",")]
threads = [int(x) for x in args.get("threads", "1").split(",")]
libs = {"avx512": packed_cpu.load_build("avx512")[0]}
for spec in args.get("variants", "amx").split(","):
    variant, *sw = spec.split(":")
    lib, why = packed_cpu.load_build(variant, tuple(sw))
    assert lib is not None, why
    libs[spec] = lib
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
data = {}
for b in batches:
    data[b] = (store(plan, b, 8192, 0), store(plan, b, 8192, 1), torch.randn(b, H * G, 1, D))
evict = torch.empty(512 << 20, dtype=torch.uint8)
ts, outs = {}, {}
names = list(libs)
for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    for b in batches:
        k, v, q = data[b]
        for nt in threads:
            for name in order:
                torch.set_num_threads(1)
                evict.fill_(r)
                t = time.perf_counter()
                o = packed_cpu.fused_decode(q, k, v, None, 0.125, threads=nt, lib=libs[name])
                ts.setdefault((b, nt, name), []).append(time.perf_counter() - t)
                outs[(b, nt, name)] = o
print(f"median of {rounds}, L3 evicted; ms a call (one layer, 8K)")
print(
    "| batch | threads | "
    + " | ".join(names)
    + " | "
    + " | ".join(f"{n} / avx512 | max diff" for n in names[1:])
    + " |"
)
for b in batches:
    for nt in threads:
        med = {n: statistics.median(ts[(b, nt, n)]) for n in names}
        cells = [f"{1e3 * med[n]:.2f}" for n in names]
        for n in names[1:]:
            d = (outs[(b, nt, n)] - outs[(b, nt, "avx512")]).abs().max().item()
            cells += [f"{med[n] / med['avx512']:.3f}", f"{d:.1e}"]
        print(f"| {b} | {nt} | " + " | ".join(cells) + " |")
