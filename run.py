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
# The process's session, handed to every job: the jobs of a local multirun (one process) share a model load.
SESSION = runner.Session()
CONFIGS = Path(__file__).resolve().parent / "configs"
# Folders under configs/ that other tools read (the benchmark's settings, the TSA/PSA layer patterns): data, not
# groups of run.py, so `--help` leaves them out (and the benchmark's sweeps).
NOT_GROUPS = ("bench", "layer_patterns")


def help_groups() -> str:
    """The `--help` lines `group: option, ...` for run.py's own groups (the template's `${akvq_groups:}`)."""
    lines = []
    for folder in sorted(p for p in CONFIGS.rglob("*") if p.is_dir()):
        group = str(folder.relative_to(CONFIGS))
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if group == "sweep":  # benchmark run lists (bench_*) are scripts/bench_efficiency.py's, not run.py's
            from akvq.artifacts.sweeps import sweep_names

            options = sweep_names(CONFIGS, kind="hydra")
        if options and group.split("/")[0] not in NOT_GROUPS:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("akvq_groups", help_groups, replace=True)


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
    main()
