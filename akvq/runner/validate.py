"""Typed, range-checked schemas for every config group, checked before any weights load.

Why: the harness runs unattended (SLURM arrays, configs typed at 2 a.m.); a bad value must cost one clear line
and exit code 2, never a traceback after the model loaded or, worse, a silently wrong record. Every failure
here is a `ConfigError` (or `MissingDataError`) whose message is ONE line: `key=value: what is allowed`.

`validate(cfg)` is the entry point (the runner's plan step and the sweep pre-flight call it): it checks the
top-level keys, the model, the task (per task type), every quant config of the run and the records path, then
reads the model's shape from its config (hub config.json, GGUF metadata, tiny config; never the weights) and
checks lengths, group sizes and layer indices against it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from akvq.cache.cache import READ_PATHS
from akvq.errors import ConfigError, MissingDataError
from akvq.quant.hadamard import is_power_of_two
from akvq.tasks.milebench import DATASETS as MILEBENCH_DATASETS

# ------------------------------------------------------------------------------------------------ value checks


def show(value: Any) -> str:
    """A value as the user would type it on the command line (`true`, `2.0`, `"abc"`, `null`)."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def fail(key: str, value: Any, allowed: str) -> ConfigError:
    text = f"{key}={show(value)}: {allowed}"
    return ConfigError(" ".join(text.split()))  # always one line


