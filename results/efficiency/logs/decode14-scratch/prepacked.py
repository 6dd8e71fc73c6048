"""bench_decode.py with every nn.Linear through MKL's pre-packed sgemm (issue #14, twelfth pass; a measurement,
not a shipped path): the weight matmuls are shared by akvq and the control, so this shows how a faster framework
moves the ratios. Weights are packed once per (layer, rows) on first use (not timed: round 0 warms up).

    python results/efficiency/logs/decode14-scratch/prepacked.py prompt_len=8192 reuse=true steps=8 rounds=3 \\
        runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 records=results/efficiency/logs/decode14-prepacked.jsonl
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_decode  # noqa: E402

_packed: dict[tuple[int, int], torch.Tensor] = {}


def forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    m = x.numel() // x.shape[-1]
    key = (id(self), m)
    if key not in _packed:
        _packed[key] = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), m)
    return torch.ops.mkl._mkl_linear(x, _packed[key], self.weight, self.bias, m)


torch.nn.Linear.forward = forward
bench_decode.main({**dict(a.split("=", 1) for a in sys.argv[1:])})
