"""Pre-flight: check every job of a sweep in the submitting process, before anything is queued.

A SLURM array of 24 jobs that each die on their node after queueing for hours costs far more than a few seconds
of checks on the login node. For every job this composes the config and checks, without loading a model:
the config itself (`runner.plan`: quant, model spec, task options, task data such as MileBench, the records
path), the weights (local path or the Hugging Face cache; `HF_HUB_OFFLINE` respected, else one quick connect and
one request, no retries), the datasets of lmms-eval tasks (the same way), and the model's size against the memory
the job asks for. It prints one table with OK or the reason per job; the launchers submit nothing unless every
job passes. `preflight=skip` turns it off; `preflight=dry_run` prints the table and what would be submitted
(the sbatch resources) and stops.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from akvq.errors import ConfigError, MissingDataError, UnsupportedModelError

log = logging.getLogger(__name__)

MODES = ("check", "skip", "dry_run")
GiB = 1024**3
# Weights plus activations, the KV cache and the CUDA context: what a job needs beyond the bare weights.
MEMORY_FACTOR = 1.3


@dataclass
class JobCheck:
    """The verdict on one job: `problems` empty means OK; `notes` say what was assumed (e.g. a download)."""

    label: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    weights_bytes: int | None = None
    recorded: bool = False  # every run of the job has a record already

    @property
    def ok(self) -> bool:
        return not self.problems


def mode_of(cfg: DictConfig) -> str:
    mode = str(cfg.get("preflight") or "check")
    if mode not in MODES:
        raise ConfigError(f"preflight={mode!r}; allowed: {', '.join(MODES)}")
    return mode


# ------------------------------------------------------------------------------------------------ weights


def hub_offline() -> bool:
    from akvq.models.sources.hub import _hub_offline

    return _hub_offline()


def _dir_bytes(path: Path) -> int:
    exts = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name.endswith(exts))


def _cached_hub_bytes(repo: str) -> int | None:
    """Bytes of a hub model's weights in the local cache, or None when it is not cached (no network call)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id is "not cached"
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snapshot / index).is_file():
            total = json.loads((snapshot / index).read_text()).get("metadata", {}).get("total_size")
            if total:
                return int(total)
    return _dir_bytes(snapshot)


def check_weights(model_cfg: dict[str, Any]) -> tuple[int | None, str | None]:
    """(bytes of the weights if known, a note) or MissingDataError with the command that gets them."""
    from akvq.models.sources.hub import _looks_local, weights_hint
    from akvq.models.spec import resolve_path

    source = str(model_cfg.get("source") or "hub")
    name = str(model_cfg.get("name"))
    if source == "tiny":
        return 0, None
    from akvq.models import ModelSpec

    spec = ModelSpec.from_dict(dict(model_cfg))
    if source not in ("hub", "gguf"):  # a source with its own files (synth-vlm): it checks them itself
        from akvq.models.sources import SOURCES

        SOURCES[source].check(spec)
        return None, None
    path = resolve_path(spec)  # MissingDataError for a pkg:// path whose package is absent
    if path is None:
        raise ConfigError(f"model {name!r}: no `path`")
    if source == "gguf":
        f = Path(path) / str(model_cfg.get("gguf_file"))
        if not f.is_file():
            raise MissingDataError(f"model {name!r}: GGUF file {f} not found; point model.path at its folder")
        return f.stat().st_size, None
    if _looks_local(path):
        if not Path(path).is_dir():
            raise MissingDataError(f"model {name!r}: local path {path} does not exist. {weights_hint(spec)}")
        return _dir_bytes(Path(path)), None
    size = _cached_hub_bytes(path)
    if size is not None:
        return size, None
    if hub_offline():
        raise MissingDataError(
            f"model {name!r}: {path} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. "
            f"{weights_hint(spec)}"
        )
    problem = hub_problem(path)
    if problem:
        raise MissingDataError(
            f"model {name!r}: {path} is not in the Hugging Face cache and {problem}. {weights_hint(spec)}"
        )
    return None, f"{path} not cached: the job downloads it"


