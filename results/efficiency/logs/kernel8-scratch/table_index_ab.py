"""A/B of the fused kernel from two sources (old=PATH against the working tree), interleaved, the 300 MB L3
evicted before each call (a decode step reads each layer's K/V from memory). Issue #14, eighth pass; scratch.

    git show 9f966eb:akvq/attention/csrc/packed_cpu.c > /tmp/old/packed_cpu.c
    python results/efficiency/logs/kernel8-scratch/table_index_ab.py old=/tmp/old/packed_cpu.c rounds=15
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
from akvq.policies.base import TensorPlan

args = dict(a.split("=", 1) for a in sys.argv[1:])
old_src = Path(args["old"])
flags = (*packed_cpu.FLAGS, *packed_cpu.VARIANTS[packed_cpu.best_variant()][1])
libs = {}
for name, src in (("old", old_src), ("new", packed_cpu.SOURCE)):
    lib, why = native.load(src, flags, "ab-" + name, openmp=True)
    assert lib is not None, why
    libs[name] = packed_cpu.bind(lib)
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
batches = [int(x) for x in args.get("batches", "79,8").split(",")]
threads = [int(x) for x in args.get("threads", "1,2").split(",")]
rounds = int(args.get("rounds", 7))
data = {
    b: (bk.store(plan, b, 8192, 0), bk.store(plan, b, 8192, 1), torch.randn(b, 9, 1, 64)) for b in batches
}
evict = torch.empty(512 << 20, dtype=torch.uint8)
orig = packed_cpu._lib
ts = {}
for r in range(rounds):
    for b in batches:
        k, v, q = data[b]
        for nt in threads:
            torch.set_num_threads(nt)
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                packed_cpu._lib = lambda variant="auto", L=libs[name]: L
                torch.set_num_threads(1)
                evict.fill_(r)
                torch.set_num_threads(nt)
                t = time.perf_counter()
                o = packed_cpu.packed_decode(q, k, v, None, 0.125, threads=nt)
                ts.setdefault((b, nt, name), []).append(time.perf_counter() - t)
                ts.setdefault((b, nt, name, "out"), o)
packed_cpu._lib = orig
print(f"| batch | threads | old ms | new ms | new/old | max |diff| | (median of {rounds}, L3 evicted) |")
for b in batches:
    for nt in threads:
        o, n = statistics.median(ts[(b, nt, "old")]), statistics.median(ts[(b, nt, "new")])
        d = (ts[(b, nt, "old", "out")] - ts[(b, nt, "new", "out")]).abs().max().item()
        print(f"| {b} | {nt} | {1e3 * o:.2f} | {1e3 * n:.2f} | {n / o:.3f} | {d:.2e} |")