@dataclass(frozen=True)
class Check:
    """One key's type and range. `kind` is int, float, bool, str, list or any; bounds are inclusive unless
    `lo_open`; `choices` restricts strings (and ints); `item` checks list elements."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    item: Check | None = None
    min_len: int = 0
    note: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            what = f"one of {list(self.choices)}"
        elif self.kind == "list":
            inner = self.item.allowed() if self.item else "anything"
            what = f"a list of {'>= ' + str(self.min_len) + ' ' if self.min_len else ''}items, each {inner}"
        else:
            what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
                self.kind, "a value"
            )
            lo = None if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
            hi = None if self.hi is None else f"<= {self.hi:g}"
            rng = " and ".join(x for x in (lo, hi) if x)
            if rng:
                what += f" {rng}"
        if self.nullable:
            what += " or null"
        return what + (f" ({self.note})" if self.note else "")

    def __call__(self, key: str, value: Any) -> None:
        if value is None:
            if not self.nullable:
                raise fail(key, value, f"must be {self.allowed()}")
            return
        bad = fail(key, value, f"must be {self.allowed()}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad
        if self.kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise bad
        if self.kind == "float" and not math.isfinite(value):
            raise bad
        if self.kind == "str" and not isinstance(value, str):
            raise bad
        if self.kind == "list":
            if not isinstance(value, list | tuple) or len(value) < self.min_len:
                raise bad
            for i, v in enumerate(value):
                if self.item is not None:
                    self.item(f"{key}[{i}]", v)
            return
        if self.choices is not None and value not in self.choices:
            raise bad
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            raise bad
        if self.hi is not None and value > self.hi:
            raise bad


def Int(lo: int | None = None, hi: int | None = None, **kw: Any) -> Check:  # noqa: N802 - reads like a type
    return Check("int", lo=lo, hi=hi, **kw)


def Float(lo: float | None = None, hi: float | None = None, **kw: Any) -> Check:  # noqa: N802
    return Check("float", lo=lo, hi=hi, **kw)


def Str(choices: tuple[str, ...] | None = None, **kw: Any) -> Check:  # noqa: N802
    return Check("str", choices=choices, **kw)


BOOL = Check("bool")
ANY = Check("any", nullable=True)
OPT_STR = Str(nullable=True)
SEED = Int(0)


def opt(c: Check) -> Check:
    return dataclasses.replace(c, nullable=True)


class OneOf:
    """A value that may take either of two shapes (lmms `limit`: a count or a fraction)."""

    def __init__(self, *checks: Check) -> None:
        self.checks = checks

    def allowed(self) -> str:
        return " or ".join(c.allowed() for c in self.checks)

    def __call__(self, key: str, value: Any) -> None:
        for c in self.checks:
            try:
                c(key, value)
                return
            except ConfigError:
                pass
        raise fail(key, value, f"must be {self.allowed()}")


Checker = Check | OneOf | Callable[[str, Any], None]
Schema = Mapping[str, Checker]


def check_mapping(prefix: str, node: Any, schema: Schema, what: str) -> None:
    """Every key known, every value of its type and range; `prefix` is the dotted path for messages."""
    if not isinstance(node, Mapping):
        raise fail(prefix, node, f"must be a mapping ({what})")
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise fail(full, value, f"unknown key for {what}; known keys: {', '.join(sorted(schema))}")
        schema[key](full, value)


# ------------------------------------------------------------------------------------------------ schemas

WANDB: dict[str, Checker] = {
    "mode": Str(("offline", "online", "disabled")),
    "project": OPT_STR,
    "entity": OPT_STR,
    "group": OPT_STR,
    "dir": OPT_STR,
    "init_timeout": Float(0, 3600, lo_open=True),
    "api_key": Str(nullable=True, note="better: the WANDB_API_KEY environment variable"),
}
SLURM: dict[str, Checker] = {
    "partition": OPT_STR,
    "gpus": Int(0),
    "time": Int(1, note="minutes"),
    "cpus": Int(1),
    "mem_gb": Int(1),
    "account": OPT_STR,
    "gpu_mem_gb": Float(0, lo_open=True, nullable=True),
    "wait": BOOL,
}


def _sub(schema: dict[str, Checker], what: str) -> Checker:
    return lambda key, value: check_mapping(key, value, schema, what)


TOP_LEVEL: dict[str, Checker] = {
    "model": ANY,  # groups are checked by their own schemas below
    "task": ANY,
    "quant": ANY,
    "hydra": ANY,
    "compare": Check("list", item=Str(), nullable=True, note="names of configs/quant/*.yaml"),
    "records": Str(
        nullable=True, note="a .jsonl file; null = results/runs.jsonl"
    ),  # the path itself is checked by check_records
    "redo": BOOL,
    "share_prefill": BOOL,
    "read_path": Str(READ_PATHS, note="cached: the same tokens, faster, more memory"),
    "seed": SEED,
    "threads": Int(1, nullable=True),
    "milebench_root": OPT_STR,
    "synthbench_root": OPT_STR,
    "quant_name": OPT_STR,
    "preflight": Str(("check", "skip", "dry_run")),
    "claim_lease_s": Float(0, lo_open=True, note="seconds a dead sweep job's claim on a config lasts"),
    "wandb": _sub(WANDB, "wandb"),
    "slurm": _sub(SLURM, "slurm"),
}
"""Top-level keys of configs/config.yaml. A new top-level key gets one line here (unknown keys are errors)."""


def model_schema(source: str | None = None) -> dict[str, Checker]:
    """Model keys: `akvq.models.ModelSpec`'s fields with their allowed values, plus the keys the chosen loading
    source declares for itself (`Source.keys`, any value: the source checks them)."""
    from akvq.models.loading import ATTN_IMPLEMENTATIONS, DTYPES
    from akvq.models.registry import FAMILIES
    from akvq.models.sources import SOURCES
    from akvq.models.sources.tiny import kinds
    from akvq.models.spec import ModelSpec

    special: dict[str, Checker] = {
        "name": Str(),
        "source": Str(tuple(SOURCES)),
        "dtype": Str(DTYPES),
        "attn_implementation": Str(ATTN_IMPLEMENTATIONS),
        "trust_remote_code": BOOL,
        "family": Str(tuple(sorted(FAMILIES)), nullable=True),
        "tiny_kind": Str(kinds(), nullable=True),
        "tiny_head_dim": Int(1, nullable=True, note="a power of two"),
        "device_map": ANY,
    }
    out = {
        f.name: special.get(f.name) or _from_annotation(ModelSpec, f.name)
        for f in dataclasses.fields(ModelSpec)
        if f.name != "options"
    }
    extra = SOURCES[source].keys if source in SOURCES else ()
    return {**out, **{k: ANY for k in extra}}


def quant_ranges() -> dict[str, Checker]:
    """Ranges of policy fields by name (the same name means the same thing in every policy)."""
    from akvq.policies.akvq import PIVOT_RULES
    from akvq.policies.base import HP_DTYPES, WINDOW_BITS
    from akvq.quant.uniform import SUPPORTED_BITS

    bits = Int(choices=SUPPORTED_BITS)
    return {
        "policy": Str(),
        "bits": bits,
        "text_bits": bits,
        "k_bits": opt(bits),
        "group_size": Int(1),
        "k_group_tokens": Int(1),
        "residual": Int(1),
        "window": Int(0),
        "window_bits": Int(choices=WINDOW_BITS),
        "k_window": Int(0, nullable=True),
        "sink": Int(0),
        "num_pivots": Int(0),
        "clip_ratio": Float(
            0, 1, lo_open=True, nullable=True, note="null = the paper's default for the bits"
        ),
        "alpha": Float(0, 1),
        "hp_dtype": Str(HP_DTYPES),
        "pivot_rule": Str(PIVOT_RULES),
        "k_axis": Str(("token", "channel")),
        "layer_pattern": Check("list", item=Str(("tsa", "psa")), nullable=True, min_len=1),
        "pivot_layer": Int(nullable=True, note="a decoder layer index, negative counts from the end"),
    }


def quant_schema(policy_name: str) -> dict[str, Checker]:
    """A policy's keys: `policy` plus its dataclass fields, typed from the annotations, ranged by name."""
    from akvq.policies import POLICIES

    cls = POLICIES[policy_name]
    ranges = quant_ranges()
    out: dict[str, Checker] = {"policy": ranges["policy"]}
    for f in dataclasses.fields(cls):
        out[f.name] = ranges.get(f.name) or _from_annotation(cls, f.name)
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A policy class's resolved annotations, once per class (`get_type_hints` re-evaluates every string
    annotation on each call: it was most of a sweep plan's validation time)."""
    return typing.get_type_hints(cls)


