"""Concurrent sweeps on one records file: claims with leases make each config run once, and a job killed while
it holds a claim (kill -9, SLURM's time limit) gives the config up after the lease. Real processes through
`runner.main`, with a fake model and a fake fast task that logs every run it makes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from akvq import records

REPO = Path(__file__).resolve().parent.parent
QUANTS = ["fp16", "kivi2", "kivi4", "rtn2", "rtn4", "skvq", "smoothquant"]  # + akvq = 8 configs

SWEEP = textwrap.dedent("""
    import json, os, sys, time
    from types import SimpleNamespace
    from omegaconf import OmegaConf
    from akvq import runner
    from akvq.policies.loader import quant_config

    recs, calls, lease, hang = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "hang"

    class Task:
        primary_metric = "ppl"
        needs_images = False

        def run(self, loaded, policy, cfg):
            line = json.dumps({"policy": policy.to_dict(), "pid": os.getpid()}) + "\\n"
            fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, line.encode())
            os.close(fd)
            time.sleep(1000 if hang else 0.3)
            return SimpleNamespace(metrics={"ppl": 1.0}, kv_bytes=1, kv_effective_bits=2.0, num_tokens=1, details={})

    session = runner.Session(
        load_model=lambda model_cfg: SimpleNamespace(model=None, tokenizer=None, processor=None),
        get_task=lambda name, cfg: Task(),
    )
    cfg = OmegaConf.create({
        "model": {"name": "fake-lm", "source": "tiny", "family": "llama", "tiny_kind": "llama"},
        "task": {"name": "ppl", "prompt_len": 32, "cont_len": 4, "windows": 1},
        "quant": quant_config("akvq"), "quant_name": "akvq", "compare": %s,
        "records": recs, "redo": False, "seed": 0, "threads": 1, "claim_lease_s": lease,
        "wandb": {"mode": "disabled"},
    })
    print("start", flush=True)
    runner.main(cfg, session)
""") % json.dumps(QUANTS)


def sweep(tmp: Path, lease: float, hang: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(tmp / "runs.jsonl"), str(tmp / "calls.log"), str(lease), "hang" if hang else "run"]
    return subprocess.Popen(
        [sys.executable, "-c", SWEEP, *args],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def calls(tmp: Path) -> list[str]:
    path = tmp / "calls.log"
    return (
        [json.dumps(json.loads(x)["policy"], sort_keys=True) for x in path.read_text().splitlines()]
        if path.exists()
        else []
    )


@pytest.mark.slow
def test_three_identical_sweeps_run_each_config_once(tmp_path: Path) -> None:
    procs = [sweep(tmp_path, lease=30) for _ in range(3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = calls(tmp_path)
    assert len(ran) == len(QUANTS) + 1 == len(set(ran))  # every config exactly once, over the three jobs
    got = records.read_records(tmp_path / "runs.jsonl")
    assert len(got) == len(QUANTS) + 1 == len({r["config_hash"] for r in got})
    assert not records.claimed(tmp_path / "runs.jsonl")  # all released
    assert not list(records.claims_dir(tmp_path / "runs.jsonl").glob("*.json"))


@pytest.mark.slow
def test_killed_claimant_is_picked_up_after_the_lease(tmp_path: Path) -> None:
    lease = 4.0
    path = tmp_path / "runs.jsonl"
    hung = sweep(tmp_path, lease=lease, hang=True)
    deadline = time.time() + 300
    while time.time() < deadline and not calls(tmp_path):
        time.sleep(0.2)
    assert calls(tmp_path), "the first sweep never started its run"
    time.sleep(lease)  # longer than the lease: only the renewals keep it
    (held,) = records.claimed(path)
    os.kill(hung.pid, signal.SIGKILL)  # like SLURM's time limit: no cleanup runs
    hung.wait()
    # as if the job had run on another node: its pid cannot be checked from here, so the claim lasts its lease
    file = records.claims_dir(path) / f"{held}.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "machine": "another-node"}))
    assert records.try_claim(path, held, lease) is None  # the dead job's claim lasts until its lease ends
    time.sleep(lease + 0.5)
    later = sweep(tmp_path, lease=lease)
    out = later.communicate(timeout=600)[0]
    assert later.returncode == 0, out
    ran = calls(tmp_path)
    assert len(ran) == len(QUANTS) + 2 and len(set(ran)) == len(QUANTS) + 1  # the killed config ran again
    recorded = [r["config_hash"] for r in records.read_records(path)]
    assert held in recorded and len(recorded) == len(set(recorded)) == len(QUANTS) + 1


def _hold(path: Path, config_hash: str, lease_s: float) -> subprocess.Popen:
    """A light process that claims `config_hash` and sleeps."""
    script = f"import time; from akvq import records; c = records.try_claim({str(path)!r}, {config_hash!r}, "
    script += f"lease_s={lease_s})\nprint('held', flush=True); time.sleep(600)"
    p = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_dead_claimant_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    """Ctrl-C (or kill -9) and the same command again: the configs the dead job held run now, not after the
    lease; a live holder keeps its claim however long its lease."""
    path = tmp_path / "runs.jsonl"
    p = _hold(path, "h1", 600.0)
    assert records.try_claim(path, "h1") is None  # alive: held
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert records.claimed(path)["h1"]["expires"] > time.time() + 500  # its lease has not lapsed
    claim = records.try_claim(path, "h1")
    assert claim is not None  # but its process is gone
    claim.release()


def test_a_live_claim_is_renewed_and_a_dead_one_lapses(tmp_path: Path) -> None:
    """API level, one light process: hold a 1 s lease for 2.5 s (renewed), then die by SIGKILL; its claim, as
    if written on another node (no pid to check), lapses only after the lease."""
    path = tmp_path / "runs.jsonl"
    p = _hold(path, "h1", 1.0)
    time.sleep(2.5)
    assert records.try_claim(path, "h1", lease_s=1.0) is None  # still held: renewed past its first lease
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    file = records.claims_dir(path) / "h1.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "machine": "another-node"}))
    assert records.try_claim(path, "h1", lease_s=1.0) is None  # lapses only after the lease
    time.sleep(1.2)
    claim = records.try_claim(path, "h1", lease_s=1.0)
    assert claim is not None
    with claim:
        assert records.try_claim(path, "h1") is None
    assert records.try_claim(path, "h1") is not None  # released on exit
    records.append_record(path, {"config_hash": "h2"})
    assert records.try_claim(path, "h2") is None  # recorded: nothing to claim
    assert records.try_claim(path, "h2", skip_recorded=False) is not None  # redo=true
