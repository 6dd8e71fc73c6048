"""Configs -> the run list. Everything that can be wrong with a config is found here, before any weights load.

`plan(cfg, session)` returns one `RunPlan` per quant config this process runs (the chosen `quant` plus the names
in `compare`). Nothing here keeps state between calls."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from akvq import records
from akvq.errors import ConfigError
from akvq.paths import CONFIG_DIR
from akvq.policies import policy_from_mapping, quant_config
from akvq.runner.session import Session


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
    needs_images: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def available(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Config names in a group (for error messages): `configs/<group>/**.yaml` without the suffix."""
    root = config_dir / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


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
        ref = quant_config(name)
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


@functools.cache
def _task_file_name(choice: str) -> str | None:
    path = CONFIG_DIR / "task" / f"{choice}.yaml"
    return OmegaConf.load(path).get("name") if path.is_file() else None


def model_is_vlm(model_cfg: dict[str, Any]) -> bool | None:
    """Whether the model takes images, asked of its loading source; None: only the loaded weights can tell."""
    from akvq.models import ModelSpec, is_vlm

    return is_vlm(ModelSpec.from_dict(dict(model_cfg)))


def text_only_error(task: str, model: str, family: Any) -> str:
    return (
        f"task {task!r} feeds images but model {model!r} (family {family!r}) is text-only; use a "
        f"vision-language model (e.g. model=llava, model=qwen2-vl-7b, model=tiny-llava)"
    )


def check_groups(cfg: DictConfig) -> None:
    """The composed config has a model, a task and a quant. Call point for the typed schema check of the whole
    composed config (issue 15: `akvq.runner.validate`), which belongs here: after composition, before loading."""
    for key in ("model", "task", "quant"):
        if key not in cfg or cfg[key] is None:
            raise ConfigError(f"config has no {key!r} group; pick one of: {', '.join(available(key))}")


def plan(cfg: DictConfig, session: Session, check_data: bool = True) -> list[RunPlan]:
    """Validate every part of the config and build the run list; raises ConfigError before any model loads.

    Order: quant configs and their policy fields, then the model spec, then the task and the model/task pair,
    then (with `check_data`) the task's own data checks."""
    check_groups(cfg)
    from akvq.runner.validate import validate

    validate(cfg, check_data, task_data=False)  # types, ranges, unknown keys, lengths vs the model's config
    choices, _, _ = hydra_info(cfg)
    base = {k: _plain(cfg[k]) for k in cfg if k != "hydra"}
    for key in records.DATA_KEYS:  # `milebench_root=DIR` on the command line reaches the task config
        if base.get(key) is not None and isinstance(base["task"], dict) and base["task"].get(key, 0) is None:
            base["task"][key] = base[key]

    quants = []  # (label, quant config, policy)
    names, main = quant_names(cfg)
    for qname in names:
        qcfg = dict(base["quant"]) if qname == main else quant_config(qname)
        label = quant_label(qname, qcfg) if qname == main else qname
        quants.append((label, qcfg, policy_from_mapping(qcfg, f"quant={qname}")))

    model_cfg = dict(base["model"])
    model_name = str(model_cfg.get("name") or choices.get("model"))
    session.validate_model(model_cfg)

    task_cfg = OmegaConf.create(base["task"])
    if not task_cfg.get("name"):
        raise ConfigError(f"task config {choices.get('task')!r} has no 'name:' (the task registry name)")
    task = task_label(cfg, choices)
    try:
        task_obj = session.get_task(str(task_cfg.name), task_cfg)
    except ConfigError:
        raise
    except (KeyError, ValueError) as e:
        raise ConfigError(f"task {task_cfg.name!r}: {e}") from e
    from akvq.tasks import needs_images as task_needs_images

    needs_images = task_needs_images(task_obj)
    if needs_images and model_is_vlm(model_cfg) is False:
        raise ConfigError(text_only_error(task, model_name, model_cfg.get("family")))
    if check_data and hasattr(task_obj, "validate"):
        task_obj.validate()  # data paths and options (MissingDataError says what to download)

    data = task_obj.data_identity() if hasattr(task_obj, "data_identity") else None
    plans = []
    for label, qcfg, policy in quants:
        run_cfg = {k: v for k, v in base.items() if k != "compare"}
        if data is not None:
            run_cfg["data"] = data  # in the hash: which data, where the config says only where it lives
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
                needs_images=needs_images,
            )
        )
    return plans


def plan_sweep(cfgs: list[DictConfig], session: Session) -> list[list[RunPlan]]:
    """Plan every job of a sweep (each raises before anything runs). Call point for the sweep preflight
    (issue 16: `akvq.runner.preflight`), which checks all jobs before a launcher submits any."""
    return [plan(c, session) for c in cfgs]