def _from_annotation(cls: type, name: str) -> Check:
    """A Check from a dataclass field's annotation (int, float, bool, str, list, Optional of those)."""
    hint = _hints(cls)[name]
    nullable = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        nullable = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Any
    base = typing.get_origin(hint) or hint
    kind = {int: "int", float: "float", bool: "bool", str: "str", list: "list"}.get(base, "any")
    return Check(kind, nullable=nullable or kind == "any")


COMMON_TASK: dict[str, Checker] = {
    "name": Str(),
    "label": OPT_STR,
    "primary_metric": OPT_STR,
    "modality": Str(("text", "image", "images", "multimodal", "vision"), nullable=True),
    "adhoc": BOOL,
}
LENGTH = Int(1)
TASK_SCHEMAS: dict[str, dict[str, Checker]] = {
    "ppl": {
        **COMMON_TASK,
        "prompt_len": LENGTH,
        "cont_len": Int(2, note="the first continuation token is scored from the prefill"),
        "windows": Int(1),
        "bootstrap": Int(0),
        "seed": SEED,
        "chunk": Int(1),
        "replay": BOOL,
    },
    "passkey": {
        **COMMON_TASK,
        "lengths": Check("list", item=Int(64, note="tokens"), min_len=1),
        "trials": Int(1),
        "seed": SEED,
        "gen_len": Int(1),
    },
    "agreement": {**COMMON_TASK, "prompt_len": LENGTH, "gen_len": Int(1), "samples": Int(1)},
    "milebench": {
        **COMMON_TASK,
        "milebench_root": OPT_STR,
        "datasets": Check("list", item=Str(MILEBENCH_DATASETS), nullable=True, min_len=1),
        "dataset": Str(MILEBENCH_DATASETS, nullable=True),
        "limit": Int(1, nullable=True, note="samples per dataset; null = all"),
        "batch_size": Int(1),
        "max_new_tokens": Int(1),
        "max_context_len": Int(1, nullable=True),
        "tokens_per_image": Int(1, nullable=True),
        "chat_template": BOOL,
    },
    "lmms": {
        **COMMON_TASK,
        "include_path": ANY,
        "limit": OneOf(Int(1, nullable=True), Float(0, 1, lo_open=True)),
        "batch_size": Int(1),
        "gen_kwargs": ANY,
        "max_new_tokens": Int(1),
        "chat_template": BOOL,
        "seed": SEED,
        "bootstrap_iters": Int(0),
        "log_samples": BOOL,
    },
}
TASK_SCHEMAS["synthbench"] = {
    **{
        k: v
        for k, v in TASK_SCHEMAS["milebench"].items()
        if k not in ("milebench_root", "datasets", "dataset")
    },
    "synthbench_root": OPT_STR,
    "datasets": Check("list", item=Str(), nullable=True, min_len=1),
    "dataset": OPT_STR,
}
"""Task keys per task type (`milebench/<Dataset>` uses `milebench`, `lmms/<task>` uses `lmms`)."""


