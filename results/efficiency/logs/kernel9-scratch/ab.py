"""A/B of the fused kernel: the previous source (old=PATH) against the working tree's, and the working tree's with
extra -D flags (variants=NAME:-DX=0+-DY=1,...), interleaved, the L3 evicted before each call (a decode step reads each
layer's K/V from memory). Prints medians, each build's ratio to old, and max |diff| of the outputs against old.
Issue #14, ninth pass; scratch.

    git show 31dcfb6:akvq/attention/csrc/packed_cpu.c > /tmp/old9/packed_cpu.c
    python results/efficiency/logs/kernel9-scratch/ab.py old=/tmp/old9/packed_cpu.c rounds=15 batches=79,8 \\
        threads=1,2 variants=nohoist:-DAKVQ_V8HOIST=0,noqg:-DAKVQ_QGATHER=0
    samecls=0: K's and V's classes drawn apart (bk.store's seeds); default the same, as the cache flushes them
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "scripts")
sys.path.insert(0, ".")
import bench_kernel as bk

from akvq import native
from akvq.attention import packed_cpu
from akvq.cache.store import FULL, LOW, TEXT, TensorStore
from akvq.policies.base import TensorPlan

args = dict(a.split("=", 1) for a in sys.argv[1:])
flags = (*packed_cpu.FLAGS, *packed_cpu.VARIANTS[packed_cpu.best_variant()][1])
builds = [("old", Path(args["old"]), ()), ("new", packed_cpu.SOURCE, ())]
for v in filter(None, args.get("variants", "").split(",")):
    name, fl = v.split(":", 1)
    builds.append((name, packed_cpu.SOURCE, tuple(fl.split("+"))))
libs = {}
for name, src, extra in builds:
    lib, why = native.load(src, (*flags, *extra), "ab9-" + name, openmp=True)
    assert lib is not None, why
    libs[name] = packed_cpu.bind(lib)
names = [b[0] for b in builds]
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
batches = [int(x) for x in args.get("batches", "79,8").split(",")]
threads = [int(x) for x in args.get("threads", "1,2").split(",")]
rounds = int(args.get("rounds", 7))
ctx = int(args.get("ctx", 8192))
# text=F: a fraction F of the rows in the text class (a 4-bit table), for checks
text = float(args.get("text", 0))


def store(batch: int, seed: int, cls_seed: int):
    """bk.store's store (2-bit, ~15 pivots per sequence, a full window), its classes drawn from cls_seed."""
    g, gc = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(cls_seed)
    st = TensorStore(plan, 4 if text else None, torch.float16, bk.H, bk.D, batch)
    for t0 in range(0, ctx, 2048):
        st.append(torch.randn(batch, bk.H, min(2048, ctx - t0), bk.D, generator=g))
        m = st.flushable(0)
        if m:
            cls = torch.full((m, batch), LOW, dtype=torch.uint8)
            cls[torch.rand(m, batch, generator=gc) < text] = TEXT
            cls[torch.rand(m, batch, generator=gc) < 15 / ctx] = FULL
            st.flush(m, cls)
    return st


# samecls=1 (default): K and V with the same classes, as the cache flushes them (cache/layer.py); 0: bk.store's
same = args.get("samecls", "1") == "1"
data = {b: (store(b, 0, 0), store(b, 1, 0 if same else 1), torch.randn(b, 9, 1, 64)) for b in batches}
evict = torch.empty(512 << 20, dtype=torch.uint8)
orig = packed_cpu._lib
ts, outs = {}, {}
for r in range(rounds):
    order = names[r % len(names) :] + names[: r % len(names)]
    if r % 2:
        order = order[::-1]
    for b in batches:
        k, v, q = data[b]
        for nt in threads:
            for name in order:
                packed_cpu._lib = lambda variant="auto", L=libs[name]: L
                torch.set_num_threads(1)
                evict.fill_(r)
                torch.set_num_threads(nt)
                t = time.perf_counter()
                o = packed_cpu.packed_decode(q, k, v, None, 0.125, threads=nt)
                ts.setdefault((b, nt, name), []).append(time.perf_counter() - t)
                outs[(b, nt, name)] = o
packed_cpu._lib = orig
print(f"builds: {', '.join(f'{n} {e}' for n, _, e in builds)}; median of {rounds}, L3 evicted")
print(
    "| batch | threads | "
    + " | ".join(f"{n} ms" for n in names)
    + " | "
    + " | ".join(f"{n}/old" for n in names[1:])
    + " | max |diff| vs old |"
)
for b in batches:
    for nt in threads:
        med = {n: statistics.median(ts[(b, nt, n)]) for n in names}
        d = max((outs[(b, nt, "old")] - outs[(b, nt, n)]).abs().max().item() for n in names[1:])
        print(
            f"| {b} | {nt} | "
            + " | ".join(f"{1e3 * med[n]:.2f}" for n in names)
            + " | "
            + " | ".join(f"{med[n] / med['old']:.3f}" for n in names[1:])
            + f" | {d:.2e} |"
        )
