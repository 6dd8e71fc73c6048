"""Where weights come from: one module per loading source (`hub`, `gguf`, `tiny`, ...), each defining `SOURCE`.

A new source (say, a VLM assembled from a GGUF language model and safetensors vision weights) is one file in this
package: define `SOURCE = Source(name=..., load=..., check=..., family=..., keys=(...))`; it is found at import,
`model.source=<name>` selects it, and its own config keys reach it in `spec.options`. See docs/architecture.md."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from akvq.models.spec import Loaded, ModelSpec


def _no_check(spec: ModelSpec) -> None:
    return None


def _declared_family(spec: ModelSpec) -> str | None:
    return spec.family


@dataclass(frozen=True)
class Source:
    """`check` runs before anything loads (ConfigError / MissingDataError with one clear line); `family` names
    the model's family without loading weights when it can (None: known only after loading)."""

    name: str
    load: Callable[[ModelSpec], Loaded]
    check: Callable[[ModelSpec], None] = _no_check
    family: Callable[[ModelSpec], str | None] = _declared_family
    keys: tuple[str, ...] = ()  # model-config keys of this source only; they arrive in `spec.options`
    # Honours `model.dtype` and `model.device_map` itself (from_pretrained); else load_model applies both.
    places: bool = False


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        register(importlib.import_module(f"{__name__}.{_m.name}").SOURCE)

__all__ = ["SOURCES", "Source", "register"]
