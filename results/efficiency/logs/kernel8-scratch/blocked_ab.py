"""Scratch A/B: the fused kernel on token-major rows (working tree) against sequence-blocked rows (the scratch
builds of make_blocked.py, same arithmetic per item, on the same rows permuted), interleaved, L3 evicted before
each call. Issue #14, eighth pass.

    python results/efficiency/logs/kernel8-scratch/make_blocked.py akvq/attention/csrc/packed_cpu.c /tmp/blk
    python results/efficiency/logs/kernel8-scratch/blocked_ab.py dir=/tmp/blk rounds=15 batches=79,8 threads=1,2
"""

import copy
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
from akvq.cache.store import FULL, LOW
from akvq.policies.base import TensorPlan
from akvq.quant.uniform import QTensor

args = dict(a.split("=", 1) for a in sys.argv[1:])
flags = (*packed_cpu.FLAGS, *packed_cpu.VARIANTS[packed_cpu.best_variant()][1])
libs = {}
scratch = Path(args["dir"])
for name, src in (
    ("tokmaj", packed_cpu.SOURCE),
    ("blkaddr", scratch / "packed_cpu_addr.c"),
    ("blocked", scratch / "packed_cpu_blk.c"),
):
    lib, why = native.load(src, flags, "abb-" + name, openmp=True)
    assert lib is not None, why
    libs[name] = packed_cpu.bind(lib)


def blocked(st):
    n, B = st.n_q, st.batch
    assert n % 64 == 0
    r = torch.arange(n * B)
    t = (r // (B * 64)) * 64 + r % 64
    b = (r // 64) % B
    tm = t * B + b
    cls_tm = st.cls.long()
    idx_tm = torch.zeros(n * B, dtype=torch.long)
    for c in (LOW, FULL):
        m = cls_tm == c
        idx_tm[m] = torch.arange(int(m.sum()))
    cb = st.cls[tm].contiguous()
    out = copy.copy(st)
    out.cls = cb
    low = tm[cb == LOW]
    qt = st.tables[LOW]
    out.tables = {
        LOW: QTensor(
            qt.codes[idx_tm[low]].contiguous(),
            qt.scale[idx_tm[low]].contiguous(),
            qt.zero[idx_tm[low]].contiguous(),
            qt.bits,
            qt.group_size,
            qt.n,
            qt.float_zero,
        )
    }
    full = tm[cb == FULL]
    out.hp_rows = st.hp_rows[idx_tm[full]].contiguous()
    assert set(st.tables) == {LOW}
    return out


plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
batches = [int(x) for x in args.get("batches", "79,8").split(",")]
threads = [int(x) for x in args.get("threads", "1").split(",")]
rounds = int(args.get("rounds", 7))
ctx = int(args.get("ctx", 8192))
data = {}
for b in batches:
    k, v = bk.store(plan, b, ctx, 0), bk.store(plan, b, ctx, 1)
    kb, vb = blocked(k), blocked(v)
    data[b] = {"tokmaj": (k, v), "blocked": (kb, vb), "blkaddr": (kb, vb), "q": torch.randn(b, 9, 1, 64)}
evict = torch.empty(512 << 20, dtype=torch.uint8)
orig = packed_cpu._lib
ts, outs = {}, {}
for r in range(rounds):
    for b in batches:
        for nt in threads:
            for name in ("tokmaj", "blkaddr", "blocked") if r % 2 == 0 else ("blocked", "blkaddr", "tokmaj"):
                k, v = data[b][name]
                packed_cpu._lib = lambda variant="auto", L=libs[name]: L
                torch.set_num_threads(1)
                evict.fill_(r)
                torch.set_num_threads(nt)
                t = time.perf_counter()
                o = packed_cpu.packed_decode(data[b]["q"], k, v, None, 0.125, threads=nt)
                ts.setdefault((b, nt, name), []).append(time.perf_counter() - t)
                outs[(b, nt, name)] = o
packed_cpu._lib = orig
print(
    f"| batch | threads | token-major ms | blocked, addressing only ms | blocked + contiguous rows ms | ratios to token-major | max |diff| | (median of {rounds}) |"
)
for b in batches:
    for nt in threads:
        o, a, n = (statistics.median(ts[(b, nt, x)]) for x in ("tokmaj", "blkaddr", "blocked"))
        d = max(
            (outs[(b, nt, "tokmaj")] - outs[(b, nt, x)]).abs().max().item() for x in ("blkaddr", "blocked")
        )
        print(
            f"| {b} | {nt} | {1e3 * o:.2f} | {1e3 * a:.2f} | {1e3 * n:.2f} | {a / o:.3f} / {n / o:.3f} | {d:.2e} |"
        )
