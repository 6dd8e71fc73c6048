"""Write a SynthBench root (MileBench layout) for one seed.

    python scripts/make_synthbench.py ROOT --seed S [--samples 100] [--tasks SceneTransition ...] [--cells 1K 2K]

ROOT/<Task>/<Task>.json + images/, one folder per task (official MileBench names), 4 cells per task (1K, 2K,
4K, 8K prompt tokens at 16 tokens per image) of `--samples` items each, and ROOT/SYNTHBENCH.json recording
the seed. The standard evaluation seed is akvq.synth.bench.EVAL_SEED; training draws from other streams.
Usable with `task=synthbench synthbench_root=ROOT` and `task=milebench milebench_root=ROOT datasets=[...]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's akvq, also where it is not installed (the device machine)

from akvq.synth.bench import EVAL_SEED, LEVELS, SAMPLES_PER_CELL, TASKS, write_root  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--samples", type=int, default=SAMPLES_PER_CELL, help="samples per task and cell")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--cells", nargs="+", default=list(LEVELS), choices=list(LEVELS), help="context lengths")
    args = ap.parse_args()
    if args.samples < 1:
        ap.error(f"--samples must be >= 1, got {args.samples}")
    levels = {c: LEVELS[c] for c in args.cells}
    counts = write_root(args.root, args.seed, args.samples, tuple(args.tasks), levels)
    for task, n in counts.items():
        print(f"{args.root / task}: {n} images")


if __name__ == "__main__":
    main()