def task_kind(name: str) -> str:
    from akvq.tasks import resolve_name

    name = resolve_name(name)
    for prefix in ("milebench", "synthbench", "lmms"):
        if name == prefix or name.startswith(prefix + "/"):
            return prefix
    return name


# ------------------------------------------------------------------------------------------------ model shape


@dataclass(frozen=True)
class ModelShape:
    """What the checks need from a model's config: read without loading any weights."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None
    source: str  # where it was read from, for messages


def shape_of_config(config: Any, source: str) -> ModelShape:
    from akvq.models.registry import text_config

    tc = text_config(config)
    heads = int(tc.num_attention_heads)
    kv = int(getattr(tc, "num_key_value_heads", None) or heads)
    hd = int(getattr(tc, "head_dim", None) or tc.hidden_size // heads)
    mp = getattr(tc, "max_position_embeddings", None)
    return ModelShape(int(tc.num_hidden_layers), kv, hd, int(mp) if mp else None, source)


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_metadata(path: str, wanted: set[str]) -> dict[str, Any]:
    """Scalar metadata of a GGUF file, reading the header only (the `gguf` package parses all tensors: 25 s)."""
    with open(path, "rb") as fh:
        buf = fh.read(1 << 20)  # the architecture keys come before the tokenizer arrays
        if buf[:4] != b"GGUF":
            raise ConfigError(f"model.gguf_file={show(path)}: not a GGUF file")
        off = 24  # magic, version (u32), tensor count (u64), metadata count (u64)
        (count,) = struct.unpack_from("<Q", buf, 16)
        out: dict[str, Any] = {}

        def need(n: int) -> None:
            nonlocal buf
            while off + n > len(buf):
                more = fh.read(1 << 20)
                if not more:
                    raise ConfigError(f"model.gguf_file={show(path)}: truncated GGUF header")
                buf += more

        def string() -> str:
            nonlocal off
            need(8)
            (n,) = struct.unpack_from("<Q", buf, off)
            need(8 + n)
            s = buf[off + 8 : off + 8 + n].decode("utf-8", "replace")
            off += 8 + n
            return s

        def value(t: int) -> Any:
            nonlocal off
            if t == 8:
                return string()
            if t == 9:
                need(12)
                et, n = struct.unpack_from("<IQ", buf, off)
                off += 12
                return [value(et) for _ in range(n)] if n < 64 else _skip(et, n)
            fmt = "<" + _GGUF_SCALARS[t]
            need(struct.calcsize(fmt))
            (v,) = struct.unpack_from(fmt, buf, off)
            off += struct.calcsize(fmt)
            return v

        def _skip(et: int, n: int) -> None:
            for _ in range(n):
                value(et)

        for _ in range(count):
            key = string()
            need(4)
            (t,) = struct.unpack_from("<I", buf, off)
            off += 4
            out[key] = value(t)
            if wanted and wanted <= set(out):
                break
        return out


@functools.lru_cache(maxsize=16)
def _gguf_shape(directory: str, file: str) -> ModelShape:
    path = os.path.join(directory, file)
    meta = gguf_metadata(path, set())
    arch = meta.get("general.architecture", "llama")
    heads = int(meta[f"{arch}.attention.head_count"])
    hd = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads
    return ModelShape(
        num_layers=int(meta[f"{arch}.block_count"]),
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(hd),
        max_positions=int(meta[f"{arch}.context_length"]) if f"{arch}.context_length" in meta else None,
        source=f"GGUF metadata of {path}",
    )


def model_shape(spec: Any, need: bool) -> ModelShape | None:
    """The model's shape from its config, never its weights; None when unknown and `need` is false.

    With `need`, weights that cannot be there are a MissingDataError now (the hub is asked at most once)."""
    from akvq.models.sources import hub
    from akvq.models.sources.hub import _hub_offline, _looks_local
    from akvq.models.spec import resolve_path

    if spec.source == "tiny":
        from akvq.models.families import REGISTRY

        build = REGISTRY[spec.tiny_kind or spec.family].tiny  # the config and tokenizer, never the weights
        return shape_of_config(build(spec.tiny_head_dim).config, "tiny config")
    if spec.source not in ("gguf", "hub"):
        return None  # a source this module does not know how to read a config of
    try:
        path = resolve_path(spec)
    except MissingDataError:
        if need:
            raise
        return None
    if spec.source == "gguf":
        if path is None or not os.path.isfile(os.path.join(path, spec.gguf_file)):
            if need:
                raise MissingDataError(
                    f"model.gguf_file={show(spec.gguf_file)}: not found in model.path={show(spec.path)} ({path})"
                )
            return None
        return _gguf_shape(path, spec.gguf_file)
    assert path is not None
    from transformers import AutoConfig

    kw = {"trust_remote_code": True} if spec.trust_remote_code else {}
    if _looks_local(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            if need:
                raise MissingDataError(
                    f"model.path={show(spec.path)}: no config.json in {path}; download the model there "
                    f"(`hf download <hub-id> --local-dir {path}`)"
                )
            return None
        return shape_of_config(AutoConfig.from_pretrained(path, **kw), f"{path}/config.json")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id
        cached = None
    if isinstance(cached, str):
        return shape_of_config(AutoConfig.from_pretrained(os.path.dirname(cached), **kw), cached)
    if not need:
        return None
    if _hub_offline():
        raise MissingDataError(
            f"model.path={show(spec.path)}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"on a machine with network run `hf download {path} --local-dir DIR`, then set model.path=DIR"
        )
    if not hub.hub_reachable():
        raise MissingDataError(
            f"model.path={show(spec.path)}: not in the local Hugging Face cache and the hub is unreachable; "
            f"run `hf download {path} --local-dir DIR` where there is network, then set model.path=DIR"
        )
    from huggingface_hub import hf_hub_download

    try:
        file = hf_hub_download(path, "config.json")
    except Exception as e:  # noqa: BLE001 - gated, missing repo, network error
        raise MissingDataError(
            f"model.path={show(spec.path)}: cannot fetch its config.json ({type(e).__name__})"
        ) from e
    return shape_of_config(AutoConfig.from_pretrained(os.path.dirname(file), **kw), file)


# ------------------------------------------------------------------------------------------------ records


def _writable_dir(folder: Path) -> bool:
    """Whether a file can be made in `folder`, found by making one (gone at once): `os.access` reads permission
    bits, which root passes everywhere, and /proc, a read-only mount or a full quota still refuse."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_records(value: Any, base: Path | None = None) -> Path:
    """The records path: a `.jsonl` file (not a directory, not some other file) we can append to, checked now
    so a run never loses its result at the end. Returns the absolute path."""
    if not isinstance(value, str) or not value.strip():
        raise fail("records", value, "must be a non-empty path to a .jsonl file (default results/runs.jsonl)")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if path.is_dir():
        raise fail("records", value, "is a directory; must be a .jsonl file")
    if path.suffix != ".jsonl":
        raise fail("records", value, "must end in .jsonl (one JSON record per line)")
    if path.exists():
        if not path.is_file():
            raise fail("records", value, "is not a regular file; must be a .jsonl file")
        try:
            with open(path, "ab"):  # opened for appending, nothing written
                pass
        except OSError:
            raise fail("records", value, "is not writable") from None
        with open(path, "rb") as fh:
            first = fh.readline().strip()
        if first:
            try:
                ok = isinstance(json.loads(first), dict)
            except ValueError:
                ok = False
            if not ok:
                raise fail(
                    "records", value, "exists but its first line is not a JSON record; not a records file"
                )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not _writable_dir(parent):
        raise fail("records", value, f"cannot create it: {parent} is not a writable directory")
    if path.parent.exists() and not _writable_dir(path.parent):
        raise fail(
            "records", value, f"its directory {path.parent} is not writable (the lock file lives there)"
        )
    return path


