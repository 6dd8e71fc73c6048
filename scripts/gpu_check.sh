#!/usr/bin/env bash
# Prepared for one H200 (not run yet: no GPU was lent to the task that wrote it). About 10 minutes:
#   1. Triton kernels on the GPU against dequantize-then-attend (all classes, pivots, window, GQA/MHA, WHT, KIVI keys)
#   2. per-layer decode attention at a LLaVA-7B layer shape: packed Triton vs SDPA over 16-bit K/V
#   3. the efficiency table on CUDA (SmolLM2-135M, prompts 2K and 8K): KV bytes, peak memory, largest batch, tok/s
# Results land in results/efficiency/gpu/ (and are copied to $OUT when the device runner sets it).
#   usage: bash scripts/gpu_check.sh [budget_gib]      (PY=python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
BUDGET=${1:-16}
OUTDIR=results/efficiency/gpu
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD

echo "== 1. kernels vs reference on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
timeout 300 $PY - <<'PYEOF' 2>&1 | tee "$OUTDIR/kernels.txt"
import sys, torch
sys.path.insert(0, "tests")
from test_attention import PLANS, _store, _views, B, H, D
from akvq.attention import packed_triton as PT
from akvq.attention.reference import reference_decode
from akvq.policies.base import TensorPlan
assert PT.available(), "triton kernels unavailable"
bad = 0
for name, (plan, tb, classes) in sorted(PLANS.items()):
    if name == "bits3_8":
        continue
    for groups in (1, 3):
        kst = _store(plan, tb, 45 if plan.axis == "token" else 43, 1, classes)
        vplan = plan if plan.axis == "token" else TensorPlan(bits=2, group_size=16, window=6)
        vst = _store(vplan, tb, kst.n_q + kst.tail_len, 2, classes, flushes=3)
        for st in (kst, vst):  # move every tensor of the stores to the GPU
            for f in ("tail", "cls", "hp_rows", "hp_pos", "smooth"):
                if getattr(st, f) is not None:
                    setattr(st, f, getattr(st, f).cuda())
            for c, qt in st.tables.items():
                qt.codes, qt.scale, qt.zero = qt.codes.cuda(), qt.scale.cuda(), qt.zero.cuda()
            if st.chan is not None:
                st.chan.codes, st.chan.scale, st.chan.zero = st.chan.codes.cuda(), st.chan.scale.cuda(), st.chan.zero.cuda()
        q = torch.randn(B, H * groups, 1, D, generator=torch.Generator().manual_seed(3)).cuda()
        def views(st):
            x = torch.full((1, 1, 1, 1), float("nan"), device="cuda").expand(B, H, st.n_q + st.tail_len, D)
            x.akvq_store = st
            return x
        ref = reference_decode(q, views(kst), views(vst), None, 0.25)
        err = float((PT.packed_decode(q, kst, vst, None, 0.25) - ref).abs().max())
        ok = err < 1e-4
        bad += not ok
        print(f"{name:24s} G={groups} max|err|={err:.2e} {'ok' if ok else 'FAIL'}")
print("KERNELS", "OK" if bad == 0 else f"{bad} FAILED")
PYEOF

echo "== 2. per-layer decode attention, LLaVA-7B layer shape (32 heads, head_dim 128)"
timeout 300 $PY - <<'PYEOF' 2>&1 | tee "$OUTDIR/layer_timing.txt"
import torch, torch.nn.functional as F
from akvq.attention import packed_triton as PT, packed_torch as PTT
from akvq.cache.store import TensorStore, HIGH
from akvq.policies.base import TensorPlan
H, D = 32, 128
def timeit(f, reps=20):
    f(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps
print("batch context | fp16 SDPA ms | packed triton ms | packed torch ms | KV bytes fp16/packed")
for B, T in ((8, 8192), (32, 8192), (64, 2048), (128, 2048)):
    x = torch.randn(B, H, T, D, device="cuda", dtype=torch.float16)
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16)
    plan = TensorPlan(bits=2, group_size=128, window=128, hadamard=True)
    st = TensorStore(plan, None, torch.float16, H, D, B)
    st.append(x)
    m = st.flushable(0)
    cls = torch.zeros(m, B, dtype=torch.uint8, device="cuda")
    cls[torch.randint(0, m, (15,))] = HIGH
    st.flush(m, cls)
    sdpa = timeit(lambda: F.scaled_dot_product_attention(q, x, x))
    tri = timeit(lambda: PT.packed_decode(q, st, st, None, D ** -0.5))
    tor = timeit(lambda: PTT.packed_decode(q, st, st, None, D ** -0.5), reps=3)
    nb = sum(t.nbytes for t in (st.tail, st.cls, st.hp_rows) if t is not None) + sum(qt.nbytes for qt in st.tables.values())
    print(f"{B:5d} {T:6d} | {sdpa:8.3f} | {tri:8.3f} | {tor:8.3f} | {x.nbytes / nb:.2f}")
PYEOF

echo "== 3. efficiency table on CUDA, budget ${BUDGET} GiB"
for L in 2048 8192; do
  timeout 420 $PY scripts/bench_efficiency.py model=smollm2-135m prompt_len=$L gen_len=8 device=cuda threads=null \
    budget_gib=$BUDGET max_batch=4096 max_points=3 timeout_s=300 \
    out_dir=$OUTDIR records=$OUTDIR/runs.jsonl work_dir=results/_scratch/efficiency_gpu || echo "bench $L failed"
done
if [ -n "${OUT:-}" ]; then cp -r "$OUTDIR" "$OUT/"; fi
