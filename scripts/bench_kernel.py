"""Attention-kernel benchmark on CPU: one layer's decode attention over a 2-bit akvq store vs the fp16 control,
interleaved in one process, plus a STREAM-like copy probe for the machine's memory bandwidth.

    python scripts/bench_kernel.py                       # SmolLM2 shapes (3 KV heads of 64, 9 query heads), 8K
    python scripts/bench_kernel.py cases=akvq:79,fp16:14,akvq:8,fp16:8 threads=1,2 ctx=8192 rounds=5
    python scripts/bench_kernel.py breakdown=8      # CPU time of each piece of one layer's attention, batch 8
    python scripts/bench_kernel.py breakdown=79 reps=9   # the same at batch 79, median of 9
    python scripts/bench_kernel.py builds=avx512,avx2    # the kernel's builds side by side (default: the best one)

Random K/V (what the kernel reads does not depend on the values), the akvq layout of SmolLM2 (2-bit, groups of
64, WHT, ~15 16-bit pivots per sequence, a 128-token 16-bit window); the control is the same shapes as a 16-bit
cache. Each round times every (cache, batch, threads, path) once, in turn; the table gives medians and the bytes
each call reads (codes, scales, zeros, 16-bit rows) per second, as a fraction of the copy probe's."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from akvq.attention import packed_cpu  # noqa: E402
from akvq.bench.cli import count, counts, key_values, one_of  # noqa: E402
from akvq.bench.memory import copy_bandwidths  # noqa: E402
from akvq.cache.store import FULL, LOW, TensorStore  # noqa: E402
from akvq.policies.base import TensorPlan  # noqa: E402

H, G, D = 3, 3, 64


def store(plan: TensorPlan | None, batch: int, ctx: int, seed: int) -> TensorStore:
    """A store holding `ctx` tokens: quantized (plan) with ~15 pivots per sequence and a full window, or 16-bit."""
    g = torch.Generator().manual_seed(seed)
    inf = TensorPlan(bits=16, window=1 << 30)
    st = TensorStore(plan or inf, None, torch.float16, H, D, batch)
    step = 2048
    for t0 in range(0, ctx, step):
        st.append(torch.randn(batch, H, min(step, ctx - t0), D, generator=g))
        m = st.flushable(0)  # the tail keeps the window's tokens
        if m:
            cls = torch.full((m, batch), LOW, dtype=torch.uint8)
            cls[torch.rand(m, batch, generator=g) < 15 / ctx] = FULL
            st.flush(m, cls)
    return st


def nbytes(st: TensorStore) -> int:
    b = st.nbytes()
    return b.codes + b.meta + b.hp + b.index


def breakdown(batch: int, ctx: int, reps: int = 5) -> None:
    """Time (one thread, median of `reps`, the pieces interleaved) of each piece of one layer's decode attention:
    the whole call, the C key and value kernels alone (2-bit rows), the 16-bit window in the kernel, the 16-bit
    pivot rows and WHT in torch, softmax; where akvq's time goes. The whole call and the key and value kernels also
    run from builds without one optimization each, interleaved: what each buys (-DAKVQ_PF=0: no prefetching; avx512:
    -DAKVQ_VGATHER=0, the scalar row gather; avx2: -DAKVQ_LANES8=0, keys without tokens in the lanes, and with
    -DAKVQ_V8SEAL=0 too, the avx2 paths before the fourteenth pass)."""
    from akvq.attention import packed_torch as pt

    torch.set_num_threads(1)
    plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
    k, v, fk, fv = (store(p, batch, ctx, i) for i, p in enumerate((plan, plan, None, None)))
    q = torch.randn(batch, H * G, 1, D)
    qq = q.reshape(batch, H, G, D)
    s = packed_cpu.store_scores(k, qq, threads=1)
    p = torch.softmax(s * 0.125, -1)
    lib = packed_cpu._lib()
    best = packed_cpu.best_variant()
    ablations = {}  # builds without one optimization each, timed beside the default: what each buys
    off = [(("-DAKVQ_PF=0",), "no prefetch")]
    if best == "avx512":
        off.append((("-DAKVQ_VGATHER=0",), "scalar row gather"))
    if best == "avx2":
        off.append((("-DAKVQ_LANES8=0",), "keys without tokens in the lanes"))
        off.append((("-DAKVQ_LANES8=0", "-DAKVQ_V8SEAL=0"), "the avx2 paths before the fourteenth pass"))
    for flags, what in off:
        built, why = packed_cpu.load_build(best, flags)
        if built is None:
            raise RuntimeError(f"the {what} build failed: {why}")
        ablations[f"{what} ({' '.join(flags)})"] = built
    t_all = k.n_q + k.tail_len
    qt = pt._prepare_q(k, qq).float().contiguous()
    sc = torch.empty(batch, H, G, t_all)
    oc = torch.zeros(batch, H, G, D)
    pc = p.contiguous()

    def key_kernel(lib=lib) -> None:
        lib.akvq_token_scores(
            k.n_q * batch,
            batch,
            H,
            G,
            D,
            k.group,
            k.cls.data_ptr(),
            *packed_cpu._order(k),
            *packed_cpu._table_args(k),
            int(k.plan.float_zero),
            qt.data_ptr(),
            sc.data_ptr(),
            H * G * t_all,
            1,
            t_all,
            1,
            1,
        )

    def value_kernel(int8v: int = 1, lib=lib) -> None:
        lib.akvq_token_output(
            v.n_q * batch,
            batch,
            H,
            G,
            D,
            v.group,
            v.cls.data_ptr(),
            *packed_cpu._order(v),
            *packed_cpu._table_args(v),
            int(v.plan.float_zero),
            pc.data_ptr(),
            H * G * t_all,
            1,
            t_all,
            oc.data_ptr(),
            int8v,
            1,
        )

    def window() -> None:
        x = k.tail
        lib.akvq_half_scores(
            batch,
            H,
            G,
            D,
            k.tail_len,
            x.data_ptr(),
            *x.stride()[:3],
            qt.data_ptr(),
            sc.data_ptr(),
            t_all,
            k.n_q,
            1,
        )
        x = v.tail
        lib.akvq_half_output(
            batch,
            H,
            G,
            D,
            v.tail_len,
            x.data_ptr(),
            *x.stride()[:3],
            pc.data_ptr(),
            t_all,
            v.n_q,
            oc.data_ptr(),
            1,
        )

    sm = s.clone()  # softmax_ overwrites it; the time does not depend on the values
    u = store(
        plan, batch, ctx, 9
    )  # a third store, which a decode step's cache update grows by a token per call
    x1, cls1 = torch.randn(batch, H, 1, D), torch.zeros(1, batch, dtype=torch.uint8)

    def update() -> (
        None
    ):  # what AKVQLayer.update does to one store: the oldest window token out, the new one in
        u.flush(u.flushable(1), cls1)
        u.append(x1)

    pieces = {
        "akvq: packed_decode (int8 q), whole call": lambda: packed_cpu.packed_decode(
            q, k, v, None, 0.125, threads=1
        ),
        "fp16 control: packed_decode, whole call": lambda: packed_cpu.packed_decode(
            q, fk, fv, None, 0.125, threads=1
        ),
        "akvq: two-pass form (scores, torch softmax, outputs), whole call": lambda: packed_cpu.packed_decode(
            q, k, v, None, 0.125, threads=1, fused=False
        ),
        "fp16 control: two-pass form, whole call": lambda: packed_cpu.packed_decode(
            q, fk, fv, None, 0.125, threads=1, fused=False
        ),
        **{
            f"akvq: packed_decode (int8 q), whole call, {w}": (
                lambda b=b: packed_cpu.fused_decode(q, k, v, None, 0.125, threads=1, lib=b)
            )
            for w, b in ablations.items()
        },
        "akvq: key kernel alone (C, 2-bit rows, int8 q)": key_kernel,
        "akvq: value kernel alone (C, 2-bit rows, u8 weights)": value_kernel,
        "akvq: value kernel alone (C, 2-bit rows, fp32 weights)": lambda: value_kernel(0),
        **{f"akvq: key kernel alone, {w}": (lambda b=b: key_kernel(b)) for w, b in ablations.items()},
        **{f"akvq: value kernel alone, {w}": (lambda b=b: value_kernel(1, b)) for w, b in ablations.items()},
        "akvq: 16-bit window, scores + outputs (C)": window,
        "akvq: scores, all of store_scores (+ WHT of q, pivots, window)": lambda: packed_cpu.store_scores(
            k, qq, threads=1
        ),
        "akvq: outputs, all of store_output (+ WHT of out, pivots, window)": lambda: packed_cpu.store_output(
            v, p, threads=1
        ),
        "akvq: 16-bit pivot rows, scores (torch)": lambda: pt.exact_scores(k, qq, s.clone(), tail=False),
        "akvq: 16-bit pivot rows, outputs (torch)": lambda: pt.exact_output(v, p, oc.clone(), tail=False),
        "softmax over [B, 9, T] in place (torch, as packed_decode)": lambda: pt.softmax_(sm),
        "cache update of one store (quantize the token leaving the window, append one)": update,
    }
    xs: dict[str, list[float]] = {n: [] for n in pieces}
    for _ in range(reps):
        for name, f in pieces.items():
            c = time.perf_counter()
            f()
            xs[name].append(time.perf_counter() - c)
    print(
        f"| piece (batch {batch}, {ctx} tokens, one layer, 1 thread) | ms (median of {reps}, interleaved) |\n|---|---|"
    )
    for name in pieces:
        print(f"| {name} | {1e3 * statistics.median(xs[name]):.2f} |")


def main(args: dict[str, str]) -> None:
    if "breakdown" in args:
        breakdown(int(args["breakdown"]), int(args.get("ctx", 8192)), int(args.get("reps", 5)))
        return
    entries = [(c.split(":")[0], int(c.split(":")[1])) for c in args.get("cases", "akvq:8,fp16:8").split(",")]
    threads = [int(x) for x in args.get("threads", "1").split(",")]
    ctx, rounds = int(args.get("ctx", 8192)), int(args.get("rounds", 5))
    paths = args.get("paths", "int8,float").split(",")
    builds = args.get("builds", packed_cpu.best_variant()).split(",")
    plan = TensorPlan(bits=2, group_size=64, window=128, hadamard=True)
    cases = []
    for i, (name, b) in enumerate(entries):
        p = plan if name == "akvq" else None
        k, v = store(p, b, ctx, 2 * i), store(p, b, ctx, 2 * i + 1)
        cases.append((name, b, k, v, nbytes(k) + nbytes(v)))
    q = {b: torch.randn(b, H * G, 1, D) for _, b in entries}
    times: dict[tuple, list[float]] = {}
    bw: list[dict[int, float]] = []
    for _ in range(rounds):
        bw.append(copy_bandwidths({1, *threads}, 512, 5))
        for nt in threads:
            torch.set_num_threads(nt)
            for build in builds:
                for name, b, k, v, _ in cases:
                    for path in paths if name == "akvq" else paths[:1]:
                        t = time.perf_counter()
                        packed_cpu.packed_decode(
                            q[b], k, v, None, 0.125, threads=nt, int8=path == "int8", variant=build
                        )
                        times.setdefault((build, name, b, nt, path), []).append(time.perf_counter() - t)
    copy = {nt: statistics.median(x[nt] for x in bw) for nt in bw[0]}
    probes = ", ".join(f"{copy[nt] / 1e9:.2f} GB/s on {nt} thread(s)" for nt in sorted(copy))
    print(f"copy probe: {probes} (median of {rounds}, read + write)")
    print(
        "| build | cache | batch | threads | q in K | ms/call | tokens/s (one layer) | GB/s read "
        "| x copy on as many threads |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for build in builds:
        for name, b, _, _, nb in cases:
            for nt in threads:
                for path in paths if name == "akvq" else paths[:1]:
                    s = statistics.median(times[(build, name, b, nt, path)])
                    label = path if name == "akvq" else "fp16"
                    print(
                        f"| {build} | {name} | {b} | {nt} | {label} | {1e3 * s:.1f} | {b / s:.0f} | "
                        f"{nb / s / 1e9:.2f} | {nb / s / copy[nt]:.2f} |"
                    )


def cases_check(text: str) -> str | None:
    """`akvq:8,fp16:14`: each entry a cache and a batch, the batch by `count`'s rule."""
    batch = count()
    ok = all(
        c.partition(":")[0] in ("akvq", "fp16") and batch(c.partition(":")[2]) is None
        for c in text.split(",")
    )
    return None if ok else "must be akvq:BATCH or fp16:BATCH entries, comma-separated (BATCH >= 1)"


if __name__ == "__main__":
    checks = {
        "breakdown": count(),
        "reps": count(),
        "cases": cases_check,
        "threads": counts(),
        "ctx": count(),
        "rounds": count(),
        "paths": one_of("int8", "float", many=True),
        "builds": one_of(*sorted(packed_cpu.VARIANTS), many=True),
    }
    main(key_values(sys.argv[1:], checks, __doc__, "bench_kernel", checks))
