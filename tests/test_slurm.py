"""Sweeps through a real one-node SLURM cluster (`scripts/slurm_up.sh`): array jobs, scancel and resubmit,
pre-flight refusal. CI (CI=true) starts the cluster; elsewhere these tests use a running one or skip, saying why.

Each job is a real `run.py` process on a tiny random model with a short perplexity task, so a job costs the
imports plus a second of compute; the sweeps stay within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTITION = "ci"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> str:
    """The partition of a running cluster; started here under CI (or AKVQ_SLURM=1), otherwise only found."""

    def answers() -> bool:
        if shutil.which("sinfo") is None:
            return False
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")

    if answers():
        return PARTITION
    if os.environ.get("CI") != "true" and os.environ.get("AKVQ_SLURM") != "1":
        pytest.skip("no SLURM cluster answers; `bash scripts/slurm_up.sh` starts one (CI does: CI=true)")
    up = subprocess.run(["bash", str(REPO / "scripts" / "slurm_up.sh")], capture_output=True, text=True)
    if up.returncode != 0 or not answers():
        reason = (up.stderr.strip().splitlines() or ["sinfo does not answer"])[-1]
        print(f"SLURM could not be started: {reason}", file=sys.stderr)
        pytest.skip(f"SLURM could not be started: {reason}")
    return PARTITION


def sweep_args(tmp: Path, *overrides: str) -> list[str]:
    """A tiny-model perplexity sweep on the SLURM launcher, 1 CPU and 2 GB per job, records under tmp."""
    return [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "hydra/launcher=submitit_slurm",
        f"slurm.partition={PARTITION}",
        "slurm.gpus=0",
        "slurm.cpus=1",
        "slurm.mem_gb=2",
        "slurm.time=15",
        "threads=1",
        "wandb.mode=disabled",
        "model=tiny-llama",
        "task=ppl_quick",
        "task.prompt_len=48",
        "task.cont_len=8",
        "task.windows=1",
        "task.bootstrap=10",
        f"records={tmp / 'runs.jsonl'}",
        f"hydra.sweep.dir={tmp / 'multirun'}",
        *overrides,
    ]


def records(tmp: Path) -> list[dict]:
    path = tmp / "runs.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def run(args: list[str], timeout: float = 420) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def sbatch_files(tmp: Path) -> list[str]:
    return [p.read_text() for p in (tmp / "multirun" / ".submitit").rglob("*_submission.sh")]


def test_array_sweep_records_every_config_once(cluster: str, tmp_path: Path) -> None:
    quants = ["fp16", "rtn2", "kivi2", "akvq"]  # two waves of the one-node cluster's two CPUs
    res = run(sweep_args(tmp_path, f"quant={','.join(quants)}"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = records(tmp_path)
    assert sorted(r["quant"] for r in got) == sorted(quants)  # every config exactly once
    assert len({r["config_hash"] for r in got}) == len(quants)
    summary = res.stdout.split("sweep summary")[-1]
    assert all(re.search(rf"^{q}\s", summary, re.M) for q in quants), res.stdout
    (script,) = sbatch_files(tmp_path)  # one array job, partition and resources from the short keys
    assert "#SBATCH --array=0-3%4" in script and f"#SBATCH --partition={cluster}" in script
    assert "#SBATCH --cpus-per-task=1" in script and "gpus" not in script


def test_cancelled_sweep_resubmits_only_unfinished_configs(cluster: str, tmp_path: Path) -> None:
    quants = ["fp16", "kivi2", "akvq"]
    args = sweep_args(tmp_path, f"quant={','.join(quants)}", "hydra.launcher.array_parallelism=1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not records(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
        assert len(records(tmp_path)) == 1, "the first job did not finish in time"
        job_ids = {
            p.name.split("_")[0] for p in (tmp_path / "multirun" / ".submitit").iterdir() if p.is_dir()
        }
        assert len(job_ids) == 1, job_ids
        subprocess.run(["scancel", job_ids.pop()], check=True)
        out, _ = proc.communicate(timeout=120)  # the launcher notices the cancelled jobs instead of hanging
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert "ended without a result" in out and "failed job(s)" in out
    first = records(tmp_path)
    assert len(first) == 1
    shutil.rmtree(tmp_path / "multirun")
    res = run(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 of 3 jobs are recorded already" in res.stdout
    (script,) = sbatch_files(tmp_path)
    assert "#SBATCH --array=0-1%1" in script  # only the two unfinished configs were submitted
    got = records(tmp_path)
    assert sorted(r["quant"] for r in got) == sorted(quants)
    assert got[0] == first[0]


def test_broken_config_is_refused_before_submitting(cluster: str, tmp_path: Path) -> None:
    extra = tmp_path / "extra" / "model"
    extra.mkdir(parents=True)
    (extra / "gone.yaml").write_text(
        f"name: gone\nsource: hub\npath: {tmp_path / 'no-weights'}\nfamily: llama\n"
    )
    res = run(
        sweep_args(
            tmp_path, "model=tiny-llama,gone", "quant=fp16", f"hydra.searchpath=[file://{extra.parent}]"
        ),
        timeout=180,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "pre-flight: 1/2 jobs OK" in res.stdout
    assert re.search(r"model=gone .*model.path=.*no config.json", res.stdout)
    assert "nothing was started" in res.stderr + res.stdout
    assert not (tmp_path / "multirun" / ".submitit").exists() and not records(tmp_path)
