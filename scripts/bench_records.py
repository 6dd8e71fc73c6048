"""Cost of one `append_record` on a large records file: this checkout against an older revision, interleaved in
one process (timings on a shared machine are noise; the same-run ratio is the number).

    python scripts/bench_records.py --mb 60 --appends 10 --rev 9dc9a46
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from akvq import records  # noqa: E402


def old_records(rev: str, tmp: Path):
    """`akvq/records.py` as it was at `rev`, imported as a separate module."""
    src = subprocess.run(
        ["git", "show", f"{rev}:akvq/records.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    file = tmp / "records_old.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location("records_old", file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=60.0, help="size of the records file to append to")
    ap.add_argument("--appends", type=int, default=10, help="appends per implementation")
    ap.add_argument("--rev", default="9dc9a46", help="git revision of the old records.py")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_records-"))
    try:
        old = old_records(args.rev, tmp)
        rec = {
            "model": "m",
            "task": "t",
            "quant": "q",
            "metrics": {"ppl": 1.0},
            "details": {"x": "y" * 190_000},
        }
        seed = tmp / "seed.jsonl"
        line = records.json.dumps({**rec, "config_hash": "h000000"}) + "\n"
        n = int(args.mb * 1e6 / len(line))
        with open(seed, "w") as fh:
            for i in range(n):
                fh.write(records.json.dumps({**rec, "config_hash": f"h{i:06d}"}) + "\n")
        small = {"model": "m", "task": "t", "quant": "q", "metrics": {"ppl": 1.0}, "config_hash": "new"}
        paths = {"old": tmp / "old" / "runs.jsonl", "new": tmp / "new" / "runs.jsonl"}
        for p in paths.values():
            p.parent.mkdir()
            shutil.copy(seed, p)
        impl = {"old": old.append_record, "new": records.append_record}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.appends):
            for name in ("old", "new"):  # interleaved: both see the same machine load
                t0 = time.perf_counter()
                impl[name](paths[name], small)
                times[name].append(time.perf_counter() - t0)
        size = paths["new"].stat().st_size / 1e6
        mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"records file {size:.1f} MB, {args.appends} appends each, median seconds per append:")
        print(f"  old (rewrite whole file, {args.rev}): {mo:.4f}")
        print(f"  new (O_APPEND one line):            {mn:.4f}")
        print(f"  ratio old/new: {mo / mn:.0f}x")
        assert len(records.read_records(paths["new"])) == n + args.appends
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
