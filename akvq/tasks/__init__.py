"""Task registry: names resolve lazily so a task's heavy imports (lmms-eval) load only when used."""

from __future__ import annotations

import importlib
from typing import Any

from akvq.errors import ConfigError
from akvq.tasks.base import Task, TaskResult

_FIXED = {
    "ppl": "akvq.tasks.fidelity:PerplexityTask",
    "passkey": "akvq.tasks.fidelity:PasskeyTask",
    "agreement": "akvq.tasks.fidelity:AgreementTask",
    "milebench": "akvq.tasks.milebench:MileBenchTask",
    "synthbench": "akvq.tasks.synthbench:SynthBenchTask",
}
_PREFIXES = {
    "milebench/": "akvq.tasks.milebench:MileBenchTask",
    "synthbench/": "akvq.tasks.synthbench:SynthBenchTask",
    "lmms/": "akvq.tasks.lmms_task:LmmsTask",
}
_ALIASES = {"mmmu": "lmms/mmmu_val"}


def _load(path: str) -> type[Task]:
    mod, cls = path.split(":")
    return getattr(importlib.import_module(mod), cls)


def resolve_name(name: str) -> str:
    return _ALIASES.get(name, name)


def task_class(name: str) -> type[Task]:
    """The Task class a task name resolves to (the registry above is the one place tasks are listed)."""
    name = resolve_name(name)
    if name in _FIXED:
        return _load(_FIXED[name])
    for prefix, path in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return _load(path)
    raise ConfigError(
        f"unknown task {name!r}; known: {sorted(_FIXED)} + {sorted(_ALIASES)} + 'milebench/<Dataset>' + 'lmms/<task>'"
    )


def get_task(name: str, cfg: Any = None) -> Task:
    return task_class(name)(resolve_name(name), cfg)


def needs_images(task: Any) -> bool:
    """Whether a task feeds images: its class says so (`Task.needs_images`), the one place this is decided."""
    return bool(getattr(task, "needs_images", False))


__all__ = ["Task", "TaskResult", "get_task", "needs_images", "resolve_name", "task_class"]
