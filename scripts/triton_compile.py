"""Compile every Triton kernel akvq launches for a GPU target, on a machine without a GPU (issue #14).

The interpreter (TRITON_INTERPRET=1, the tests) runs the kernels' Python, not Triton's compiler: a kernel can pass
there and fail to compile for the card (types, layouts, a construct the target lowers differently, the installed
Triton's version). A lent GPU gives minutes, so this runs the compiler here, for the card's architecture, through
ptxas (shipped with Triton): the layout matrix of tests/test_attention.py (query in fp32 and fp16), stores with
LLaVA's head size 128 (MHA, and GQA with 7 query heads per KV head as Qwen2-VL-7B), and the quantizer's variants.
Each launch is compiled, not run (Triton's own `warmup`), under a stand-in driver that answers the target; the
outputs are left unwritten, so nothing here checks values (the interpreter tests do, and scripts/gpu_kernels.py on
the GPU).

    python scripts/triton_compile.py                 # sm_90 (H100/H200); --arch 80,90 for an A100 too
    python scripts/triton_compile.py --quick         # a few layouts (the test)

Prints one line per compiled variant (kernel, its constexprs, seconds) and exits 1 if any launch failed to compile,
with the compiler's error. Relies on Triton's JITFunction.run(..., grid, warmup) and driver.set_active (3.6 and 3.8
checked: the device machine's and this project's).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


class CompileFailed(Exception):
    """A launch's kernel did not compile; the case it came from stops, the others go on."""