# ------------------------------------------------------------------------------------------------ validate


@dataclass(frozen=True)
class ValidatedConfig:
    """A config that passed every check: the plain config, the quant configs by name, the model's shape
    (None when unknown without data checks) and the absolute records path."""

    config: dict[str, Any]
    quants: dict[str, dict[str, Any]]
    shape: ModelShape | None
    records: Path


def _plain(cfg: Any) -> dict[str, Any]:
    """The config as plain data, without `hydra` (its interpolations only resolve inside a live run)."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def _records_base() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if HydraConfig.initialized():
            return Path(get_original_cwd())
    except Exception:  # noqa: BLE001
        pass
    return Path.cwd()


def check_quant(name: str, qcfg: Any, prefix: str = "quant") -> None:
    from akvq.policies import POLICIES

    if not isinstance(qcfg, Mapping):
        raise fail(prefix, qcfg, "must be a mapping {policy: <name>, <fields>}")
    pol = qcfg.get("policy")
    if pol not in POLICIES:
        raise fail(
            f"{prefix}.policy",
            pol,
            f"unknown quant policy (in quant config {name!r}); known: {sorted(POLICIES)}",
        )
    check_mapping(prefix, qcfg, quant_schema(str(pol)), f"quant policy {pol!r}")


def check_task(task: Any) -> None:
    if not isinstance(task, Mapping):
        raise fail("task", task, "must be a mapping with a `name:`")
    name = task.get("name")
    if not isinstance(name, str) or not name:
        raise fail(
            "task.name",
            name,
            "must be a task registry name (ppl, passkey, agreement, milebench, mmmu, lmms/<task>)",
        )
    kind = task_kind(name)
    schema = TASK_SCHEMAS.get(kind)
    if schema is None:  # a task registered in akvq.tasks alone: its class declares its keys
        from akvq.tasks import task_class

        try:
            schema = {**COMMON_TASK, **task_class(name).config_schema}
        except ConfigError:
            known = "ppl, passkey, agreement, milebench, milebench/<Dataset>, mmmu, lmms/<lmms-eval task>"
            raise fail("task.name", name, f"unknown task; known: {known}") from None
    check_mapping("task", task, schema, f"task {name!r}")


def check_against_model(
    cfg: dict[str, Any], quants: dict[str, dict[str, Any]], main: str, shape: ModelShape, model: str
) -> None:
    """Lengths against the model's positions; group sizes, layer patterns and pivot layers against its shape."""
    where = f"model {model!r} ({shape.source})"
    task = cfg["task"]
    kind = task_kind(str(task["name"]))
    mp = shape.max_positions

    def fits(key: str, value: int, total: int, what: str) -> None:
        if mp is not None and total > mp:
            raise fail(key, value, f"{what} = {total} tokens, more than the {mp} positions of {where}")

    if kind == "ppl":
        p, c = task.get("prompt_len", 4096), task.get("cont_len", 256)
        fits("task.prompt_len", p, p + c, "prompt_len + cont_len")
        from akvq.tasks.text import pydoc_corpus

        chars = len(pydoc_corpus())  # a token is at least one character: an upper bound on the corpus
        n = task.get("windows", 8)
        if n * (p + c) > chars:
            raise fail(
                "task.windows", n, f"{n} windows of {p + c} tokens cannot fit in the {chars}-character corpus"
            )
    elif kind == "agreement":
        p, g = task.get("prompt_len", 1024), task.get("gen_len", 64)
        fits("task.prompt_len", p, p + g, "prompt_len + gen_len")
        from akvq.tasks.text import pydoc_corpus

        chars = len(pydoc_corpus())
        n = task.get("samples", 4)
        if n * p > chars:
            raise fail(
                "task.samples", n, f"{n} prompts of {p} tokens cannot fit in the {chars}-character corpus"
            )
    elif kind == "passkey":
        for i, length in enumerate(task.get("lengths", [])):
            fits(f"task.lengths[{i}]", length, length, "a passkey prompt")
    elif kind in ("milebench", "lmms"):
        new = task.get("max_new_tokens", 512 if kind in ("milebench", "synthbench") else 256)
        fits("task.max_new_tokens", new, new + 1, "max_new_tokens + a prompt")
        ctx = task.get("max_context_len") if kind in ("milebench", "synthbench") else None
        if ctx is not None:
            fits("task.max_context_len", ctx, ctx + new, "max_context_len + max_new_tokens")

    from akvq.policies.loader import policy_from_mapping

    for name, q in quants.items():
        pre = "quant" if name == main else f"compare[{name}]"
        fields = {k: v for k, v in q.items() if k != "policy"}
        pattern = fields.get("layer_pattern")
        if pattern is not None and len(pattern) != shape.num_layers:
            raise fail(
                f"{pre}.layer_pattern",
                pattern,
                f"must have one entry per decoder layer: {shape.num_layers} for {where}",
            )
        pl = fields.get("pivot_layer")
        if pl is not None and not -shape.num_layers <= pl < shape.num_layers:
            raise fail(
                f"{pre}.pivot_layer",
                pl,
                f"must be in [{-shape.num_layers}, {shape.num_layers - 1}] for {where}",
            )
        policy = policy_from_mapping(q, f"{pre}={name}")  # the composed fields, not a config file's defaults
        gs = fields.get("group_size")
        if (
            gs is not None
            and gs < shape.head_dim
            and shape.head_dim % gs
            and not getattr(policy, "group_across_heads", False)
        ):
            raise fail(
                f"{pre}.group_size", gs, f"must divide head_dim={shape.head_dim} (or be >= it) for {where}"
            )
        try:
            policy.check_model(shape.num_kv_heads, shape.head_dim, shape.num_layers)
            if getattr(policy, "needs_pattern", False):
                import yaml

                from akvq.models.spec import ModelSpec
                from akvq.saliency.patterns import find_pattern_file, parse_pattern

                file = find_pattern_file(ModelSpec.from_dict(cfg["model"]).pattern_name)
                if file is not None:  # parsed without load_layer_pattern's warnings: the error stays one line
                    parse_pattern(yaml.safe_load(file.read_text()) or {}, shape.num_layers, str(file))
        except ConfigError as e:
            raise ConfigError(" ".join(f"{pre} ({q['policy']}) on {where}: {e}".split())) from e


