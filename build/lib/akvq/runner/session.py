"""What a process brings to its runs: how models load (and the one it holds), how tasks are built.

Why an object: Hydra's local launcher runs every job of a sweep in one process, and jobs on the same model should
share one load; the entry point (`run.py`) keeps one `Session` and hands it to each job. Tests hand in a Session
with fake loaders instead of patching module functions."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _validate_model(model_cfg: dict[str, Any]) -> None:
    from akvq.models import ModelSpec, validate_spec

    validate_spec(ModelSpec.from_dict(dict(model_cfg)))


def _load_model(model_cfg: dict[str, Any]) -> Any:
    from akvq.models import load_model

    return load_model(dict(model_cfg))


def _get_task(name: str, task_cfg: Any) -> Any:
    from akvq.tasks import get_task

    return get_task(name, task_cfg)


@dataclass
class Session:
    load_model: Callable[[dict[str, Any]], Any] = _load_model
    validate_model: Callable[[dict[str, Any]], None] = _validate_model
    get_task: Callable[[str, Any], Any] = _get_task
    _held: dict[str, Any] = field(default_factory=dict, repr=False)  # model config (JSON) -> the loaded model

    def model(self, model_cfg: dict[str, Any]) -> Any:
        """The loaded model for this config: the one held when the previous job asked for the same one."""
        key = json.dumps(model_cfg, sort_keys=True, default=str)
        if key not in self._held:
            self._held.clear()  # one model at a time
            self._held[key] = self.load_model(model_cfg)
        return self._held[key]
