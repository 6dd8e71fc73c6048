"""Run records: round trip, hashing, redaction, and that no crash or kill can leave a broken file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from akvq import records


def rec(i: int, **kw: object) -> dict:
    r = {k: None for k in records.RECORD_KEYS}
    r.update(
        model="m", task="ppl", quant=f"q{i}", metrics={"ppl": 10.0 + i}, config={"i": i}, config_hash=f"h{i}"
    )
    r.update(kw)
    return r


def test_write_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "runs.jsonl"
    assert records.read_records(path) == []
    for i in range(3):
        records.append_record(path, rec(i))
    got = records.read_records(path)
    assert [r["quant"] for r in got] == ["q0", "q1", "q2"]
    assert got[1] == json.loads(json.dumps(rec(1)))
    assert set(records.RECORD_KEYS) <= set(got[0])
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 3
    assert not list(path.parent.glob("*.tmp"))


def test_torn_last_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    records.append_record(path, rec(0))
    with open(path, "a") as fh:  # what a naive appender killed mid-write leaves
        fh.write('{"model": "m", "task": "pp')
    assert [r["quant"] for r in records.read_records(path)] == ["q0"]
    records.append_record(path, rec(1))  # the next append drops the torn line
    assert [r["quant"] for r in records.read_records(path)] == ["q0", "q1"]
    assert all(json.loads(x) for x in path.read_text().splitlines())
    with open(path, "a") as fh:
        fh.write("garbage\n")
    assert records.repair(path) == 1
    assert len(path.read_text().splitlines()) == 2


def test_append_writes_in_place_and_cleans_orphans(tmp_path: Path) -> None:
    """O(record): the file is appended to, not rewritten (same inode, old bytes untouched); temp files left by a
    writer of the old rewrite-and-rename scheme killed mid-way are removed by the next append."""
    path = tmp_path / "runs.jsonl"
    records.append_record(path, rec(0))
    before, inode = path.read_bytes(), path.stat().st_ino
    orphan = tmp_path / ".runs.jsonl.x1y2.tmp"
    orphan.write_text("half a file")
    records.append_record(path, rec(1))
    assert path.stat().st_ino == inode and path.read_bytes().startswith(before)
    assert not orphan.exists()
    with open(path, "a") as fh:  # a complete record from a tool that forgot the newline keeps its line
        fh.write(json.dumps(rec(2)))
    records.append_record(path, rec(3))
    assert [r["quant"] for r in records.read_records(path)] == ["q0", "q1", "q2", "q3"]


def test_killed_writer_never_leaves_a_broken_line(tmp_path: Path) -> None:
    """SIGKILL a process that appends big records in a loop; whatever moment it dies, every line but a torn last
    one parses, readers skip that one and the next append removes it."""
    path = tmp_path / "runs.jsonl"
    script = textwrap.dedent(f"""
        from akvq import records
        big = "x" * 200_000
        i = 0
        while True:
            records.append_record({str(path)!r}, {{"config_hash": str(i), "quant": "q", "pad": big}})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 180  # the child imports torch: slow on a busy machine
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 3):
        time.sleep(0.05)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    text = path.read_text()
    lines = text.splitlines()
    whole = lines if text.endswith("\n") else lines[:-1]  # the kill may tear the last line, nothing before it
    assert len(whole) >= 3
    for line in whole:
        assert json.loads(line)["pad"]
    assert len(records.read_records(path)) == len(whole)  # a torn last line is skipped
    records.append_record(path, {"config_hash": "after", "quant": "q"})  # and cut off by the next append
    assert len(records.read_records(path)) == len(whole) + 1
    assert all(json.loads(x) for x in path.read_text().splitlines())


def test_config_hash_ignores_reporting_keys_and_is_stable() -> None:
    a = {"model": {"name": "m"}, "task": {"name": "ppl"}, "quant": {"policy": "kivi", "bits": 2}, "seed": 0}
    b = {**a, "records": "elsewhere.jsonl", "redo": True, "wandb": {"mode": "online"}, "compare": ["fp16"]}
    assert records.config_hash(a) == records.config_hash(b)
    assert records.config_hash(a) == records.config_hash(json.loads(json.dumps(a, sort_keys=True)))
    c = {**a, "quant": {"policy": "kivi", "bits": 4}}
    assert records.config_hash(a) != records.config_hash(c)
    assert len(records.config_hash(a)) == 16


def test_redact_secrets_but_not_settings() -> None:
    cfg = {
        "wandb": {"api_key": "abc123", "project": "akvq"},
        "hf_token": "hf_xxx",
        "nested": [{"client_secret": "s"}],
        "task": {"max_new_tokens": 64, "num_tokens": 5},
        "tokenizer": "path/to/tok",
    }
    out = records.redact(cfg)
    assert out["wandb"] == {"api_key": records.REDACTED, "project": "akvq"}
    assert out["hf_token"] == records.REDACTED
    assert out["nested"][0]["client_secret"] == records.REDACTED
    assert out["task"] == {"max_new_tokens": 64, "num_tokens": 5}
    assert out["tokenizer"] == "path/to/tok"
    assert "abc123" not in json.dumps(out)


def test_completed_keeps_latest_per_hash(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    records.append_record(path, rec(0))
    records.append_record(path, rec(0, metrics={"ppl": 1.0}))
    done = records.completed(path)
    assert list(done) == ["h0"] and done["h0"]["metrics"] == {"ppl": 1.0}
