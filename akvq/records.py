"""Run records: one JSON object per line in `results/runs.jsonl`, appended atomically, read back tolerantly.

Why this shape: every table and figure is rebuilt from these lines, sweeps resume by looking up a run's
config hash here, and a run killed at any moment must never leave a line that breaks the readers.
An append rewrites the whole file to a temporary neighbour, fsyncs it and `os.replace`s it over the old one,
under an exclusive lock on a sidecar `.lock` file, so readers see either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent

RECORD_KEYS = (
    "model",
    "task",
    "quant",
    "metrics",
    "kv_effective_bits",
    "kv_bytes",
    "peak_memory_bytes",
    "tokens_per_second",
    "wall_seconds",
    "config",
    "config_hash",
    "git_rev",
    "time",
    "device",
)

# Config keys that say where or how a run is reported, not what it computes: left out of the hash.
HASH_IGNORE = frozenset({"records", "redo", "compare", "wandb", "slurm", "threads", "hydra"})
# Where data lives (top level or inside the task config): moving the data does not make a new run.
DATA_KEYS = ("milebench_root",)

SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential")
NOT_SECRET = frozenset({"tokenizer", "image_token", "video_token", "pad_token", "bos_token", "eos_token"})
REDACTED = "<redacted>"


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return k not in NOT_SECRET and any(w in k for w in SECRET_WORDS)


def redact(obj: Any) -> Any:
    """Copy of `obj` with string values under secret-looking keys (*key*, *token*, *secret*) replaced.

    Only strings are redacted: `max_new_tokens: 64` is a setting, `api_key: "..."` is a credential."""
    if isinstance(obj, dict):
        return {
            k: (REDACTED if isinstance(v, str) and v and is_secret_key(str(k)) else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    return obj


def config_hash(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of what a run computes (reporting keys in HASH_IGNORE left out)."""
    kept = {k: v for k, v in redact(config).items() if k not in HASH_IGNORE and k not in DATA_KEYS}
    if isinstance(kept.get("task"), dict):
        kept["task"] = {k: v for k, v in kept["task"].items() if k not in DATA_KEYS}
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on `<path>.lock` (works across processes, and on NFS through fcntl emulation)."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _valid_lines(text: str) -> list[str]:
    """Lines that parse as JSON objects; a torn or foreign line is dropped with a warning."""
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                out.append(line)
                continue
        except json.JSONDecodeError:
            pass
        log.warning("skipping unreadable line %d of the records (%.60s...)", i + 1, line)
    return out


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_hook(tmp: str, dst: Path) -> None:
    """The moment a new file becomes visible; a separate function so tests can crash just before it."""
    os.replace(tmp, dst)


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record atomically: old lines (torn ones dropped) + the new line -> temp file -> os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(to_json(record), allow_nan=False)
    with locked(path):
        old = path.read_text() if path.exists() else ""
        body = "".join(x + "\n" for x in [*_valid_lines(old), line])
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            if path.exists():
                os.chmod(tmp, path.stat().st_mode & 0o777)
            else:
                os.chmod(tmp, 0o644)
            _replace_hook(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All readable records in file order; a missing file is an empty list, a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(x) for x in _valid_lines(path.read_text())]


def repair(path: str | os.PathLike[str]) -> int:
    """Rewrite the file without unreadable lines (e.g. one written by a tool that appends naively).
    Returns how many lines were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    with locked(path):
        text = path.read_text()
        good = _valid_lines(text)
        dropped = sum(1 for x in text.splitlines() if x.strip()) - len(good)
        if dropped:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write("".join(x + "\n" for x in good))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    return dropped


def latest_by_hash(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """config_hash -> the newest record with that hash (later lines win)."""
    return {r["config_hash"]: r for r in records if "config_hash" in r}


def completed(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """What a sweep can skip: config_hash -> record."""
    return latest_by_hash(read_records(path))


@functools.cache
def git_rev(repo: Path = REPO) -> str:
    """Short commit of the checkout, `+dirty` when tracked files changed; `unknown` outside git. The one
    format of the records' `git_rev` (runner and benchmark alike)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=5
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _json_default(x: Any) -> Any:
    """Tensors, numpy scalars and paths in metrics/details become plain JSON values."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, set | frozenset):
        return sorted(x)
    return str(x)


def _finite(x: Any) -> Any:
    """NaN and infinities become null, so every line is strict JSON (jq, JavaScript, pandas all read it)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def to_json(obj: Any) -> Any:
    """What a record will hold once written: plain JSON types, non-finite floats as null."""
    return _finite(json.loads(json.dumps(obj, default=_json_default, allow_nan=True)))


__all__ = [
    "HASH_IGNORE",
    "RECORD_KEYS",
    "append_record",
    "completed",
    "config_hash",
    "latest_by_hash",
    "read_records",
    "redact",
    "repair",
    "to_json",
]
