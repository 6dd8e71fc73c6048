"""What every task returns, so the runner can write one record shape for all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class TaskResult:
    """What a task measured; the runner turns it into a record.

    `kv_bytes`, the one meaning in every task's record: the bytes the KV cache of one sequence holds at the end
    of the longest measured sequence (prompt plus everything decoded into the cache), as
    `cache.memory_report().total_bytes` counts them; a batch of b sequences counts its total over b (left
    padding included). Benchmark points (`akvq.bench`) are not task records: theirs is the whole batch's cache."""

    metrics: dict[str, float]
    kv_bytes: int | None = None  # see the class docstring
    kv_effective_bits: float | None = None
    num_tokens: int = 0  # tokens generated or scored, for tokens/s
    details: list[dict[str, Any]] = field(default_factory=list)
    # this run's own seconds for num_tokens, a shared prefill counted in full (what it would take alone); None:
    # the runner's wall time (a run that shared its prefill then gets no tokens/s)
    seconds: float | None = None


class Task:
    """A task is constructed from its config and run once per (model, policy)."""

    name: str = "task"
    needs_images: bool = False  # True: the runner refuses text-only models before loading
    primary_metric: str | None = None  # the one number tables show; a config's `primary_metric` overrides it
    # The task config's keys -> `akvq.runner.validate` checkers (beside the common name/label/primary_metric/...),
    # for a task the validator has no schema of its own for (a new task declares its keys here).
    config_schema: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, cfg: Any = None):
        self.name = name
        self.cfg = cfg if cfg is not None else {}
        # the task is the one answer to "which metric is the headline" (the runner records it, tables read it)
        self.primary_metric = cfg_get(self.cfg, "primary_metric") or type(self).primary_metric

    def validate(self) -> None:
        """Check data paths and options before any model loads."""

    def data_identity(self) -> dict[str, Any] | None:
        """What data a run computes on, where the config names only where the data lives (a root path): the
        runner hashes it into the run's identity, so two generated roots of different contents are two runs while
        a moved copy of one root is the same run. None: the config alone identifies the data."""
        return None

    # True: `run_shared` computes each prompt's prefill once for all the policies it is given
    shares_prefill: ClassVar[bool] = False

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        raise NotImplementedError

    def run_shared(self, loaded: Any, runs: list[tuple[Any, Any]]) -> list[TaskResult]:
        """`run` for each (policy, config) of `runs`, configs that differ only in where their partial file is;
        a task with `shares_prefill` does the prefill once for all of them."""
        return [self.run(loaded, policy, cfg) for policy, cfg in runs]


class SharedPrefillTask(Task):
    """A task written once, for several policies off one prefill per prompt (`run_shared`); `run` is that with
    one policy (MileBench/SynthBench, the fidelity tasks)."""

    shares_prefill = True

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        return self.run_shared(loaded, [(policy, cfg if cfg is not None else self.cfg)])[0]

    def run_shared(self, loaded: Any, runs: list[tuple[Any, Any]]) -> list[TaskResult]:
        raise NotImplementedError


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a key from a dict or DictConfig alike."""
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        v = cfg.get(key, default)
        return default if v is None else v
    return getattr(cfg, key, default)
