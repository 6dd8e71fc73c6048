"""The fused call at one batch in a loop, for `perf record` (one thread; SmolLM2 shapes, 8K, bench_kernel's stores):

perf record -D 8000 -F 1999 -o cur.data -- python results/efficiency/logs/kernel17-scratch/loop.py 79 20 avx512
perf report -i cur.data --no-children --sort symbol
(args: batch, seconds, variant, then -D switches of the build)
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import torch  # noqa: E402
from bench_kernel import D, G, H, store  # noqa: E402

from akvq.attention import packed_cpu  # noqa: E402
from akvq.policies.base import TensorPlan  # noqa: E402

torch.set_num_threads(1)
batch, secs, variant = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
lib = packed_cpu.load_build(variant, tuple(sys.argv[4:]))[0]
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
k, v = store(plan, batch, 8192, 0), store(plan, batch, 8192, 1)
q = torch.randn(batch, H * G, 1, D)
t, n = time.time(), 0
while time.time() - t < secs:
    packed_cpu.fused_decode(q, k, v, None, 0.125, threads=1, lib=lib)
    n += 1
print(f"{n} calls, {(time.time() - t) / n * 1e3:.1f} ms a call")
