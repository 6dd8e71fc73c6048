"""Drives runs: plan (configs -> run list, all checks before loading), execute (one run, measured), report
(records and tables).

`run.py` hands each composed Hydra config to `main` with the process's `Session`. One process runs the chosen
`quant` plus the names in `compare` on the same loaded model (the embedded default: akvq next to fp16 and kivi2),
skipping every run whose config hash already has a record unless `redo=true`, so a killed sweep resumes where it
stopped."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from akvq import records, tracking
from akvq.errors import ConfigError
from akvq.paths import CONFIG_DIR
from akvq.runner.execute import execute
from akvq.runner.plan import RunPlan, available, plan, plan_sweep, quant_names, text_only_error
from akvq.runner.report import SweepSummary, format_table, record, tracked
from akvq.runner.session import Session

log = logging.getLogger(__name__)


def resolve_paths(cfg: DictConfig) -> tuple[Path, Path]:
    """(records file, W&B dir): relative paths against where run.py started; W&B under the run's output dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    recs = Path(to_absolute_path(str(cfg.get("records") or "results/runs.jsonl")))
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


def main(cfg: DictConfig, session: Session | None = None) -> list[dict[str, Any]]:
    """Plan, skip what is recorded, run the rest on one loaded model, append records, print the table."""
    session = session or Session()
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    plans = plan(cfg, session)
    records_path, wandb_dir = resolve_paths(cfg)
    done = {} if cfg.get("redo") else records.completed(records_path)
    todo = [p for p in plans if p.config_hash not in done]
    for p in [p for p in todo if _missing(p.policy)]:  # a peer whose optional package is absent
        log.warning("skip %s | %s | %s: %s", p.model, p.task, p.quant, _missing(p.policy))
        todo.remove(p)
        plans.remove(p)
    for p in plans:
        if p.config_hash in done:
            log.info("skip %s | %s | %s: recorded (config_hash %s; redo=true reruns it)",
                     p.model, p.task, p.quant, p.config_hash)
    new: dict[str, dict[str, Any]] = {}
    if todo:
        log.info("loading model %s", plans[0].model)
        t0 = time.perf_counter()
        loaded = session.model(dict(plans[0].config["model"]))
        log.info("model loaded in %.1fs", time.perf_counter() - t0)
        if plans[0].needs_images and not getattr(loaded, "is_vision", True):  # family known only after loading
            raise ConfigError(text_only_error(plans[0].task, plans[0].model, loaded.family))
        from tqdm.auto import tqdm

        bar = tqdm(todo, desc="runs", unit="run", disable=len(todo) < 2, file=sys.stderr)
        for p in bar:
            bar.set_postfix_str(p.quant)
            log.info("run %s | %s | %s", p.model, p.task, p.quant)
            tracker = tracking.start(cfg.get("wandb") or {}, f"{p.model}|{p.task}|{p.quant}", p.config, wandb_dir)
            try:
                rec = record(p, execute(p, loaded, int(cfg.get("seed") or 0)), records_path)
                tracker.log(tracked(rec))
            finally:
                tracker.finish()
            records.append_record(records_path, rec)
            new[p.config_hash] = rec
            log.info("recorded %s -> %s", p.quant, records_path)
    rows = [new.get(p.config_hash) or done[p.config_hash] for p in plans]
    print(format_table(rows))
    return rows


__all__ = ["CONFIG_DIR", "RunPlan", "Session", "available", "SweepSummary", "format_table", "main", "plan", "plan_sweep",
           "quant_names"]
