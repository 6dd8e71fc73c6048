"""akvq's one entry point. `python run.py` runs the embedded default (SmolLM2-135M, quick perplexity, akvq next to
fp16 and kivi2) and prints a table; `python run.py model=llava task=mmmu quant=akvq` runs one configuration;
`python run.py -m quant=fp16,kivi2,akvq task=ppl` sweeps. Configs live in configs/; see docs/runner.md."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from akvq import runner
from akvq.errors import ConfigError, MissingDataError, UnsupportedModelError

# Our configs/hydra/launcher/submitit_slurm.yaml is checked against the plugin's schema of the same name;
# Hydra warns that this matching is deprecated, which is noise for users.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")

log = logging.getLogger("akvq")
# pandas imports numexpr, which logs "NumExpr defaulting to N threads." at INFO into every run's console and log.
logging.getLogger("numexpr.utils").setLevel(logging.WARNING)
# The process's session, handed to every job: the jobs of a local multirun (one process) share a model load.
SESSION = runner.Session()
CONFIGS = Path(__file__).resolve().parent / "configs"
# Folders under configs/ that other tools read (the benchmark's settings, the TSA/PSA layer patterns): data, not
# groups of run.py, so `--help` leaves them out (and the benchmark's sweeps).
NOT_GROUPS = ("bench", "layer_patterns")
# Overrides that add config folders: a name missing from configs/ may be found there, so the checks stand aside.
ELSEWHERE = ("hydra.searchpath", "--config-dir", "-cd")


def group_options(group: str, configs: Path = CONFIGS) -> list[str]:
    """run.py's choices in one config group (a folder under configs/): what `--help` lists and an unknown
    choice is answered with."""
    options = sorted(f.stem for f in (configs / group).glob("*.yaml"))
    if group == "sweep":  # benchmark run lists (bench_*) are scripts/bench_efficiency.py's, not run.py's
        from akvq.artifacts.sweeps import sweep_names

        options = sweep_names(configs, kind="hydra")
    return options if group.split("/")[0] not in NOT_GROUPS else []


def help_groups() -> str:
    """The `--help` lines `group: option, ...` for run.py's own groups (the template's `${akvq_groups:}`)."""
    lines = []
    for folder in sorted(p for p in CONFIGS.rglob("*") if p.is_dir()):
        group = str(folder.relative_to(CONFIGS))
        if options := group_options(group):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("akvq_groups", help_groups, replace=True)


def unknown_choice(argv: list[str], configs: Path = CONFIGS) -> str | None:
    """`group=name` overrides naming no `configs/group/name.yaml`, as one line with the group's options. Hydra
    says it too, but in many lines, and for a nested name (`task=synthbench/Nope`) it lists the top group's
    options, not the ones that were meant. None when every choice exists, or another search path may hold it."""
    if any(a.lstrip("+~").startswith(ELSEWHERE) for a in argv):
        return None
    for arg in argv:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if (
            arg.startswith("-")
            or not eq
            or "@" in key
            or key.startswith("hydra")
            or not (configs / key).is_dir()
        ):
            continue
        for name in value.split(","):  # a sweep's choices
            if name in ("", "null") or any(c in name for c in "[](){}*$'\""):  # functions, interpolations
                continue
            if not (configs / key / f"{name}.yaml").is_file():
                where = "/".join([key, *name.split("/")[:-1]])
                options = group_options(where, configs) if (configs / where).is_dir() else []
                nested = sorted(d.name for d in (configs / key).iterdir() if d.is_dir())
                allowed = ", ".join(options) or "nothing"
                more = (
                    f" (and the folders {', '.join(f'{key}={d}/...' for d in nested)})"
                    if nested and "/" not in name
                    else ""
                )
                return f"{key}={name}: no such config; {where} has: {allowed}{more}"
    return None


def unknown_key(argv: list[str], configs: Path = CONFIGS) -> str | None:
    """`a.b=value` overrides of a key the composed config does not have (a typo, or a key that another choice of
    the group has: `task.limit` on a task without samples), as one line with the keys there. Hydra says it in five
    lines without them. Composes the config (~0.2 s) only when such overrides are given: once, and once more per
    other choice of a swept group that a key is under. None when every key exists or the check cannot tell."""
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf import DictConfig as Node

    other_primary = ("--config-name", "-cn", "--config-path", "-cp")
    if any(a.lstrip("+~").startswith((*ELSEWHERE, *other_primary)) for a in argv):
        return None
    groups: dict[str, list[str]] = {}  # a group override as given (`quant`, `+sweep`) -> its choices
    extra, keys = [], []
    for arg in argv:
        key, eq, value = arg.partition("=")
        bare = key.lstrip("+~")
        if (
            arg.startswith("-")
            or "@" in key
            or bare.startswith("hydra")
            or (not eq and not key.startswith("~"))
        ):
            continue
        group = (configs / bare).is_dir()
        if not group and not key.startswith(("+", "~")):
            keys.append(bare)  # its value, a list or an interpolation included, is not composed
        elif any(c in value for c in "[](){}*$'\"") or (not group and "," in value):
            return None  # a function or interpolation as a choice, a swept new key: Hydra's parser decides
        elif group:
            groups[key] = value.split(",")
        else:
            extra.append(arg)
    if not keys:
        return None
    base = {g: ch[0] for g, ch in groups.items()}
    variants = [base] + [
        {**base, g: c}
        for g, ch in groups.items()
        if any(k.split(".")[0] == g.lstrip("+~") for k in keys)
        for c in ch[1:]
    ]
    for choice in variants:
        outer = get_gh_backup()  # a caller's Hydra context (a test's compose) is put back as it was
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
                cfg = compose("config", [*(f"{g}={c}" for g, c in choice.items()), *extra], True)
        except Exception:  # noqa: BLE001 - a composition problem of another kind: Hydra reports it
            return None
        finally:
            restore_gh_from_backup(outer)
        for key in keys:
            node, path = cfg, []
            for part in key.split("."):
                if not isinstance(node, Node):
                    break  # into a list or a value: Hydra's parser decides
                if part not in node:
                    top = path[0] if path else None
                    where = ".".join(path) or "the config"
                    if top in cfg.hydra.runtime.choices:
                        where += f" ({top}={cfg.hydra.runtime.choices[top]})"
                    names = [str(k) for k in node if str(k) != "hydra"]
                    near = difflib.get_close_matches(part, names, n=1)
                    hint = f" (did you mean {'.'.join([*path, near[0]])}?)" if near else ""
                    return f"{key}: no such key{hint}; {where} has: {', '.join(names) or 'nothing'}"
                try:
                    node, path = node[part], [*path, part]
                except Exception:  # noqa: BLE001 - an interpolation that does not resolve here
                    break
    return None


def missing_extra(argv: list[str]) -> str | None:
    """A launcher chosen whose package is not installed, as one line with the install command. Hydra would say
    "Unknown plugin class" in a traceback once the sweep has been composed."""
    import importlib

    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and "submitit_slurm" in value.split(","):
            try:
                importlib.import_module("hydra_plugins.hydra_submitit_launcher.submitit_launcher")
            except ImportError as e:
                return (
                    f"hydra/launcher=submitit_slurm: needs hydra-submitit-launcher, which does not import here "
                    f"({e}): pip install -e '.[slurm]' (local sweeps, the default launcher, need nothing more)"
                )
    return None


@hydra.main(
    version_base="1.3", config_path=str(Path(__file__).resolve().parent / "configs"), config_name="config"
)
def main(cfg: DictConfig) -> Any:
    """Returns the rows (a sweep's launcher prints them all at the end), or in a sweep a `JobFailure`, so one
    failing job does not stop the others."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from akvq.runner.launch import job_failure

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return runner.main(cfg, SESSION)
    except (ConfigError, MissingDataError, UnsupportedModelError) as e:
        # A config or setup problem: say what and how to fix it, without a traceback.
        log.error("%s: %s", type(e).__name__, e)
        if multirun:  # the other jobs of the sweep go on; the launcher lists this one as failed
            return job_failure(cfg, e)
        sys.exit(2)
    except Exception as e:
        if not multirun:
            raise
        log.exception("job failed")
        return job_failure(cfg, e)


if __name__ == "__main__":
    problem = unknown_choice(sys.argv[1:]) or missing_extra(sys.argv[1:]) or unknown_key(sys.argv[1:])
    if problem:  # before Hydra composes (it would print its own many-line error)
        print(f"ConfigError: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
