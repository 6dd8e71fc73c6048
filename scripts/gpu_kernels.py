"""The Triton decode kernels on a GPU: correctness over the test matrix, then one layer's decode at LLaVA-7B's shape.

1. Every packable plan of tests/test_attention.py (2/3/4-bit, text/vision/pivot classes, 16-bit windows and 8-bit
   ones, WHT, groups across heads, KIVI channel keys, float zero points), MHA and GQA, open and sealed blocks,
   with and without a padding mask: the reference (dequantize-then-attend, fp32, on the CPU) vs the Triton kernel
   on the GPU, the tests' tolerance (atol 2e-5, rtol 1e-4).
2. One layer's decode attention at LLaVA-1.5-7B's shape (32 heads x 128): fp16 SDPA over 16-bit K/V vs the Triton
   kernel over akvq's PSA layout (2-bit + WHT + 15 pivots + a 128-token window), CUDA-event timed, the kernel at
   each number of programs per SM in PER_SM_SWEEP (the splits of the tokens; `packed_triton.PROGRAMS_PER_SM`).

    python scripts/gpu_kernels.py --out results/efficiency/gpu           # on a GPU, under a minute
    TRITON_INTERPRET=1 python scripts/gpu_kernels.py --dry-run --out /tmp/k   # a CPU check of this script
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from akvq.paths import write_atomic  # noqa: E402


def to_device(st: Any, device: str) -> Any:
    """Every tensor a store holds (its tables and channel codes too) moved to `device`."""
    for obj in (st, *st.tables.values(), *([st.chan] if st.chan is not None else [])):
        for k, v in list(vars(obj).items()):
            if torch.is_tensor(v):
                setattr(obj, k, v.to(device))
    return st


def kernels(device: str, quick: bool) -> tuple[int, list[str]]:
    from test_attention import PLANS, _views, case

    from akvq.attention import packed_triton as PT
    from akvq.attention.paths import PATHS
    from akvq.attention.reference import reference_decode

    assert PT.available(), "triton kernels unavailable"
    bad, lines = 0, []
    names = sorted(PLANS)[:3] if quick else sorted(PLANS)
    for name in names:
        for groups in (1, 3):
            for n in (45, 150):
                if PLANS[name][0].axis == "channel" and n != 45:
                    continue
                for masked in (False, True):
                    kst, vst, q, mask = case(name, groups, n, masked)
                    why = PATHS["triton"].why_not(kst, vst, cuda=True)
                    if why is not None:  # the selector sends this layout elsewhere (paths.py)
                        lines.append(
                            f"{name:24s} G={groups} n={n:3d} mask={int(masked)} not a Triton layout ({why})"
                        )
                        print(lines[-1], flush=True)
                        continue
                    ref = reference_decode(q, _views(kst), _views(vst), mask, 0.25)
                    to_device(kst, device), to_device(vst, device)
                    out = PT.packed_decode(
                        q.to(device), kst, vst, None if mask is None else mask.to(device), 0.25
                    ).cpu()
                    err = float((out - ref).abs().max())
                    ok = torch.allclose(out, ref, atol=2e-5, rtol=1e-4)
                    bad += not ok
                    lines.append(
                        f"{name:24s} G={groups} n={n:3d} mask={int(masked)} max|err|={err:.2e} {'ok' if ok else 'FAIL'}"
                    )
                    print(lines[-1], flush=True)
    return bad, lines


def quantizer(device: str) -> tuple[int, list[str]]:
    """The one-launch Triton quantizer (`akvq.quant.gpu`, compiled without FMA contraction) against the torch code
    on the CPU: codes, fp16 scales and zeros equal bit for bit over bits, groups, zero points and clip modes, with
    outliers, a constant group, NaN/inf and rounding ties; and a piece whose metadata needs fp32 (far from 0, a tiny
    spread) handed back to the torch code, which picks fp32. The same check runs in the interpreter
    (tests/test_quant.py)."""
    import itertools

    from akvq.quant import gpu
    from akvq.quant.uniform import _quantize_torch

    bad, lines = 0, []
    g = torch.Generator().manual_seed(0)
    shape = (64, 4096) if device == "cuda" else (5, 256)  # the interpreter: small
    for bits, gs, fz, mode in itertools.product((1, 2, 4, 8), (16, 128), (False, True), ("center", "minmax")):
        x = torch.randn(*shape, generator=g) * 3
        x[0, :5] *= 40  # outliers
        x[1] = 0.5  # a constant group (fp16-exact, else its metadata is fp32)
        x[2, 3], x[2, 9], x[3, 1] = float("nan"), float("inf"), -float("inf")
        x[4] = torch.round(x[4] * 4) / 4  # values on half steps: rounding ties
        ref = _quantize_torch(x, bits, gs, 0.8, False, fz, mode)
        got = gpu.quantize(x.to(device), bits, gs, 0.8, fz, mode)
        where = f"quantize bits={bits} g={gs} fz={int(fz)} {mode}"
        if got is None:  # none of these needs fp32 metadata
            ok, line = False, f"{where}: handed back"
        else:
            diff = [
                int((a.cpu() != b).sum()) for a, b in zip(got, (ref.codes, ref.scale, ref.zero), strict=True)
            ]
            ok, line = not any(diff), f"{where}: differing codes/scales/zeros {diff}"
        bad += not ok
        lines.append(line)
        print(line + ("" if ok else " FAIL"), flush=True)
    x = 1000 + 1e-3 * torch.randn(2, 128, generator=g)  # fp16 metadata would lose this piece
    ok = gpu.quantize(x.to(device), 2, 128, 1.0, False, "center") is None
    ok = ok and _quantize_torch(x, 2, 128, 1.0, False, False, "center").scale.dtype == torch.float32
    bad += not ok
    lines.append(f"quantize far from 0, tiny spread: handed back to the torch code (fp32 metadata) {ok}")
    print(lines[-1] + ("" if ok else " FAIL"), flush=True)
    return bad, lines


PER_SM_SWEEP = (1, 2, 4, 8, 16, 32)  # contains PT.PROGRAMS_PER_SM


def layer_timing(device: str, shapes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    import torch.nn.functional as F

    from akvq.attention import packed_triton as PT
    from akvq.cache.store import FULL, LOW, TensorStore
    from akvq.policies.base import TensorPlan

    H, D = 32, 128
    cuda = device.startswith("cuda")
    dt = torch.float16 if cuda else torch.float32

    def timeit(f: Any, reps: int = 20) -> float:
        f()
        if not cuda:
            t = time.perf_counter()
            for _ in range(2):
                f()
            return (time.perf_counter() - t) / 2 * 1e3
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            f()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / reps

    rows = []
    for B, T in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(B, H, T, D, device=device, dtype=dt, generator=g)
        q = torch.randn(B, H, 1, D, device=device, dtype=dt, generator=g)
        plan = TensorPlan(bits=2, group_size=128, window=128, hadamard=True)
        st = TensorStore(plan, None, torch.float16, H, D, B)
        st.append(x)
        m = st.flushable(0)
        cls = torch.full((m, B), LOW, dtype=torch.uint8, device=device)
        cls[torch.randint(0, m, (15,), generator=g, device=device)] = FULL
        st.flush(m, cls)
        sdpa = timeit(lambda q=q, x=x: F.scaled_dot_product_attention(q, x, x))
        # programs per SM a launch aims for (PT.PROGRAMS_PER_SM is the default): each timed, the default reported
        sweep = {
            n: timeit(lambda q=q, st=st, n=n: PT.packed_decode(q, st, st, None, D**-0.5, per_sm=n))
            for n in (PER_SM_SWEEP if cuda else (PT.PROGRAMS_PER_SM,))  # the interpreter: the default only
        }
        tri = sweep[PT.PROGRAMS_PER_SM]
        best = min(sweep, key=sweep.get)
        nb = sum(t.nbytes for t in (st.tail, st.cls, st.hp_rows) if t is not None) + sum(
            qt.codes.nbytes + qt.scale.nbytes + qt.zero.nbytes for qt in st.tables.values()
        )
        row = {
            "batch": B,
            "context": T,
            "sdpa_fp16_ms": sdpa,
            "triton_packed_ms": tri,
            "speedup": sdpa / tri,
            "programs_per_sm": PT.PROGRAMS_PER_SM,
            "triton_ms_by_programs_per_sm": sweep,
            "best_programs_per_sm": best,
            "kv_bytes_fp16": 2 * x.numel() * 2,  # K and V in 16 bits
            "kv_bytes_packed": 2 * nb,  # K and V: the same store stands for both
        }
        row["bytes_ratio"] = row["kv_bytes_fp16"] / row["kv_bytes_packed"]
        row["packed_GBps"] = row["kv_bytes_packed"] / (tri * 1e-3) / 1e9
        row["sdpa_GBps"] = row["kv_bytes_fp16"] / (sdpa * 1e-3) / 1e9
        rows.append(row)
        print(
            f"batch {B:4d} ctx {T:5d}: SDPA {sdpa:8.3f} ms ({row['sdpa_GBps']:7.0f} GB/s) | Triton packed "
            f"{tri:8.3f} ms ({row['packed_GBps']:7.0f} GB/s) | {row['speedup']:.2f}x faster, "
            f"{row['bytes_ratio']:.2f}x fewer KV bytes; programs per SM "
            + " ".join(f"{n}:{ms:.3f}" for n, ms in sweep.items())
            + f" ms (best {best})",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, interpreter, a few plans and a small shape")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if a.dry_run else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET)"
    print(f"== 1. Triton kernels vs the reference on {name}", flush=True)
    bad, lines = kernels(device, a.dry_run)
    print("== 1b. the Triton quantizer vs the torch code, bit for bit", flush=True)
    qbad, qlines = quantizer(device)
    bad, lines = bad + qbad, lines + qlines
    verdict = "KERNELS OK" if bad == 0 else f"KERNELS: {bad} FAILED"
    print(verdict, flush=True)
    write_atomic(out / "kernels.txt", "\n".join([f"device: {name}", *lines, verdict, ""]))
    print("== 2. one layer's decode attention, LLaVA-7B shape (32 heads x 128)", flush=True)
    shapes = [(2, 256)] if a.dry_run else [(1, 8192), (8, 8192), (32, 8192), (64, 2048), (256, 640)]
    rows = layer_timing(device, shapes)
    with open(out / "layer_timing.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"device": name, **r}) + "\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
