"""scripts/triton_compile.py: the Triton kernels compiled for a Hopper GPU (sm_90) on this CPU, through Triton's own
compiler and ptxas, which the interpreter tests never reach. Subprocesses: the script swaps Triton's driver."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run(args: list[str], tmp_path: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compiled here, not found in a cache
    script = REPO / "scripts" / "triton_compile.py"
    if code is not None:  # Triton reads a kernel's source from its file
        script = tmp_path / "probe.py"
        script.write_text(code)
    cmd = [sys.executable, str(script)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path: Path) -> None:
    p = run(["--quick", "--arch", "80,90"], tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert "4 kernels" in last and "; 0 failed" in last, last
    for kernel in (
        "_token_scores_kernel",
        "_token_output_kernel",
        "_channel_scores_kernel",
        "_quantize_kernel",
    ):
        assert kernel in last
    assert "D=128" in p.stdout and "FZ=True" in p.stdout  # the 7B models' head size, float zero points
    assert any(Path(tmp_path / "triton-cache").rglob("*.cubin"))  # ptxas ran: machine code for the card
    # each architecture its own kernels (Triton caches them per device: one stand-in device per architecture)
    archs = {
        m
        for f in (tmp_path / "triton-cache").rglob("*.json")
        for m in re.findall(r'"arch": (\d+)', f.read_text())
    }
    assert archs == {"80", "90"}, archs


def test_a_kernel_that_does_not_compile_is_reported(tmp_path: Path) -> None:
    """The check can fail: a kernel the compiler rejects (a block of 3, not a power of two) comes back as a
    failure naming it, and the run goes on."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "scripts")!r})
        import torch, triton, triton.language as tl
        import triton_compile as T

        @triton.jit
        def broken_kernel(x_ptr, N: tl.constexpr):
            tl.store(x_ptr + tl.arange(0, N), 1.0)

        @triton.jit
        def fine_kernel(x_ptr, N: tl.constexpr):
            tl.store(x_ptr + tl.arange(0, N), 1.0)

        done = T.Compiled()
        T.compile_only(90, done)
        x = torch.empty(8)
        try:
            broken_kernel[(1,)](x, N=3)
        except T.CompileFailed:
            print("caught")
        fine_kernel[(1,)](x, N=8)
        print(len(done.failures), sorted(k[0] for k in done.variants), done.failures[0][:40])
    """)
    p = run([], tmp_path, code)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert lines[-3] == "caught" and lines[-2].startswith("  sm_90 fine_kernel"), lines
    assert lines[-1].startswith("1 ['fine_kernel'] broken_kernel (N=3 [float32]) sm_90"), lines[-1]
