"""Drives runs: validate the whole config, load the model once, run the task per quant config, record each run.

`run.py` hands the composed Hydra config to `main`. One process runs the chosen `quant` plus the names in
`compare` on the same loaded model (the embedded default: akvq next to fp16 and kivi2), skipping every run
whose config hash already has a record unless `redo=true`, so a killed sweep resumes where it stopped.
Everything that can be wrong with a config is checked in `plan` before any weights load.

The hooks `load_model`, `validate_model`, `get_task` and `make_policy` are module functions so tests can
swap in fakes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from akvq import records, tracking
from akvq.errors import ConfigError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"

# Families whose models take images; everything else is text-only.
VLM_FAMILIES = frozenset({"llava", "llava_next", "qwen2_vl", "qwen2_5_vl"})
# Tasks that feed images; a text-only model cannot run them.
IMAGE_TASK_PREFIXES = ("milebench", "mmmu", "lmms/")
DETAILS_MAX_BYTES = 200_000  # larger task details go to a sidecar file next to the records


# ---------------------------------------------------------------- hooks (real implementations, fakes in tests)


def validate_model(model_cfg: dict[str, Any]) -> None:
    """Check a model config without loading weights (H2's `validate_spec`)."""
    from akvq.models import validate_spec

    validate_spec(model_spec(model_cfg))


_LAST_MODEL: dict[str, Any] = {}


def load_model(model_cfg: dict[str, Any]) -> Any:
    """Load a model, reusing the last one when the next job of a local sweep asks for the same config (Hydra's
    basic launcher runs jobs in one process; tasks also share the full-precision prefill across policies)."""
    import json

    from akvq.models import load_model as _load

    key = json.dumps(model_cfg, sort_keys=True, default=str)
    if key not in _LAST_MODEL:
        _LAST_MODEL.clear()
        _LAST_MODEL[key] = _load(model_spec(model_cfg))
    return _LAST_MODEL[key]


def model_spec(model_cfg: dict[str, Any]) -> Any:
    """ModelSpec from a model YAML; keys the dataclass does not know are a ConfigError, not silently dropped."""
    from akvq.models import ModelSpec

    return ModelSpec.from_dict(dict(model_cfg))


def get_task(name: str, task_cfg: DictConfig) -> Any:
    from akvq.tasks import get_task as _get

    return _get(name, task_cfg)


def make_policy(name: str, **fields: Any) -> Any:
    from akvq.policies import make_policy as _make

    return _make(name, **fields)


# ---------------------------------------------------------------- planning: everything checked before loading


@dataclass
class RunPlan:
    """One (model, task, quant) run: its names, the config stored in its record, and that config's hash."""

    model: str
    task: str
    quant: str
    quant_cfg: dict[str, Any]
    task_cfg: DictConfig
    config: dict[str, Any]
    config_hash: str
    task_obj: Any = None
    policy: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def available(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Config names in a group (for error messages): `configs/<group>/**.yaml` without the suffix."""
    root = config_dir / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def load_quant(name: str, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """A quant config by name, with Hydra's `defaults: [other, _self_]` resolved the way Hydra does it."""
    return copy.deepcopy(_load_quant(name, config_dir))


@cache
def _load_quant(name: str, config_dir: Path) -> dict[str, Any]:
    path = config_dir / "quant" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown quant config {name!r}; available: {', '.join(available('quant', config_dir))}"
        )
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(node, dict)
    defaults = node.pop("defaults", None) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    out: dict[str, Any] = {}
    for d in defaults:
        out.update(node if d == "_self_" else _load_quant(str(d), config_dir))
    return out


def hydra_info(cfg: DictConfig) -> tuple[dict[str, Any], bool, list[str]]:
    """(group choices, is multirun, task overrides) from a live Hydra run or a composed `cfg.hydra`."""
    hc: Any = None
    if "hydra" in cfg:
        hc = cfg.hydra
    else:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hc = HydraConfig.get()
    if hc is None:
        return {}, False, []
    choices = OmegaConf.to_container(hc.runtime.choices) if "runtime" in hc else {}
    mode = str(hc.get("mode", ""))
    overrides = list(hc.overrides.task) if "overrides" in hc else []
    return dict(choices or {}), mode.endswith("MULTIRUN"), overrides


def quant_names(cfg: DictConfig) -> tuple[list[str], str]:
    """(quant configs this process runs, the chosen one): `compare` then the chosen `quant`, without repeats.

    In a multirun sweep `compare` is ignored unless given on the command line: each job runs its own quant."""
    choices, multirun, overrides = hydra_info(cfg)
    main = str(choices.get("quant") or cfg.get("quant_name") or cfg.quant.get("policy"))
    compare = list(cfg.get("compare") or [])
    explicit = any(o.lstrip("+~").startswith("compare") for o in overrides)
    if multirun and not explicit:
        compare = []
    names: list[str] = []
    for n in [*compare, main]:
        if str(n) not in names:
            names.append(str(n))
    return names, main


def quant_label(name: str, qcfg: dict[str, Any]) -> str:
    """`akvq` for the config as written, `akvq[bits=4]` when command-line overrides changed its fields."""
    try:
        ref = load_quant(name)
    except ConfigError:
        return name
    diff = [f"{k}={v}" for k, v in qcfg.items() if k not in ref or ref[k] != v]
    return f"{name}[{','.join(diff)}]" if diff else name


def task_label(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The task's name in records and tables: the config's `label`, else `name/dataset`, else the config file's
    name (`ppl_quick`) when its `name:` was not overridden, else the registry name."""
    t = cfg.task
    if t.get("label"):
        return str(t.label)
    if t.get("dataset") and "/" not in str(t.name):
        return f"{t.name}/{t.dataset}"
    choice = choices.get("task")
    if choice and _task_file_name(str(choice)) == t.name:
        return str(choice)
    return str(t.name)


@cache
def _task_file_name(choice: str) -> str | None:
    path = CONFIG_DIR / "task" / f"{choice}.yaml"
    return OmegaConf.load(path).get("name") if path.is_file() else None


def model_is_vlm(model_cfg: dict[str, Any]) -> bool:
    fam = str(model_cfg.get("family") or model_cfg.get("tiny_kind") or "")
    return fam in VLM_FAMILIES


def task_needs_images(task_obj: Any, task_cfg: DictConfig) -> bool:
    flag = getattr(task_obj, "needs_images", None)
    if flag is not None:
        return bool(flag)
    if task_cfg.get("modality") is not None:
        return str(task_cfg.modality) in ("image", "images", "multimodal", "vision")
    return str(task_cfg.name).startswith(IMAGE_TASK_PREFIXES)


def plan(cfg: DictConfig, check_data: bool = True) -> list[RunPlan]:
    """Validate every part of the config and build the run list; raises ConfigError before any model loads.

    Order: quant configs and their policy fields, then the model spec, then the task and the model/task pair,
    then (with `check_data`) the task's own data checks."""
    for key in ("model", "task", "quant"):
        if key not in cfg or cfg[key] is None:
            raise ConfigError(f"config has no {key!r} group; pick one of: {', '.join(available(key))}")
    choices, _, _ = hydra_info(cfg)
    base = {k: _plain(cfg[k]) for k in cfg if k != "hydra"}
    for key in records.DATA_KEYS:  # `milebench_root=DIR` on the command line reaches the task config
        if base.get(key) is not None and isinstance(base["task"], dict) and base["task"].get(key, 0) is None:
            base["task"][key] = base[key]

    quants = []  # (label, quant config, policy)
    names, main = quant_names(cfg)
    for qname in names:
        qcfg = dict(base["quant"]) if qname == main else load_quant(qname)
        label = quant_label(qname, qcfg) if qname == main else qname
        if "policy" not in qcfg:
            raise ConfigError(f"quant config {qname!r} has no 'policy:' key")
        fields = {k: v for k, v in qcfg.items() if k != "policy"}
        try:
            policy = make_policy(str(qcfg["policy"]), **fields)  # ConfigError on bad names, fields, bits
        except ConfigError as e:
            raise ConfigError(f"quant={qname}: {e}") from e
        quants.append((label, qcfg, policy))

    model_cfg = dict(base["model"])
    model_name = str(model_cfg.get("name") or choices.get("model"))
    validate_model(model_cfg)

    task_cfg = OmegaConf.create(base["task"])
    if not task_cfg.get("name"):
        raise ConfigError(f"task config {choices.get('task')!r} has no 'name:' (the task registry name)")
    task = task_label(cfg, choices)
    try:
        task_obj = get_task(str(task_cfg.name), task_cfg)
    except ConfigError:
        raise
    except (KeyError, ValueError) as e:
        raise ConfigError(f"task {task_cfg.name!r}: {e}") from e
    if task_needs_images(task_obj, task_cfg) and not model_is_vlm(model_cfg):
        raise ConfigError(
            f"task {task!r} feeds images but model {model_name!r} (family {model_cfg.get('family')!r}) is "
            f"text-only; use a vision-language model (e.g. model=llava, model=qwen2-vl-7b, model=tiny-llava)"
        )
    if check_data and hasattr(task_obj, "validate"):
        task_obj.validate()  # data paths and options (MissingDataError says what to download)

    plans = []
    for label, qcfg, policy in quants:
        run_cfg = {k: v for k, v in base.items() if k != "compare"}
        run_cfg["quant"] = qcfg
        run_cfg["names"] = {"model": model_name, "task": task, "quant": label}
        run_cfg = records.redact(run_cfg)
        plans.append(
            RunPlan(
                model=model_name,
                task=task,
                quant=label,
                quant_cfg=qcfg,
                task_cfg=task_cfg,
                config=run_cfg,
                config_hash=records.config_hash(run_cfg),
                task_obj=task_obj,
                policy=policy,
            )
        )
    return plans


# ---------------------------------------------------------------- measuring


@cache
def git_rev() -> str:
    """Short commit of the checkout, `+dirty` when it has changes; `unknown` outside git or before a commit."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_device(loaded: Any) -> str:
    """`cuda` when any weight is on a GPU, else `cpu` (device_map may spread a model over several GPUs)."""
    model = getattr(loaded, "model", None)
    try:
        devs = {p.device.type for p in model.parameters()} if model is not None else set()
    except Exception:  # noqa: BLE001 - fakes and odd wrappers
        devs = set()
    return "cuda" if "cuda" in devs else "cpu"


def describe_device(kind: str) -> str:
    import torch

    if kind == "cuda" and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"cuda {torch.cuda.get_device_name(0)}" + (f" x{n}" if n > 1 else "")
    return f"cpu ({torch.get_num_threads()} threads)"


def reset_peak(kind: str) -> None:
    if kind == "cuda":
        import torch

        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def peak_memory(kind: str) -> int:
    """GPU: max allocated bytes since the run started, summed over GPUs. CPU: the process's peak RSS so far
    (includes the loaded model; RSS cannot be reset between runs of one process)."""
    if kind == "cuda":
        import torch

        return int(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def primary_metric(task_cfg: DictConfig, task_obj: Any, metrics: dict[str, Any]) -> str | None:
    """The one number a table shows for a task: config's `primary_metric`, the task's, else the first number."""
    name = task_cfg.get("primary_metric") or getattr(task_obj, "primary_metric", None)
    if name and name in metrics:
        return str(name)
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            return str(k)
    return None


# ---------------------------------------------------------------- running


def execute(p: RunPlan, loaded: Any, cfg: DictConfig, records_path: Path, wandb_dir: Path) -> dict[str, Any]:
    """Run one plan on the loaded model and return its record (not yet written)."""
    import torch

    kind = model_device(loaded)
    seed = int(cfg.get("seed") or 0)
    torch.manual_seed(seed)
    tracker = tracking.start(cfg.get("wandb") or {}, f"{p.model}|{p.task}|{p.quant}", p.config, wandb_dir)
    try:
        reset_peak(kind)
        t0 = time.perf_counter()
        result = p.task_obj.run(loaded, p.policy, p.task_cfg)
        if kind == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    except BaseException:
        tracker.finish()
        raise
    metrics = records.to_json(dict(_get(result, "metrics") or {}))
    num_tokens = _get(result, "num_tokens")
    rec: dict[str, Any] = {
        "model": p.model,
        "task": p.task,
        "quant": p.quant,
        "metrics": metrics,
        "kv_effective_bits": _num(_get(result, "kv_effective_bits")),
        "kv_bytes": _num(_get(result, "kv_bytes")),
        "peak_memory_bytes": peak_memory(kind),
        "tokens_per_second": (num_tokens / wall) if num_tokens and wall > 0 else None,
        "wall_seconds": wall,
        "config": p.config,
        "config_hash": p.config_hash,
        "git_rev": git_rev(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": describe_device(kind),
        "num_tokens": num_tokens,
        "primary_metric": primary_metric(p.task_cfg, p.task_obj, metrics),
    }
    details = _get(result, "details")
    if details:
        rec.update(details_entry(details, p.config_hash, records_path))
    tracker.log(
        {
            k: rec[k]
            for k in (
                "metrics",
                "kv_effective_bits",
                "kv_bytes",
                "peak_memory_bytes",
                "tokens_per_second",
                "wall_seconds",
            )
            if rec[k] is not None
        }
    )
    tracker.finish()
    return rec


def _num(x: Any) -> float | int | None:
    if x is None:
        return None
    x = x.item() if hasattr(x, "item") else x
    return x if isinstance(x, int) else float(x)


def details_entry(details: Any, chash: str, records_path: Path) -> dict[str, Any]:
    """Small details go in the record; large ones to `<records dir>/details/<hash>.json`, linked by path."""
    import json

    data = records.to_json(details)
    blob = json.dumps(data)
    if len(blob) <= DETAILS_MAX_BYTES:
        return {"details": data}
    out = records_path.parent / "details" / f"{chash}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(blob)
    os.replace(tmp, out)
    return {"details_path": os.path.relpath(out, records_path.parent)}


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


def main(cfg: DictConfig) -> list[dict[str, Any]]:
    """Plan, skip what is recorded, run the rest on one loaded model, append records, print the table."""
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    plans = plan(cfg)
    records_path, wandb_dir = resolve_paths(cfg)
    done = {} if cfg.get("redo") else records.completed(records_path)
    todo = [p for p in plans if p.config_hash not in done]
    for p in [p for p in todo if _missing(p.policy)]:  # a peer whose optional package is absent
        log.warning("skip %s | %s | %s: %s", p.model, p.task, p.quant, _missing(p.policy))
        todo.remove(p)
        plans.remove(p)
    for p in plans:
        if p.config_hash in done:
            log.info(
                "skip %s | %s | %s: recorded (config_hash %s; redo=true reruns it)",
                p.model,
                p.task,
                p.quant,
                p.config_hash,
            )
    new: dict[str, dict[str, Any]] = {}
    if todo:
        log.info("loading model %s", plans[0].model)
        t0 = time.perf_counter()
        loaded = load_model(dict(plans[0].config["model"]))
        log.info("model loaded in %.1fs", time.perf_counter() - t0)
        from tqdm.auto import tqdm

        bar = tqdm(todo, desc="runs", unit="run", disable=len(todo) < 2, file=sys.stderr)
        for p in bar:
            bar.set_postfix_str(p.quant)
            log.info("run %s | %s | %s", p.model, p.task, p.quant)
            rec = execute(p, loaded, cfg, records_path, wandb_dir)
            records.append_record(records_path, rec)
            new[p.config_hash] = rec
            log.info("recorded %s -> %s", p.quant, records_path)
    rows = [new.get(p.config_hash) or done[p.config_hash] for p in plans]
    SWEEP_ROWS.extend(rows)
    print(format_table(rows))
    return rows


# ---------------------------------------------------------------- the printed table


def _human_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Small fixed-width tables, one per (model, task): quant, the task's main metric, effective bits, KV bytes,
    peak memory, tokens/s, wall seconds."""
    if not rows:
        return "(no runs)"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]), str(r["task"])), []).append(r)
    return "\n\n".join(_one_table(f"{m} | {t}", g) for (m, t), g in groups.items())


