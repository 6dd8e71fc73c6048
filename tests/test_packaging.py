"""The library apart from the harness, and the wheel: what `pip install akvq` gives a user.

The wheel test builds the wheel, installs it (not editable) into a fresh venv that borrows the torch already on
disk, and runs tiny-llava `generate` with `akvq` from outside the checkout: the shipped layer pattern and the
packed C kernel (its shipped source) must be what runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import borrowing_venv

REPO = Path(__file__).resolve().parents[1]
BLOCK = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys
    BLOCKED = ("hydra", "omegaconf", "pandas", "matplotlib", "wandb", "lmms_eval")
    class _Loader(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError(f"harness package {spec.name} is blocked", name=spec.name)
        def exec_module(self, module):
            raise ImportError("blocked")
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, _Loader()) if name.split(".")[0] in BLOCKED else None
    sys.meta_path.insert(0, _Block())
""")
SMOKE = textwrap.dedent("""
    import json, sys, torch
    from PIL import Image
    import akvq
    from akvq import generate, make_policy
    from akvq.attention import packed_cpu, use_packed
    from akvq.models import build_inputs, build_tiny
    loaded = build_tiny("llava")
    inputs = build_inputs(loaded, ["<image> describe it"], [[Image.new("RGB", (56, 56), "red")]])
    from akvq import api
    cache = api.build_cache(loaded.model, make_policy("akvq", window=4), inputs)
    use_packed(loaded.model, cache, "packed_c")
    with api.pivot_detection(loaded.model, cache), torch.inference_mode():
        out = loaded.model.generate(**inputs, **{api.cache_kwarg(): cache}, max_new_tokens=4, do_sample=False)
    harness = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf", "pandas", "matplotlib", "wandb"))
    from akvq.quant import cpu as quant_cpu
    print(json.dumps({"file": akvq.__file__, "pattern": cache.policy.layer_pattern, "kernel": packed_cpu.available(),
                      "quant_c": quant_cpu._lib() is not None, "quant_source": str(quant_cpu.SOURCE),
                      "source": str(packed_cpu.SOURCE), "tokens": out.shape[1] - inputs["input_ids"].shape[1],
                      "harness": harness}))
""")


def _run(python: str, code: str, cwd: Path) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not shadow the wheel
    p = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_library_imports_and_generates_without_the_harness(tmp_path: Path) -> None:
    got = _run(sys.executable, BLOCK + SMOKE, tmp_path)
    assert got["harness"] == [] and got["tokens"] == 4
    assert got["pattern"] == ["tsa", "tsa", "psa", "psa"]


@pytest.mark.slow
def test_wheel_installs_and_runs_from_outside_the_checkout(tmp_path: Path) -> None:
    """CI step: build the wheel, install it non-editable into a fresh venv (torch etc. borrowed from this
    environment's site-packages through a .pth file, so no network), run the smoke test outside the repo."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        timeout=900,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("akvq-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"akvq/attention/csrc/packed_cpu.c", "akvq/quant/csrc/quant_cpu.c"} <= names
    assert (
        "akvq/_configs/quant/akvq.yaml" in names and "akvq/_configs/layer_patterns/llava-1.5-7b.yaml" in names
    )
    env = tmp_path / "venv"
    py, site = borrowing_venv(env)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        timeout=900,
    )
    got = _run(py, SMOKE, tmp_path)
    assert got["file"].startswith(site) and got["source"].startswith(
        site
    )  # the installed copy, not the checkout
    assert got["kernel"] and got["pattern"] == ["tsa", "tsa", "psa", "psa"] and got["tokens"] == 4
    assert got["quant_c"] and got["quant_source"].startswith(site)  # the shipped C quantizer builds and loads
    shutil.rmtree(env, ignore_errors=True)


def test_setup_says_in_one_line_when_the_disk_is_too_full(tmp_path: Path) -> None:
    """scripts/setup.sh checks free space before pip runs (CI once failed on pip's OSError halfway through torch)."""
    env = {**os.environ, "AKVQ_VENV": str(tmp_path / "venv"), "AKVQ_SETUP_NEED_GB": "100000000"}
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "GB free on the disk holding" in lines[0] and "AKVQ_VENV" in lines[0]