@cache
def hub_problem(repo: str, repo_type: str = "model") -> str | None:
    """Tells a missing repo or an unreachable hub from a download that will work, in one quick connect and one
    request without retries; without it, `from_pretrained` or `load_dataset` on a node without network retries
    for about a minute before failing, after the model has loaded."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from akvq.models.sources import hub

    unreachable = "the hub cannot be reached ({}; set HF_HUB_OFFLINE=1 on machines without network)"
    if not hub.hub_reachable():
        return unreachable.format("no connection to its endpoint")
    try:
        HfApi().repo_info(repo, repo_type=repo_type, timeout=10)
    except GatedRepoError:
        return "it is gated (accept its licence on the hub and log in with `hf auth login`)"
    except RepositoryNotFoundError:
        return f"the hub has no such {repo_type}"
    except Exception as e:  # noqa: BLE001 - no network, proxy, DNS: all mean "cannot download here"
        return unreachable.format(type(e).__name__)
    return None


# ------------------------------------------------------------------------------------------------ datasets


def hf_dataset_cached(repo: str) -> bool:
    """Is a hub dataset in the hub cache (`hf download --repo-type dataset`) or the `datasets` cache?"""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}" / "snapshots"
    if hub.is_dir() and any(hub.iterdir()):
        return True
    ds_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return (ds_cache / repo.replace("/", "___")).is_dir()


@cache
def _lmms_task_yaml(task: str, include_paths: tuple[str, ...]) -> dict[str, Any] | None:
    """The task's YAML config (includes resolved), or None when lmms-eval does not know the task."""
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config
    from loguru import logger

    logger.disable("lmms_eval")  # indexing ~2000 task YAMLs logs a DEBUG line for each it skips
    try:
        manager = TaskManager("ERROR", include_path=list(include_paths) or None, model_name="akvq")
    finally:
        logger.enable("lmms_eval")
    entry = manager.task_index.get(task)
    if entry is None or not str(entry.get("yaml_path", "")).endswith(".yaml"):
        return None
    cfg = load_yaml_config(entry["yaml_path"], mode="simple")
    cfg["__yaml_dir__"] = str(Path(entry["yaml_path"]).parent)
    return dict(cfg)


def check_lmms_dataset(task: str, include_paths: Sequence[str]) -> str | None:
    """MissingDataError when an lmms-eval task's dataset is neither local nor cached while offline."""
    cfg = _lmms_task_yaml(task, tuple(include_paths))
    if cfg is None:
        raise ConfigError(f"lmms-eval has no task {task!r} (include_path={list(include_paths)})")
    path = str(cfg.get("dataset_path") or "")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files:  # a local loader (`dataset_path: parquet`): the files must exist
        items = files.values() if isinstance(files, dict) else [files]
        flat = [f for it in items for f in ([it] if isinstance(it, str) else it)]
        missing = [f for f in flat if not (Path(cfg["__yaml_dir__"]) / f).exists() and not Path(f).exists()]
        if missing:
            raise MissingDataError(f"lmms-eval task {task!r}: data files {missing} not found")
        return None
    if not path or Path(path).exists():
        return None
    if hf_dataset_cached(path):
        return None
    problem = "HF_HUB_OFFLINE is set" if hub_offline() else hub_problem(path, "dataset")
    if problem:
        raise MissingDataError(
            f"lmms-eval task {task!r} needs the hub dataset {path}, which is not in the Hugging Face cache and "
            f"{problem}; on a machine with network run `hf download {path} --repo-type dataset` "
            f"and copy the cache (HF_HOME) to this machine"
        )
    return f"dataset {path} not cached: the job downloads it"


# ------------------------------------------------------------------------------------------------ one job


def memory_budget(cfg: DictConfig, slurm: bool) -> tuple[float | None, str]:
    """(bytes a job may use for the model, what that is) from the SLURM short keys or this machine."""
    s = cfg.get("slurm") or {}
    if slurm:
        gpus = int(s.get("gpus") or 0)
        if gpus and s.get("gpu_mem_gb"):
            return gpus * float(s.gpu_mem_gb) * GiB, f"{gpus} x {s.gpu_mem_gb} GiB GPU (slurm.gpu_mem_gb)"
        if not gpus and s.get("mem_gb"):
            return float(s.mem_gb) * GiB, f"{s.mem_gb} GiB host memory (slurm.mem_gb)"
        return None, "set slurm.gpu_mem_gb to check the model's size against the GPUs"
    import torch

    if torch.cuda.is_available():
        total = sum(
            torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())
        )
        return float(total), "this machine's GPUs"
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's memory"