def _one_table(title: str, rows: list[dict[str, Any]]) -> str:
    metric = rows[-1].get("primary_metric") or next(iter(rows[-1].get("metrics") or {"metric": None}))
    head = ["quant", str(metric), "eff. bits", "KV bytes", "peak mem", "tok/s", "wall s"]
    body = []
    for r in rows:
        m = (r.get("metrics") or {}).get(metric)
        body.append(
            [
                r["quant"],
                _fmt(m, ".4g") if isinstance(m, int | float) else str(m if m is not None else "-"),
                _fmt(r.get("kv_effective_bits"), ".2f"),
                _human_bytes(r.get("kv_bytes")),
                _human_bytes(r.get("peak_memory_bytes")),
                _fmt(r.get("tokens_per_second"), ".1f"),
                _fmt(r.get("wall_seconds"), ".1f"),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(cells: list[Any]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([title, line(head), line(["-" * w for w in widths]), *map(line, body)])


# Rows of every job this process ran, for the summary at the end of a local sweep.
SWEEP_ROWS: list[dict[str, Any]] = []


class SweepSummary(Callback):
    """Hydra callback: after a multirun, print one table of every job's rows (local launcher; SLURM jobs run in
    other processes, their rows are in the records)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if len(SWEEP_ROWS) > 1:
            print("\nsweep summary\n" + format_table(SWEEP_ROWS))


__all__ = ["RunPlan", "SweepSummary", "format_table", "load_quant", "main", "plan", "quant_names"]
