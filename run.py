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
    if any(a.lstrip("+~").startswith(("hydra.searchpath", "--config-dir", "-cd")) for a in argv):
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
    problem = unknown_choice(sys.argv[1:])
    if problem:  # before Hydra composes (it would print its own many-line error)
        print(f"ConfigError: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
