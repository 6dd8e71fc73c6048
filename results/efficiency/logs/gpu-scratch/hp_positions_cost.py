"""What the packed torch/Triton paths recomputed on every decode step before `TensorStore.high_positions` was kept:
the (sequence, token) of each 16-bit row from every token's class (`table_slots(0, n_q)`, nonzero, argsort).
CPU timing of that one computation at akvq's PSA layout (15 pivots a sequence), and the cached call.

    python results/efficiency/logs/gpu-scratch/hp_positions_cost.py   # log beside it
"""

import time

import torch

from akvq.cache.store import FULL, LOW, TensorStore
from akvq.policies.base import TensorPlan

torch.set_num_threads(1)
for b, n in ((8, 8192), (79, 8192), (48, 640)):
    st = TensorStore(TensorPlan(bits=2, group_size=128, window=128, hadamard=True), None, torch.float16, 3, 64, b)
    st.append(torch.randn(b, 3, n + 128, 64).half())
    m = st.flushable(0)
    cls = torch.full((m, b), LOW, dtype=torch.uint8)
    cls[torch.randint(0, m, (15,))] = FULL
    st.flush(m, cls)

    def old() -> None:
        c, slot = st.table_slots(0, st.n_q)
        t, bb = (c == FULL).nonzero(as_tuple=True)
        slot[t, bb].argsort()

    for f, name in ((old, "recomputed (before)"), (st.high_positions, "kept (now)")):
        f()
        t0 = time.perf_counter()
        for _ in range(10):
            f()
        print(f"batch {b:3d} tokens {n:5d} {name:20s} {(time.perf_counter() - t0) / 10 * 1e3:8.3f} ms a call")
