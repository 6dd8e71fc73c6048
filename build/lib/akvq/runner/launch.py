"""What akvq's Hydra launchers do around a sweep: pre-flight every job first, report failed jobs at the end,
never hang on SLURM.

The launcher classes live in `hydra_plugins/akvq_launchers` (Hydra accepts launchers only from that package);
`configs/hydra/launcher/local.yaml` and `submitit_slurm.yaml` name them. Both launchers compose every job's
config, run `akvq.preflight` on all of them in the submitting process, print one table, and start nothing
unless every job passes (`preflight=skip` overrides, `preflight=dry_run` shows the table and, for SLURM, the
sbatch script, then stops). Jobs whose runs are all recorded already are not started again (`redo=true` does).
After the jobs end, one summary table of every job's rows is printed and failed jobs are listed; the exit
status is 1 when any job failed. A job that fails does not stop the other jobs (`run.py` turns its error into
a `JobFailure`).

The SLURM launcher waits for its jobs like hydra-submitit-launcher does, but also notices jobs that left the
queue without a result (scancel, out of memory, node failure) instead of waiting for them forever, and with
`slurm.wait=false` returns right after submitting.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig

from akvq.runner import preflight

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often the SLURM launcher looks at the queue and the result files
GONE_POLLS = 2  # a job missing from squeue this many polls in a row, without a result, has ended without one


@dataclass
class JobFailure:
    """What a failed job returns instead of rows, so the sweep goes on and the summary names it."""

    overrides: str
    error: str


def label(overrides: Sequence[str]) -> str:
    return " ".join(filter_overrides(list(overrides))) or "(defaults)"


def labels(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """Each job's name for tables: the overrides that differ between the jobs (all of them for one job)."""
    common = set.intersection(*(set(o) for o in job_overrides)) if len(job_overrides) > 1 else set()
    return [label([x for x in o if x not in common]) for o in job_overrides]


def check_sweep(launcher: Any, job_overrides: Sequence[Sequence[str]], slurm: bool) -> list[int] | None:
    """Run the pre-flight on every job; returns the indices of jobs to start, or None to start nothing.

    Exits with status 2 (nothing started) when a job fails a check."""
    cfg: DictConfig = launcher.config
    mode = preflight.mode_of(cfg)
    if mode == "skip":
        log.warning("preflight=skip: %d jobs start unchecked", len(job_overrides))
        return list(range(len(job_overrides)))
    jobs = [
        (name, launcher.hydra_context.config_loader.load_sweep_config(cfg, list(o)))
        for name, o in zip(labels(job_overrides), job_overrides, strict=True)
    ]
    checks = preflight.run_checks(jobs, slurm=slurm)
    print(preflight.format_checks(checks), flush=True)
    if not all(c.ok for c in checks):
        log.error("pre-flight failed: nothing was started (fix the jobs above, or preflight=skip)")
        sys.exit(2)
    todo = [i for i, c in enumerate(checks) if not c.recorded or cfg.get("redo")]
    if len(todo) < len(checks):
        print(
            f"{len(checks) - len(todo)} of {len(checks)} jobs are recorded already: not started (redo=true)"
        )
    if mode == "dry_run":
        print(f"dry run: {len(todo)} jobs would start")
        return None
    return todo


def summarize(returns: Sequence[JobReturn], labels: Sequence[str]) -> int:
    """Print every job's rows as one table and the failed jobs; returns the number of failures."""
    from akvq.runner import format_table

    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for ret, label in zip(returns, labels, strict=True):
        value = ret._return_value if ret.status == JobStatus.FAILED else ret.return_value
        if isinstance(value, JobFailure):
            failures.append(f"{label}: {value.error}")
        elif isinstance(value, BaseException):
            failures.append(f"{label}: {type(value).__name__}: {value}")
        elif isinstance(value, list):
            rows.extend(value)
    print("\nsweep summary\n" + format_table(rows), flush=True)
    if failures:
        print(
            f"\n{len(failures)} failed job(s):\n" + "\n".join(f"  FAILED {f}" for f in failures), flush=True
        )
    return len(failures)


def finish(returns: Sequence[JobReturn], labels: Sequence[str]) -> Sequence[JobReturn]:
    if summarize(returns, labels):
        sys.exit(1)
    return returns


def _queued_ids() -> set[str] | None:
    """Job ids in the queue, arrays expanded (`123_4`), or None when squeue cannot be asked."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.stdout.split()) if out.returncode == 0 else None


def wait_for(jobs: Sequence[Any], overrides: Sequence[Sequence[str]]) -> list[JobReturn]:
    """Results of submitit jobs; a job that leaves the queue without a result becomes a `JobFailure`."""
    results: dict[int, JobReturn] = {}
    gone = dict.fromkeys(range(len(jobs)), 0)
    while len(results) < len(jobs):
        queued = _queued_ids()
        for i, job in enumerate(jobs):
            if i in results:
                continue
            if job.paths.result_pickle.exists():
                try:
                    results[i] = job.results()[0]
                except Exception as e:  # noqa: BLE001 - a job that raised: its error is its result
                    results[i] = _failed(
                        overrides[i], f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"
                    )
                continue
            gone[i] = gone[i] + 1 if queued is not None and job.job_id not in queued else 0
            if gone[i] >= GONE_POLLS:
                results[i] = _failed(
                    overrides[i],
                    f"SLURM job {job.job_id} ended without a result (cancelled, timed out, out of memory or node "
                    f"failure); log: {job.paths.stderr}",
                )
        if len(results) < len(jobs):
            time.sleep(POLL_S)
    return [results[i] for i in range(len(jobs))]


def _failed(overrides: Sequence[str], error: str) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = JobFailure(label(overrides), error)
    return ret


def job_failure(cfg: DictConfig, error: BaseException) -> JobFailure:
    """The `JobFailure` a multirun job returns for an error (run.py)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    text = str(error).strip()
    return JobFailure(label(overrides), f"{type(error).__name__}: {text.splitlines()[0] if text else ''}")


__all__ = ["JobFailure", "check_sweep", "finish", "job_failure", "label", "labels", "summarize", "wait_for"]
