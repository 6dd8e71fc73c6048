"""What every task returns, so the runner can write one record shape for all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskResult:
    metrics: dict[str, float]
    kv_bytes: int | None = None  # cache bytes at the end of the longest sample
    kv_effective_bits: float | None = None
    num_tokens: int = 0  # tokens generated or scored, for tokens/s
    details: list[dict[str, Any]] = field(default_factory=list)


class Task:
    """A task is constructed from its config and run once per (model, policy)."""

    name: str = "task"
    needs_images: bool = False  # True: the runner refuses text-only models before loading
    primary_metric: str | None = None  # the one number tables show; a config's `primary_metric` overrides it

    def __init__(self, name: str, cfg: Any = None):
        self.name = name
        self.cfg = cfg if cfg is not None else {}

    def validate(self) -> None:
        """Check data paths and options before any model loads."""

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        raise NotImplementedError


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a key from a dict or DictConfig alike."""
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        v = cfg.get(key, default)
        return default if v is None else v
    return getattr(cfg, key, default)