def validate(cfg: Any, check_data: bool = True, task_data: bool = True) -> ValidatedConfig:
    """Check a composed config (DictConfig or dict) completely; ConfigError/MissingDataError with one line.

    `check_data`: also require the model's config to be readable (weights present or fetchable); without it an
    unreadable model config only skips the shape checks. `task_data` (with `check_data`): also read the task's
    data (MileBench JSON and images); the runner's plan step leaves that to the task object's own `validate`."""
    from akvq.models.spec import ModelSpec
    from akvq.policies.loader import quant_config
    from akvq.runner.plan import available, quant_names

    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    plain = _plain(cfg)
    check_mapping("", plain, TOP_LEVEL, "the top-level config (configs/config.yaml)")
    for key in ("model", "task", "quant"):
        if plain.get(key) is None:
            raise fail(
                key,
                None,
                f"the config needs a {key!r} group; pick one of: {', '.join(available(key))}",
            )

    model = plain["model"]
    source = model.get("source", "hub") if isinstance(model, Mapping) else None
    check_mapping("model", model, model_schema(source), f"model configs of source {source!r}")
    hd = plain["model"].get("tiny_head_dim")
    if hd is not None and not is_power_of_two(hd):
        raise fail("model.tiny_head_dim", hd, "must be a power of two (the WHT needs one)")
    if "name" not in plain["model"]:
        raise fail("model.name", None, "every model config needs a name")
    check_task(plain["task"])

    names, main = quant_names(cfg)
    quants: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            q = plain["quant"] if name == main else quant_config(str(name))
        except ConfigError:
            known = ", ".join(available("quant"))
            raise fail(
                "compare", plain.get("compare"), f"{name!r} is not a quant config; available: {known}"
            ) from None
        check_quant(str(name), q, "quant" if name == main else f"compare[{name}]")
        quants[str(name)] = q

    from akvq.runner import default_records

    given = plain.get("records")
    records = check_records(default_records(plain) if given is None else given, _records_base())

    from akvq.models import validate_spec

    spec = validate_spec(ModelSpec.from_dict(plain["model"]))
    shape = model_shape(spec, need=check_data)
    if shape is not None:
        check_against_model(plain, quants, main, shape, spec.name)
    if check_data and task_data and task_kind(str(plain["task"]["name"])) == "milebench":
        from akvq.tasks.milebench import datasets_for, validate_milebench_root

        task = plain["task"]
        root = task.get("milebench_root") or plain.get("milebench_root")
        validate_milebench_root(root, datasets_for(str(task["name"]), task), task.get("limit"))
    return ValidatedConfig(config=plain, quants=quants, shape=shape, records=records)


__all__ = [
    "TASK_SCHEMAS",
    "TOP_LEVEL",
    "Check",
    "ModelShape",
    "ValidatedConfig",
    "check_records",
    "gguf_metadata",
    "model_shape",
    "validate",
]