@dataclass
class Compiled:
    """Every variant compiled (kernel name, constexprs, target) and every failure."""

    variants: dict[tuple[str, str, int], float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class TargetOnly:
    """A stand-in for Triton's active driver that answers only what a launch asks before it runs: the device, the
    stream and the target. Nothing is launched (`warmup`), so nothing else is asked."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        # Triton keeps its binder, target and compiled kernels per device: one "device" per architecture, or a
        # second --arch would reuse the first one's kernels
        return self.target.arch

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def compile_only(arch: int, done: Compiled) -> None:
    """From here on, a launch compiles its kernel for `arch` and returns without running it."""
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    driver.set_active(TargetOnly(arch))  # type: ignore[arg-type]
    run = JITFunction.run if not hasattr(JITFunction.run, "akvq_original") else JITFunction.run.akvq_original

    def launch(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        consts = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if k.isupper())
        dtypes = ",".join(str(a.dtype).removeprefix("torch.") for a in args[:2] if torch.is_tensor(a))
        key = (self.fn.__name__, f"{consts} [{dtypes}]", arch)
        if key in done.variants:
            return None
        t0 = time.perf_counter()
        try:
            run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - the compiler's error, reported with its kernel and constexprs
            msg = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()
            done.failures.append(f"{key[0]} ({key[1]}) sm_{arch}: " + " | ".join(msg[-6:]))
            raise CompileFailed(done.failures[-1]) from e
        done.variants[key] = time.perf_counter() - t0
        print(f"  sm_{arch} {key[0]:24s} {key[1]}  {done.variants[key]:.1f} s", flush=True)
        return None

    launch.akvq_original = run  # type: ignore[attr-defined]
    JITFunction.run = launch  # type: ignore[method-assign]


def decode_cases(quick: bool) -> list[tuple[str, Any, Any, torch.Tensor, torch.Tensor | None]]:
    """(label, K store, V store, query, mask): the tests' layout matrix, then head size 128 as the 7B models."""
    from test_attention import PLANS, _store, case

    from akvq.policies.base import TensorPlan

    out = []
    names = ["akvq_all_classes_nowht", "kivi_keys_hp", "float_zero_across"] if quick else sorted(PLANS)
    for name in names:
        for groups, n, masked in itertools.product((1, 3), (45, 150), (False, True)):
            channel = PLANS[name][0].axis == "channel"
            if (channel and n != 45) or (quick and (n if not channel else 150, masked) != (150, True)):
                continue
            kst, vst, q, mask = case(name, groups, n, masked)
            out.append((f"{name} G={groups} n={n} mask={int(masked)}", kst, vst, q, mask))
    big = {  # LLaVA-1.5-7B's and Qwen2-VL-7B's head size: akvq's PSA layer, KIVI's channel keys, akvq_plus
        "akvq_d128": (TensorPlan(bits=2, group_size=128, window=7, hadamard=True), None, "all"),
        "kivi_d128": (TensorPlan(bits=2, group_size=32, axis="channel", window=0), None, "low"),
        "plus_d128": (
            TensorPlan(
                bits=2, group_size=128, window=3, float_zero=True, hadamard=True, group_across_heads=True
            ),
            4,
            "all",
        ),
    }
    for name, (plan, text_bits, classes) in big.items():
        for groups in (1,) if quick else (1, 7):
            kst = _store(plan, text_bits, 150 if plan.axis == "token" else 100, 1, classes, d=128)
            vplan = plan if plan.axis == "token" else TensorPlan(bits=2, group_size=128, window=6)
            vst = _store(vplan, text_bits, kst.n_q + kst.tail_len, 2, classes, flushes=3, d=128)
            q = torch.randn(
                kst.batch, kst.num_heads * groups, 1, 128, generator=torch.Generator().manual_seed(3)
            )
            out.append((f"{name} G={groups}", kst, vst, q, None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--arch", default="90", help="compute capabilities, comma-separated (90: H100/H200, 80: A100)"
    )
    p.add_argument("--quick", action="store_true", help="a few layouts and quantizer variants")
    a = p.parse_args()
    try:
        import triton
    except ImportError:
        sys.exit("triton is not installed: nothing to compile")
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("TRITON_INTERPRET=1 makes Triton interpret, not compile: unset it")
    from akvq.attention import packed_triton as PT
    from akvq.attention.paths import PATHS
    from akvq.quant import gpu

    print(f"triton {triton.__version__}, torch {torch.__version__}: compiling for sm_{a.arch}", flush=True)
    t0 = time.perf_counter()
    cases = decode_cases(a.quick)  # the stores quantized by the torch code, as on a CPU
    # akvq's own checks let a kernel launch on a CUDA device or in the interpreter; the kernels are compiled
    # (Triton read the variable at import, above), and the launches below only compile them
    os.environ["TRITON_INTERPRET"] = "1"
    done = Compiled()
    for arch in (int(x) for x in a.arch.split(",")):
        compile_only(arch, done)
        for label, kst, vst, q, mask in cases:
            if PATHS["triton"].why_not(kst, vst, cuda=True) is not None:
                continue  # the selector sends this layout elsewhere (3-bit codes, 8-bit windows: paths.py)
            for dt in (torch.float32, torch.float16):
                try:
                    PT.packed_decode(q.to(dt), kst, vst, mask, 0.25)
                except CompileFailed:
                    print(f"  {label} q {dt}: FAILED", flush=True)
        for bits, gs, fz, mode in itertools.product(
            (2, 4) if a.quick else (1, 2, 4, 8),
            (128,) if a.quick else (16, 128),
            (False, True),
            ("center", "minmax"),
        ):
            try:
                gpu.quantize(torch.randn(4, 256), bits, gs, 0.8, fz, mode)
            except CompileFailed:
                print(f"  quantize bits={bits} g={gs} fz={int(fz)} {mode}: FAILED", flush=True)
    kernels = sorted({k[0] for k in done.variants})
    print(
        f"{len(done.variants)} variants of {len(kernels)} kernels ({', '.join(kernels)}) compiled for "
        f"sm_{a.arch} in {time.perf_counter() - t0:.0f} s; {len(done.failures)} failed",
        flush=True,
    )
    for f in done.failures:
        print("FAILED " + f, flush=True)
    sys.exit(1 if done.failures or not done.variants else 0)


if __name__ == "__main__":
    main()
