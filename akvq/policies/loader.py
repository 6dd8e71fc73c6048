"""The one way from a method name to a `Policy`: configs/quant/<name>.yaml (Hydra's `defaults:` resolved the way
Hydra resolves them), or a mapping with a `policy:` key, plus field overrides.

The runner, the lmms-eval model, the benchmarks and `make_policy` all come through here, so a config name means
the same method everywhere. Plain PyYAML: the library does not need Hydra."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from akvq.errors import ConfigError
from akvq.paths import CONFIG_DIR
from akvq.policies.base import POLICIES, Policy

log = logging.getLogger(__name__)
QUANT_DIR = CONFIG_DIR / "quant"


def quant_names(quant_dir: Path = QUANT_DIR) -> list[str]:
    """The public method names: configs/quant/*.yaml without the suffix."""
    return sorted(p.stem for p in quant_dir.glob("*.yaml"))


def quant_config(name: str, quant_dir: Path = QUANT_DIR) -> dict[str, Any]:
    """A quant config by name as a fresh dict, with `defaults: [other, _self_]` resolved."""
    return copy.deepcopy(_quant_config(name, quant_dir))


@functools.cache
def _quant_config(name: str, quant_dir: Path) -> dict[str, Any]:
    path = quant_dir / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown quant config {name!r}; available: {', '.join(quant_names(quant_dir))}")
    node = yaml.safe_load(path.read_text()) or {}
    if not isinstance(node, dict):
        raise ConfigError(f"{path} is not a mapping")
    defaults = node.pop("defaults", None) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    out: dict[str, Any] = {}
    for d in defaults:
        out.update(node if d == "_self_" else _quant_config(str(d), quant_dir))
    return out


def policy_from_mapping(cfg: Mapping[str, Any], what: str = "quant config") -> Policy:
    """A policy from `{policy: <method>, <field>: value, ...}`; ConfigError names unknown methods and fields."""
    fields = dict(cfg)
    if "policy" not in fields:
        raise ConfigError(f"{what} has no 'policy:' key (one of {sorted(POLICIES)})")
    method = str(fields.pop("policy"))
    if method not in POLICIES:
        raise ConfigError(f"{what}: unknown quant policy {method!r}; known: {sorted(POLICIES)}")
    cls = POLICIES[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - known
    if unknown:
        raise ConfigError(
            f"{what}: policy {method!r} has no field(s) {sorted(unknown)}; its fields: {sorted(known)}"
        )
    if fields.get("layer_pattern") is not None:
        fields["layer_pattern"] = list(fields["layer_pattern"])
    try:
        return cls(**fields)
    except (TypeError, ConfigError) as e:  # wrong value types from a YAML, impossible settings
        raise ConfigError(f"{what}: {e}") from e


def make_policy(quant: str | Mapping[str, Any], **overrides: Any) -> Policy:
    """`make_policy("kivi2")`, `make_policy("akvq", window=64)` or `make_policy({"policy": "rtn", "bits": 3})`.

    A string is a config name (configs/quant/); a bare method name that is not one (`rtn`, `kivi`) still works
    with a deprecation line, as the method's class defaults."""
    if isinstance(quant, Mapping):
        return policy_from_mapping({**quant, **overrides})
    if (QUANT_DIR / f"{quant}.yaml").is_file():
        return policy_from_mapping({**quant_config(quant), **overrides}, f"quant={quant}")
    if quant in POLICIES:
        _deprecated(quant)
        return policy_from_mapping({"policy": quant, **overrides}, f"policy {quant!r}")
    raise ConfigError(f"unknown quant config {quant!r}; available: {', '.join(quant_names())}")


@functools.cache
def _deprecated(method: str) -> None:
    names = [n for n in quant_names() if _quant_config(n, QUANT_DIR).get("policy") == method]
    log.warning(
        "make_policy(%r): %r is a method class, not a config name; use one of %s, or make_policy({'policy': %r, ...})",
        method,
        method,
        names,
        method,
    )


__all__ = ["QUANT_DIR", "make_policy", "policy_from_mapping", "quant_config", "quant_names"]
