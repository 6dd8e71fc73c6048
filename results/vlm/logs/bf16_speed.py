"""Why the 8K cell runs in bf16: one thread, the model's two heavy ops at 8K tokens in float32 and bf16.

python results/vlm/logs/bf16_speed.py   # log: results/vlm/logs/bf16_speed.log (run with the machine idle)
"""

import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
for dt in (torch.float32, torch.bfloat16):
    a, w = torch.randn(8192, 576, dtype=dt), torch.randn(1536, 576, dtype=dt)
    for _ in range(2):
        F.linear(a, w)
    t = time.perf_counter()
    for _ in range(5):
        F.linear(a, w)
    ms = (time.perf_counter() - t) / 5 * 1e3
    q, k = torch.randn(1, 9, 8192, 64, dtype=dt), torch.randn(1, 9, 8192, 64, dtype=dt)
    F.scaled_dot_product_attention(q, k, k, is_causal=True)
    t = time.perf_counter()
    F.scaled_dot_product_attention(q, k, k, is_causal=True)
    sdpa = (time.perf_counter() - t) * 1e3
    print(f"{dt}: linear 8192x576 @ 576x1536 {ms:.1f} ms; causal SDPA 9 heads x 8192 x 64 {sdpa:.0f} ms")
