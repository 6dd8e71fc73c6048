"""The fused call at one batch in a loop for `perf record` (one thread; SmolLM2 shapes, 8K, bench_kernel's stores):

    perf record -F 499 -o old.data -- python results/efficiency/logs/kernel16-scratch/fusedloop.py 79 25 \
        -DAKVQ_LANES8=0 -DAKVQ_V8SEAL=0
    perf report -i old.data --no-children --sort dso,symbol
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
batch, secs, switches = int(sys.argv[1]), float(sys.argv[2]), tuple(sys.argv[3:])
lib = packed_cpu.load_build(packed_cpu.best_variant(), switches)[0]
plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
k, v = store(plan, batch, 8192, 0), store(plan, batch, 8192, 1)
q = torch.randn(batch, H * G, 1, D)
t, n = time.time(), 0
while time.time() - t < secs:
    packed_cpu.fused_decode(q, k, v, None, 0.125, threads=1, lib=lib)
    n += 1
print(f"{n} calls, {(time.time() - t) / n * 1e3:.1f} ms a call")
