"""The clip search on one prefill piece (SmolLM2's keys at an 8K prompt: 8192 x 192, groups of 64, 2 bits), one
thread: the C path with the AVX2 error sums, the same with the scalar search (-DAKVQ_SEARCH_SCALAR), and torch's
path; how many rows hit a near-tie (those go to torch alone). Same bits from all three (checked here too).

    python results/efficiency/logs/quant-search/clip_search_speed.py   # log beside it
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
import torch  # noqa: E402

from akvq.quant import cpu, uniform  # noqa: E402

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.randn(8192, 192, generator=g) * torch.exp(torch.randn(8192, 192, generator=g) * 0.5)
vector, scalar = cpu._lib(), cpu.load_build(("-DAKVQ_SEARCH_SCALAR",))[0]


def timed(f, reps=5):  # noqa: ANN001, ANN201
    f()
    t = time.perf_counter()
    for _ in range(reps):
        out = f()
    return (time.perf_counter() - t) / reps * 1e3, out


runs = {}
for name, lib in (("C, AVX2 search", vector), ("C, scalar search", scalar), ("torch", None)):
    cpu._lib = (lambda lib=lib: lib) if lib is not None else (lambda: None)
    runs[name] = timed(lambda: uniform.quantize(x, 2, 64, clip_search=True))
    ms, q = runs[name]
    print(f"{name:18s} {ms:7.1f} ms")
ref = runs["torch"][1]
for name, (_, q) in runs.items():
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.scale, ref.scale) and torch.equal(q.zero, ref.zero), name
cpu._lib = lambda: vector
ties = cpu.quantize(x, 2, 64, 1.0, False, "center", uniform.CLIP_GRID)[3]
print(f"near-tie rows (settled in torch): {0 if ties is None else ties.numel()} of {x.shape[0]}; all three bit-identical")
