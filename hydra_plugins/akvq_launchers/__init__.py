"""akvq's Hydra launchers (Hydra accepts launcher classes only from the `hydra_plugins` package).

`LocalLauncher` is Hydra's basic launcher and `SlurmLauncher` hydra-submitit-launcher's, each with akvq's
pre-flight of every job before any starts and a summary of all jobs at the end; the logic is in
`akvq.runner.launch`, the checks in `akvq.preflight`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from akvq.runner.launch import check_sweep, finish, label, labels, wait_for

try:  # the [slurm] extra; without it local sweeps still work (run.py refuses hydra/launcher=submitit_slurm)
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
except ModuleNotFoundError:
    submitit_launcher = None

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


class LocalLauncher(BasicLauncher):
    """Hydra's basic launcher (jobs one after another in this process) with pre-flight and the summary."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        todo = check_sweep(self, job_overrides, slurm=False)
        if not todo:
            return []
        chosen = [job_overrides[i] for i in todo]
        returns = super().launch(chosen, initial_job_idx)
        return finish(returns, labels(chosen))


if submitit_launcher is not None:

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """hydra-submitit-launcher's SLURM launcher with pre-flight, a dry run, and a wait that cannot hang."""

        def __init__(self, **params: Any) -> None:
            super().__init__(**params)
            # `gres` names the GPUs itself; `--gpus-per-node` beside it would ask twice. 0 GPUs: no flag at all.
            if self.params.get("gres") or not self.params.get("gpus_per_node"):
                self.params["gpus_per_node"] = None
            # The job unpickles this launcher on its node: make this checkout importable there, wherever sbatch runs.
            self.params["setup"] = [
                f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",
                *(self.params.get("setup") or []),
            ]

        def executor(self) -> Any:
            """The submitit executor with this launcher's parameters (as hydra-submitit-launcher builds it)."""
            import submitit

            init = {
                "folder": self.params["submitit_folder"],
                "slurm_max_num_timeout": self.params["max_num_timeout"],
            }
            executor = submitit.AutoExecutor(cluster="slurm", **init)
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(
                **{
                    k if k in base else f"slurm_{k}": v
                    for k, v in self.params.items()
                    if k not in ("submitit_folder", "max_num_timeout")
                }
            )
            return executor

        def sbatch_preview(self, n_jobs: int) -> str:
            from submitit.slurm.slurm import _make_sbatch_string

            ex = self.executor()._executor
            params = dict(ex.parameters, map_count=n_jobs)
            return _make_sbatch_string(
                command="<python -m submitit.core._submit ...>", folder=ex.folder, **params
            )

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            assert self.config is not None
            todo = check_sweep(self, job_overrides, slurm=True)
            if todo is None:
                print("sbatch script of the array:\n" + self.sbatch_preview(max(1, len(job_overrides))))
                return []
            if not todo:
                return []
            chosen = [list(job_overrides[i]) for i in todo]
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            args = [
                (
                    o,
                    "hydra.sweep.dir",
                    initial_job_idx + i,
                    f"job_id_for_{initial_job_idx + i}",
                    Singleton.get_state(),
                )
                for i, o in zip(todo, chosen, strict=True)
            ]
            for (_, _, idx, _, _), o in zip(args, chosen, strict=True):
                log.info("\t#%d : %s", idx, label(o))
            jobs = self.executor().map_array(self, *zip(*args, strict=True))
            array_id = jobs[0].job_id.split("_")[0]
            print(
                f"submitted SLURM array {array_id} ({len(jobs)} jobs); logs in {self.params['submitit_folder']}"
            )
            if not (self.config.get("slurm") or {}).get("wait", True):
                print(
                    f"slurm.wait=false: not waiting; follow with `squeue -j {array_id}`, results go to the records"
                )
                return []
            return finish(wait_for(jobs, chosen), labels(chosen))


__all__ = ["LocalLauncher"] + (["SlurmLauncher"] if submitit_launcher is not None else [])
