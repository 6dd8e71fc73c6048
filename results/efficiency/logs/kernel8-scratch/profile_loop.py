"""Calls the fused kernel on one layer's stores (SmolLM2 shapes, 8K, batch B, one thread) for S seconds, L3
evicted before each call, for `perf record` (issue #14, eighth pass; scratch).

    python results/efficiency/logs/kernel8-scratch/profile_loop.py 79 25 &
    perf record -F 2000 -g -p $! -o perf.data -- sleep 15; perf report -i perf.data --no-children --sort symbol
"""

import sys
import time

import torch

sys.path.insert(0, "scripts")
sys.path.insert(0, ".")
import bench_kernel as bk

from akvq.attention import packed_cpu
from akvq.policies.base import TensorPlan

torch.set_num_threads(1)
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
B = int(sys.argv[1])
k, v = bk.store(plan, B, 8192, 0), bk.store(plan, B, 8192, 1)
q = torch.randn(B, 9, 1, 64)
evict = torch.empty(512 << 20, dtype=torch.uint8)
print("ready", flush=True)
t, n = time.perf_counter(), 0
while time.perf_counter() - t < float(sys.argv[2]):
    evict.fill_(n % 255)
    packed_cpu.packed_decode(q, k, v, None, 0.125, threads=1)
    n += 1
print("calls", n)
