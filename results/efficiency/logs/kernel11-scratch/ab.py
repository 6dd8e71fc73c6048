"""A/B of the fused call: the tenth pass's store and kernel (old: packed_cpu.py and its C source from a commit before
the tiles, in OLD_DIR) against the working tree's tiled sealed blocks and kernel, on the same tokens, interleaved, the
L3 evicted before each call. Each store is built once by flushes (sealed, tiled); the old kernel reads a copy of it
with the low-bit codes in row order (`TensorStore.table_codes`: the same rows, scales and classes). Prints medians,
new/old, and max |diff| of the outputs (the same integer sums in the same order: 0 expected). Issue #14, eleventh pass.

    mkdir -p /tmp/old11/csrc
    git show f9ca7e8:akvq/attention/csrc/packed_cpu.c > /tmp/old11/csrc/packed_cpu.c
    git show f9ca7e8:akvq/attention/packed_cpu.py > /tmp/old11/packed_cpu_old.py
    python results/efficiency/logs/kernel11-scratch/ab.py old=/tmp/old11 rounds=15 batches=79,8 threads=1,2
    text=F: a fraction F of the rows in the text class (4-bit), for checks; ctx=N tokens (default 8192)
"""

import copy
import importlib.util
import statistics
import sys
import time

import torch

sys.path.insert(0, "scripts")
sys.path.insert(0, ".")
import bench_kernel as bk

from akvq.attention import packed_cpu
from akvq.cache.store import FULL, LOW, TEXT, TensorStore
from akvq.policies.base import TensorPlan
from akvq.quant.uniform import QTensor

args = dict(a.split("=", 1) for a in sys.argv[1:])
spec = importlib.util.spec_from_file_location("packed_cpu_old", f"{args['old']}/packed_cpu_old.py")
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)
assert old._lib() is not None and packed_cpu._lib() is not None
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
batches = [int(x) for x in args.get("batches", "79,8").split(",")]
threads = [int(x) for x in args.get("threads", "1,2").split(",")]
rounds = int(args.get("rounds", 7))
ctx = int(args.get("ctx", 8192))
text = float(args.get("text", 0))


def store(batch: int, seed: int) -> TensorStore:
    """bench_kernel's store (2-bit, ~15 pivots per sequence, a full window); K and V get the same classes."""
    g, gc = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(0)
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


class Untiled(TensorStore):
    tiled = False


def untiled(st: TensorStore) -> TensorStore:
    """The same rows with the low-bit codes in row order (what the old kernel reads)."""
    t = copy.copy(st)
    t.__class__ = Untiled
    q = st.tables[LOW]
    codes = st.table_codes(LOW, torch.arange(q.codes.shape[0]))
    t.tables = {**st.tables, LOW: QTensor(codes, q.scale, q.zero, q.bits, q.group_size, q.n)}
    return t


data = {}
for b in batches:
    k, v = store(b, 0), store(b, 1)
    tiles = k._tile_groups(0)[1].numel() * 16
    print(
        f"batch {b}: n_q {k.n_q}, sealed {k.sealed}, rows in tiles {tiles / (k.sealed * b):.3f}", flush=True
    )
    data[b] = (k, v, untiled(k), untiled(v), torch.randn(b, 9, 1, 64))
evict = torch.empty(512 << 20, dtype=torch.uint8)
names = ["old", "new"]
ts, outs = {}, {}
for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    for b in batches:
        k, v, k0, v0, q = data[b]
        for nt in threads:
            for name in order:
                torch.set_num_threads(1)
                evict.fill_(r)
                torch.set_num_threads(nt)
                t = time.perf_counter()
                if name == "old":
                    o = old.packed_decode(q, k0, v0, None, 0.125, threads=nt)
                else:
                    o = packed_cpu.packed_decode(q, k, v, None, 0.125, threads=nt)
                ts.setdefault((b, nt, name), []).append(time.perf_counter() - t)
                outs[(b, nt, name)] = o
print(f"old {args['old']} (rows in order) vs the working tree (tiles); median of {rounds}, L3 evicted")
print("| batch | threads | old ms | new ms | new/old | max |diff| |")
for b in batches:
    for nt in threads:
        med = {n: statistics.median(ts[(b, nt, n)]) for n in names}
        d = (outs[(b, nt, "old")] - outs[(b, nt, "new")]).abs().max().item()
        print(
            f"| {b} | {nt} | {1e3 * med['old']:.2f} | {1e3 * med['new']:.2f} | {med['new'] / med['old']:.3f} "
            f"| {d:.2e} |"
        )
