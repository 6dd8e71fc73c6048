"""Drives runs: plan (configs -> run list, all checks before loading), execute (one run, measured), report
(records and tables).

`run.py` hands each composed Hydra config to `main` with the process's `Session`. One process runs the chosen
`quant` plus the names in `compare` on the same loaded model (the embedded default: akvq next to fp16 and kivi2),
skipping every run whose config hash already has a record unless `redo=true`, so a killed sweep resumes where it
stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from akvq import records, tracking
from akvq.errors import ConfigError
from akvq.paths import CONFIG_DIR
from akvq.records import is_stale
from akvq.runner.execute import execute
from akvq.runner.plan import RunPlan, available, plan, plan_sweep, quant_names, text_only_error
from akvq.runner.report import format_table, record, tracked
from akvq.runner.session import Session

log = logging.getLogger(__name__)


RECORDS = "results/runs.jsonl"  # what tables and figures are built from (committed)
SCRATCH_RECORDS = "results/_scratch/runs.jsonl"  # ad-hoc runs (git-ignored): never in committed artifacts


def default_records(cfg: DictConfig) -> str:
    """`records: null`: the committed records file, or the scratch file for a task marked `adhoc: true` (the
    quick start's ppl_quick), so trying akvq out leaves the checkout and its figures unchanged."""
    task = cfg.get("task") or {}
    return SCRATCH_RECORDS if task.get("adhoc") else RECORDS


def partial_path(records_path: Path, chash: str) -> Path:
    """Where a run's finished samples go until its record is written (`<records dir>/partial/<hash>.jsonl`)."""
    return records_path.parent / "partial" / f"{chash}.jsonl"


def choose_threads(threads: Any) -> int:
    """`threads=N` as given; null: the CPUs this process may use (affinity, SLURM's cpus-per-task) less the ones
    other processes keep busy (1-minute load average). On a shared machine torch's default (every core) makes
    its threads wait on each other and a run several times slower."""
    if threads:
        return int(threads)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cpus = min(cpus, int(os.environ["SLURM_CPUS_PER_TASK"]))
    # the load average is the whole machine's: meaningful only when this process may use the whole machine
    whole = cpus == (os.cpu_count() or cpus) and hasattr(os, "getloadavg")
    busy = os.getloadavg()[0] if whole else 0.0
    n = max(1, min(cpus, round(cpus - busy)))
    log.info("threads=%d (%d CPUs, load %.1f; threads=N overrides)", n, cpus, busy)
    return n


def resolve_paths(cfg: DictConfig) -> tuple[Path, Path]:
    """(records file, W&B dir): relative paths against where run.py started; W&B under the run's output dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    recs = Path(to_absolute_path(str(cfg.get("records") or default_records(cfg))))
    wb = (cfg.get("wandb") or {}).get("dir")
    if wb:
        wdir = Path(to_absolute_path(str(wb)))
    elif HydraConfig.initialized():
        wdir = Path(HydraConfig.get().runtime.output_dir)
    else:
        wdir = Path(to_absolute_path("outputs"))
    return recs, wdir


def _missing(policy: Any) -> str | None:
    check = getattr(policy, "unavailable", None)
    return check() if callable(check) else None


def _held_by(records_path: Path, p: RunPlan) -> str:
    held = records.claimed(records_path).get(p.config_hash)
    if held is None:
        return "recorded"
    until = time.strftime("%H:%M:%S", time.localtime(float(held["expires"])))
    return f"running in job {held.get('owner')} (its lease, renewed while it lives, runs to {until})"


def share_groups(plans: list[RunPlan]) -> list[list[RunPlan]]:
    """Plans that differ only in their quant, on a task that shares its prefill (`Task.shares_prefill`), in one
    group each: they run together, one prefill per prompt (docs/design.md, "Sharing the
    prefill"). Order kept: a group stands where its first plan stood."""
    groups: dict[tuple, list[RunPlan]] = {}
    for p in plans:
        shared = getattr(p.task_obj, "shares_prefill", False)
        key = (p.model, p.task, id(p.task_obj), repr(p.task_cfg)) if shared else (id(p),)
        groups.setdefault(key, []).append(p)
    return list(groups.values())


def main(cfg: DictConfig, session: Session | None = None) -> list[dict[str, Any]]:
    """Plan, skip what is recorded, run the rest on one loaded model, append records, print the table."""
    import torch

    from akvq.runner import preflight

    session = session or Session()
    plans = plan(cfg, session)  # validates threads too: set them only after
    torch.set_num_threads(choose_threads(cfg.get("threads")))
    records_path, wandb_dir = resolve_paths(cfg)
    done = {} if cfg.get("redo") else records.completed(records_path)
    todo = [p for p in plans if p.config_hash not in done]
    for p in [p for p in todo if _missing(p.policy)]:  # a peer whose optional package is absent
        log.warning("skip %s | %s | %s: %s", p.model, p.task, p.quant, _missing(p.policy))
        todo.remove(p)
        plans.remove(p)
    for p in plans:
        if p.config_hash in done:
            stale = is_stale(done[p.config_hash])
            log.log(logging.WARNING if stale else logging.INFO,
                    "skip %s | %s | %s: recorded (config_hash %s, code %s%s; redo=true reruns it)",
                    p.model, p.task, p.quant, p.config_hash, done[p.config_hash].get("git_rev"),
                    f", now {records.git_rev()}" if stale else "")  # fmt: skip
    if todo:
        preflight.verify(todo, cfg)  # weights, datasets, records, memory: one line before any model loads
    new: dict[str, dict[str, Any]] = {}
    loaded = None
    lease = float(cfg.get("claim_lease_s") or records.LEASE_S)
    from tqdm.auto import tqdm

    groups = share_groups(todo) if cfg.get("share_prefill", True) else [[p] for p in todo]
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=len(todo) < 2, file=sys.stderr)
    for group in groups:
        with contextlib.ExitStack() as held:
            claimed = []
            for p in group:
                # A claim with a lease: a concurrent identical sweep skips this config while we run it.
                claim = records.try_claim(
                    records_path, p.config_hash, lease, skip_recorded=not cfg.get("redo")
                )
                if claim is None:
                    log.info("skip %s | %s | %s: %s", p.model, p.task, p.quant, _held_by(records_path, p))
                    bar.update(1)
                    continue
                held.enter_context(claim)
                claimed.append(p)
            if not claimed:
                continue
            if loaded is None:
                log.info("loading model %s", claimed[0].model)
                t0 = time.perf_counter()
                loaded = session.model(dict(claimed[0].config["model"]))
                log.info("model loaded in %.1fs", time.perf_counter() - t0)
                if claimed[0].needs_images and not getattr(
                    loaded, "is_vision", True
                ):  # family known only after loading
                    raise ConfigError(text_only_error(claimed[0].task, claimed[0].model, loaded.family))
            bar.set_postfix_str(",".join(p.quant for p in claimed))
            if len(claimed) > 1:
                log.info("run %s | %s | %s (one shared prefill per prompt)", claimed[0].model,
                         claimed[0].task, ", ".join(p.quant for p in claimed))  # fmt: skip
            else:
                log.info("run %s | %s | %s", claimed[0].model, claimed[0].task, claimed[0].quant)
            partials = [partial_path(records_path, p.config_hash) for p in claimed]  # MileBench appends here
            trackers = [
                tracking.start(cfg.get("wandb") or {}, f"{p.model}|{p.task}|{p.quant}", p.config, wandb_dir)
                for p in claimed
            ]
            try:
                measured = execute(claimed, loaded, int(cfg.get("seed") or 0), partials)
                recs = [record(p, m, records_path) for p, m in zip(claimed, measured, strict=True)]
                for tracker, rec in zip(trackers, recs, strict=True):
                    tracker.log(tracked(rec))
                    tracker.log_samples(rec.get("details"))
            finally:
                for tracker in trackers:
                    tracker.finish()
            for p, rec, partial in zip(claimed, recs, partials, strict=True):
                records.append_record(records_path, rec)
                partial.unlink(missing_ok=True)
                new[p.config_hash] = rec
                log.info("recorded %s -> %s", p.quant, records_path)
                bar.update(1)
    bar.close()
    rows = [r for p in plans if (r := new.get(p.config_hash) or done.get(p.config_hash))]
    print(format_table(rows))
    return rows


__all__ = [
    "CONFIG_DIR",
    "RunPlan",
    "Session",
    "available",
    "format_table",
    "main",
    "plan",
    "plan_sweep",
    "quant_names",
]
