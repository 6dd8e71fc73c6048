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
from omegaconf import DictConfig

from akvq import runner
from akvq.errors import ConfigError, MissingDataError, UnsupportedModelError

# Our configs/hydra/launcher/submitit_slurm.yaml is checked against the plugin's schema of the same name;
# Hydra warns that this matching is deprecated, which is noise for users.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")

log = logging.getLogger("akvq")
# The process's session, handed to every job: the jobs of a local multirun (one process) share a model load.
SESSION = runner.Session()


@hydra.main(
    version_base="1.3", config_path=str(Path(__file__).resolve().parent / "configs"), config_name="config"
)
def main(cfg: DictConfig) -> list[dict[str, Any]]:
    """Returns the rows, which the sweep summary callback collects at the end of each job."""
    try:
        return runner.main(cfg, SESSION)
    except (ConfigError, MissingDataError, UnsupportedModelError) as e:
        # A config or setup problem: say what and how to fix it, without a traceback.
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)


if __name__ == "__main__":
    main()
