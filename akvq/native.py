"""Build and load the package's C sources (`quant/csrc`, `attention/csrc`): the one place for the compiler, the
build cache and the CPU's flags.

A source is compiled on first use with the system C compiler (`$CC`, else cc/gcc/clang) into
`~/.cache/akvq/kernels/` (or `$AKVQ_KERNEL_DIR`), keyed by the source, compiler, flags and machine, atomically
(concurrent first uses do not see half-written files), and loaded with ctypes. Without a compiler the caller gets
None and a reason, and keeps its torch path."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is none)."""
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (a run record says which machine its timings are from)."""
    try:
        line = next(
            ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
    return line.split(":", 1)[1].strip()


def native_bf16() -> bool:
    """Whether bf16 matmuls run in hardware here (AMX-BF16 or AVX512-BF16). Elsewhere on x86 oneDNN emulates
    them: bf16 autocast made a `train_vlm.py` step ~10x slower than fp32 on an AVX2 Zen 3 (415 s against 42 s).
    Non-x86 CPUs are not judged (True)."""
    return not is_x86() or bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _compile(cc: str, source: Path, flags: tuple[str, ...], out: Path, openmp: bool) -> None:
    """Build the shared library at `out` atomically (with OpenMP first when asked and the compiler has it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        lib = Path(tmp) / out.name
        for extra in (("-fopenmp",), ()) if openmp else ((),):
            p = subprocess.run(
                [cc, *flags, *extra, str(source), "-o", str(lib), "-lm"], capture_output=True, text=True
            )
            if p.returncode == 0:
                os.replace(lib, out)
                return
        raise RuntimeError(f"compiling {source.name} failed: {p.stderr[-500:]}")


def load(
    source: Path, flags: tuple[str, ...], tag: str, openmp: bool = False
) -> tuple[ctypes.CDLL | None, str]:
    """The library built from `source` with `flags` (`tag` names the build, e.g. its variant), and a status line:
    "built NAME" or why there is none."""
    cc = compiler()
    if not cc:
        return None, "no C compiler on PATH (set CC)"
    root = Path(os.environ.get("AKVQ_KERNEL_DIR") or Path.home() / ".cache" / "akvq" / "kernels")
    try:
        key = hashlib.sha256(
            source.read_bytes() + " ".join((cc, *flags, str(openmp), platform.machine())).encode()
        ).hexdigest()[:16]
        path = root / f"{source.stem}-{tag}-{key}.so"
        if not path.exists():
            _compile(cc, source, flags, path, openmp)
        return ctypes.CDLL(str(path)), f"built {path.name}"
    except (OSError, RuntimeError) as e:
        return None, str(e)
