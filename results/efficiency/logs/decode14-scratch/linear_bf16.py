"""F.linear on SmolLM2 shapes, fp32 against bf16 (oneDNN, AMX on this CPU) (issue #14, twelfth pass); weights streamed
(200 MB of distinct copies). python results/efficiency/logs/decode14-scratch/linear_bf16.py THREADS"""

# ruff: noqa: B023  (each closure is timed inside its own loop iteration)

import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))


def bench(f, n=20):
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


for N, K in [(49152, 576), (1536, 576), (576, 1536)]:
    ws = [torch.randn(N, K) for _ in range(max(1, 200_000_000 // (N * K * 4)))]
    wb = [w.bfloat16() for w in ws]
    for M in (8, 14, 79):
        x = torch.randn(M, K)
        xb = x.bfloat16()
        i = [0]

        def f0():
            i[0] = (i[0] + 1) % len(ws)
            return torch.nn.functional.linear(x, ws[i[0]])

        def f1():
            i[0] = (i[0] + 1) % len(ws)
            return torch.nn.functional.linear(xb, wb[i[0]])

        with torch.inference_mode():
            t0, t1 = bench(f0), bench(f1)
        print(N, K, M, f"fp32 {t0 * 1e3:.2f}  bf16 {t1 * 1e3:.2f} ms  x{t0 / t1:.2f}", flush=True)
