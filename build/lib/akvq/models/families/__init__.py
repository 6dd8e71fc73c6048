"""The family registry: every module in this package defines one `FAMILY` (a `Family`), found at import.

Adding a family is one file here (plus its model YAMLs); nothing else lists families. `register` also admits
families defined elsewhere (tests register a toy one)."""

from __future__ import annotations

import importlib
import pkgutil

from akvq.models.families.base import IMAGE, VIDEO, Family, TinyBuild

REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    REGISTRY[family.name] = family
    return family


for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "base":
        register(importlib.import_module(f"{__name__}.{_m.name}").FAMILY)

__all__ = ["IMAGE", "REGISTRY", "VIDEO", "Family", "TinyBuild", "register"]
