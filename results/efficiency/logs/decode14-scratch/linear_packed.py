"""F.linear on SmolLM2 shapes against MKL-packed weights (issue #14, twelfth pass); weights streamed (200 MB of distinct
copies). python results/efficiency/logs/decode14-scratch/linear_packed.py THREADS"""

# ruff: noqa: B023  (each closure is timed inside its own loop iteration)

import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
print(torch.__version__, torch.backends.mkl.is_available(), torch.backends.mkldnn.is_available())


def bench(f, n=20):
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


for N, K in [(49152, 576), (1536, 576), (576, 1536)]:
    # many distinct weights so they stream from DRAM like in the model
    ws = [torch.randn(N, K) for _ in range(max(1, 200_000_000 // (N * K * 4)))]
    for M in (8, 14, 79):
        x = torch.randn(M, K)
        i = [0]

        def f0():
            i[0] = (i[0] + 1) % len(ws)
            return torch.nn.functional.linear(x, ws[i[0]])

        packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, M) for w in ws]

        def f1():
            i[0] = (i[0] + 1) % len(ws)
            return torch.ops.mkl._mkl_linear(x, packed[i[0]], ws[i[0]], None, M)

        r0 = torch.nn.functional.linear(x, ws[0])
        r1 = torch.ops.mkl._mkl_linear(x, packed[0], ws[0], None, M)
        t0, t1 = bench(f0), bench(f1)
        print(
            N,
            K,
            M,
            f"plain {t0 * 1e3:.2f} ms ({N * K * 4 / t0 / 1e9:.1f} GB/s)  packed {t1 * 1e3:.2f} ms ({N * K * 4 / t1 / 1e9:.1f} GB/s) err {(r0 - r1).abs().max().item():.2e}",
        )