def check_job(label: str, cfg: DictConfig, slurm: bool = False, session: Any = None) -> JobCheck:
    """Every check for one composed job config; never raises for what a user can fix. `session`: the loaders
    and task factory `plan` validates with (default: the real ones; nothing is loaded)."""
    from akvq import runner

    out = JobCheck(label)
    try:
        plans = runner.plan(cfg, session or runner.Session())
    except (ConfigError, MissingDataError, UnsupportedModelError) as e:
        out.problems.append(_one_line(e))
        return out
    check_plans(out, plans, cfg, slurm)
    return out


def check_plans(out: JobCheck, plans: Sequence[Any], cfg: DictConfig, slurm: bool) -> None:
    """The checks beyond `runner.plan` (which validated the config, the records path included): what is
    recorded, weights, datasets, memory."""
    from akvq import records, runner

    try:
        records_path, _ = runner.resolve_paths(cfg)
        done = records.completed(records_path)
        out.recorded = all(p.config_hash in done for p in plans)
    except ConfigError as e:
        out.problems.append(str(e))
    model_cfg = dict(plans[0].config["model"])
    try:
        out.weights_bytes, note = check_weights(model_cfg)
        if note:
            out.notes.append(note)
    except (ConfigError, MissingDataError) as e:
        out.problems.append(_one_line(e))
    task_name = str(plans[0].task_cfg.get("name"))
    if task_name.startswith("lmms/"):
        try:
            paths = plans[0].task_obj.include_paths()
            note = check_lmms_dataset(task_name.split("/", 1)[1], paths)
            if note:
                out.notes.append(note)
        except (ConfigError, MissingDataError) as e:
            out.problems.append(_one_line(e))
    budget, what = memory_budget(cfg, slurm)
    if out.weights_bytes and budget is not None and out.weights_bytes * MEMORY_FACTOR > budget:
        out.problems.append(
            f"model weights {out.weights_bytes / GiB:.1f} GiB (x{MEMORY_FACTOR} with cache and activations) "
            f"exceed {what}"
        )
    elif budget is None and out.weights_bytes:
        out.notes.append(what)


def verify(plans: Sequence[Any], cfg: DictConfig) -> None:
    """For one run in this process (a single run or a job on its node): raise the first problem, one line,
    before the model loads. Skipped with `preflight=skip`."""
    if mode_of(cfg) == "skip":
        return
    out = JobCheck("this run")
    check_plans(out, plans, cfg, slurm=False)
    if out.problems:
        raise MissingDataError(out.problems[0])


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0]


# ------------------------------------------------------------------------------------------------ the table


def format_checks(checks: Sequence[JobCheck]) -> str:
    """One line per job: number, overrides, size, OK or the reason."""
    head = ("#", "job", "weights", "status")
    rows = [
        (
            str(i),
            c.label,
            "-" if not c.weights_bytes else f"{c.weights_bytes / GiB:.2f} GiB",
            ("OK (recorded)" if c.recorded else "OK") + (f" ({'; '.join(c.notes)})" if c.notes else "")
            if c.ok
            else "; ".join(c.problems),
        )
        for i, c in enumerate(checks)
    ]
    widths = [max(len(r[k]) for r in (head, *rows)) for k in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in (head, *rows)
    ]
    n_bad = sum(not c.ok for c in checks)
    verdict = f"pre-flight: {len(checks) - n_bad}/{len(checks)} jobs OK"
    return "\n".join([verdict, *lines])


def run_checks(jobs: Sequence[tuple[str, DictConfig]], slurm: bool) -> list[JobCheck]:
    return [check_job(label, cfg, slurm) for label, cfg in jobs]


__all__ = [
    "MODES",
    "JobCheck",
    "check_job",
    "check_plans",
    "check_lmms_dataset",
    "check_weights",
    "format_checks",
    "run_checks",
    "verify",
]
