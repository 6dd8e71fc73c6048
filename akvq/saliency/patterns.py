"""Per-layer attention patterns (paper Table I): which layers are text-salient (TSA) and which pivot-salient (PSA).

Patterns live in `configs/layer_patterns/<name>.yaml`, shipped from the paper or written by the profiler
(`scripts/profile_layers.py`). A file holds `model`, optional `aliases` (hub ids), `num_layers`, either an
explicit `pattern: [tsa, psa, ...]` or `tsa:` / `psa:` layer indices ("0-1", [0, 1], "all"), a `source`
and `profiled`. Models without a file get all-PSA (the policy's safe default) and a warning that names the
profiler command.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from akvq.errors import ConfigError
from akvq.paths import CONFIG_DIR, write_atomic

log = logging.getLogger(__name__)

PATTERNS_DIR = CONFIG_DIR / "layer_patterns"
ENV_DIRS = "AKVQ_LAYER_PATTERNS"  # extra directories (os.pathsep-separated), searched before the shipped one
LABELS = ("tsa", "psa")
PROFILE_COMMAND = "python scripts/profile_layers.py --model {name} --samples 8 --write-pattern"


@dataclass
class LayerPattern:
    name: str
    pattern: list[str]
    source: str
    profiled: bool
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_indices(spec: Any, num_layers: int) -> list[int]:
    """[0, 1] | "0-1" | "0-1, 5" | "all" | "none" | null -> sorted layer indices."""
    if spec is None:
        return []
    if isinstance(spec, bool):
        raise ConfigError(f"bad layer indices {spec!r}")
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list | tuple):
        return sorted({i for s in spec for i in parse_indices(s, num_layers)})
    text = str(spec).strip().lower()
    if text in ("", "none", "[]"):
        return []
    if text == "all":
        return list(range(num_layers))
    out: set[int] = set()
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            out.update(range(int(m[1]), int(m[2]) + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise ConfigError(f"bad layer index {part!r} in {spec!r}")
    return sorted(out)


def _search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return [*extra, PATTERNS_DIR]


def _keys(name: str) -> set[str]:
    n = name.strip().rstrip("/").lower()
    return {n, n.rsplit("/", 1)[-1]} if n else set()


@functools.lru_cache(maxsize=32)
def _index(dirs: tuple[str, ...]) -> dict[str, Path]:
    """name/alias (lower case) -> file; earlier directories win."""
    found: dict[str, Path] = {}
    for d in reversed(dirs):
        p = Path(d)
        if not p.is_dir():
            continue
        for f in sorted(p.glob("*.yaml")):
            try:
                node = yaml.safe_load(f.read_text()) or {}
            except yaml.YAMLError:
                continue
            if not isinstance(node, dict):
                continue
            names = [f.stem, str(node.get("model") or ""), *[str(a) for a in node.get("aliases") or []]]
            for n in names:
                for key in _keys(n):
                    found[key] = f
    return found


def find_pattern_file(model_name: str | None) -> Path | None:
    if not model_name:
        return None
    idx = _index(tuple(str(d) for d in _search_dirs()))
    for key in sorted(_keys(model_name), key=len, reverse=True):
        if key in idx:
            return idx[key]
    return None


def parse_pattern(node: dict[str, Any], num_layers: int, where: str = "layer pattern") -> list[str]:
    """Per-layer labels from a pattern mapping, checked against the model's layer count."""
    declared = node.get("num_layers")
    if declared is not None and int(declared) != num_layers:
        raise ConfigError(f"{where} is for {declared} layers but the model has {num_layers}")
    if node.get("pattern") is not None:
        pat = [str(x).lower() for x in node["pattern"]]
        if len(pat) != num_layers:
            raise ConfigError(f"{where}: `pattern` has {len(pat)} entries, model has {num_layers} layers")
    else:
        tsa = set(parse_indices(node.get("tsa"), num_layers))
        psa = set(parse_indices(node.get("psa"), num_layers)) if node.get("psa") is not None else None
        if psa is not None and tsa & psa:
            raise ConfigError(f"{where}: layers {sorted(tsa & psa)} are both TSA and PSA")
        pat = ["tsa" if i in tsa else "psa" for i in range(num_layers)]
        if any(i >= num_layers for i in tsa | (psa or set())):
            raise ConfigError(f"{where}: layer index beyond {num_layers - 1}")
    bad = sorted(set(pat) - set(LABELS))
    if bad:
        raise ConfigError(f"{where}: labels must be 'tsa' or 'psa', got {bad}")
    return pat


def load_layer_pattern(model_name: str | None, num_layers: int) -> LayerPattern:
    """The model's LayerPattern, or an unprofiled all-PSA one (with a warning) when no file matches."""
    path = find_pattern_file(model_name)
    if path is None:
        name = model_name or "<model>"
        _warn_once(
            name,
            "no layer pattern for %r: using all-PSA (unprofiled). Profile it on a GPU with `%s`",
            name,
            PROFILE_COMMAND.format(name=_config_name(name)),
        )
        return LayerPattern(
            name=name, pattern=["psa"] * num_layers, source="default: all PSA (no profile)", profiled=False
        )
    node = yaml.safe_load(path.read_text()) or {}
    pat = parse_pattern(node, num_layers, where=str(path))
    profiled = bool(node.get("profiled", True))
    if not profiled:
        _warn_once(
            str(path),
            "layer pattern %s is unprofiled; profile it with `%s`",
            path,
            PROFILE_COMMAND.format(name=_config_name(str(node.get("model") or path.stem))),
        )
    extra = {
        k: v for k, v in node.items() if k not in ("model", "pattern", "tsa", "psa", "source", "profiled")
    }
    return LayerPattern(
        name=str(node.get("model") or path.stem),
        pattern=pat,
        source=str(node.get("source", "")),
        profiled=profiled,
        path=str(path),
        extra=extra,
    )


_WARNED: set[str] = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    """One warning per model and process: build_cache runs once per batch."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg, *args)


def layer_pattern(model_name: str | None, num_layers: int) -> list[str]:
    """["tsa" | "psa"] per decoder layer for `model_name` (config name, layer_pattern name or hub id)."""
    return load_layer_pattern(model_name, num_layers).pattern


def _config_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def write_layer_pattern(
    path: str | Path,
    model: str,
    pattern: list[str],
    source: str,
    profiled: bool = True,
    aliases: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a pattern file the policy (and `layer_pattern`) reads; returns its path."""
    bad = sorted(set(pattern) - set(LABELS))
    if bad:
        raise ConfigError(f"layer pattern labels must be 'tsa' or 'psa', got {bad}")
    tsa = [i for i, p in enumerate(pattern) if p == "tsa"]
    node: dict[str, Any] = {
        "model": model,
        "aliases": list(aliases or []),
        "num_layers": len(pattern),
        "source": source,
        "profiled": profiled,
        "tsa": tsa,
        "psa": [i for i, p in enumerate(pattern) if p == "psa"],
        "pattern": list(pattern),
    }
    if extra:
        node.update(extra)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, yaml.safe_dump(node, sort_keys=False, width=120, default_flow_style=None))  # runs read it
    _index.cache_clear()
    return p
