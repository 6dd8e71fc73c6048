"""Run records: one JSON object per line in `results/runs.jsonl`, appended in O(record), read back tolerantly;
and claims, so concurrent identical sweeps run each config once.

Why this shape: every table and figure is rebuilt from these lines, sweeps resume by looking up a run's config
hash here, and a run killed at any moment must never leave a line that breaks the readers. An append is one
`O_APPEND` write of one line under an exclusive lock on a sidecar `.lock` file (the whole file used to be
rewritten per append: 50 s instead of 32 s for a 4-run sweep on a 62 MB file). A writer killed mid-write can
leave a torn last line: readers skip it with a warning and the next append cuts it off.

Claims: before a sweep job runs a config it writes `<records>.claims/<config_hash>.json` with a lease that a
thread renews while the job lives; a job killed by `kill -9` or SLURM's time limit stops renewing, and its claim
lapses after the lease, so a later job picks the config up.
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
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from akvq.paths import atomic_open

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
HASH_IGNORE = frozenset(
    {
        "records",
        "redo",
        "compare",
        "wandb",
        "slurm",
        "threads",
        "hydra",
        "claim_lease_s",
        "preflight",
        "share_prefill",
        "read_path",
    }
)
LEASE_S = 600.0  # default claim lease; a live job renews it every third of this
# Where data lives (top level or inside the task config): moving the data does not make a new run.
DATA_KEYS = ("milebench_root", "synthbench_root")

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
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                out.append(line)
                continue
        except json.JSONDecodeError:
            pass
        torn = i == len(lines) - 1 and not text.endswith("\n")
        what = (
            "torn last line (a writer died mid-append; the next append removes it)"
            if torn
            else "unreadable line"
        )
        log.warning("records: skipping %s %d (%.60s...)", what, i + 1, line)
    return out


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _drop_torn_tail(fd: int) -> None:
    """Called under the lock: a last line without its newline was left by a writer that died mid-write (or by a
    tool that appends without one). Complete JSON gets its newline; anything else is cut off."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos, block = size, 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            pos = start + nl + 1
            break
        pos = start
    tail = os.pread(fd, size - pos, pos)
    try:
        whole = isinstance(json.loads(tail), dict)
    except ValueError:
        whole = False
    if whole:
        os.write(fd, b"\n")
    else:
        log.warning("records: removing a torn last line (%d bytes) left by a killed writer", size - pos)
        os.ftruncate(fd, pos)


def _clean_orphans(path: Path) -> None:
    """Under the lock, temp files of the records file are orphans (a writer killed between write and rename)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            log.info("records: removed orphan temp file %s", tmp)


def append_record(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record: one `O_APPEND` write of one line under the lock, fsynced; O(record), not O(file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(to_json(record), allow_nan=False) + "\n").encode()
    with locked(path):
        _clean_orphans(path)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _drop_torn_tail(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


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
            with atomic_open(path, "w", fsync=True) as fh:
                fh.write("".join(x + "\n" for x in good))
    return dropped


def latest_by_hash(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """config_hash -> the newest record with that hash (later lines win)."""
    return {r["config_hash"]: r for r in records if "config_hash" in r}


def completed(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """What a sweep can skip: config_hash -> record."""
    return latest_by_hash(read_records(path))


# ---------------------------------------------------------------------------------------------------- claims


def _recorded(path: Path, config_hash: str) -> bool:
    """Whether a record has this hash: a byte search first, so the common "no" does not parse 60 MB of JSON."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    return config_hash.encode() in data and config_hash in completed(path)


def claims_dir(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".claims")


def _read_claim(file: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(file.read_text())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _write_claim(file: Path, info: dict[str, Any]) -> None:
    """Atomic (temp file + rename), so a reader never sees half a claim."""
    with atomic_open(file, "w") as fh:
        json.dump(info, fh)


@functools.cache
def _this_machine() -> str:
    """The boot and the pid namespace: processes with the same value see each other's pids ("" off Linux)."""
    try:
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _owner_gone(info: dict[str, Any]) -> bool:
    """True when a claim's process is known to be dead: it ran on this machine (same host name, boot and pid
    namespace) and its pid no longer exists. A job killed and restarted at once (Ctrl-C, then the same command)
    then takes its configs back instead of skipping them until the lease lapses. A claim from another machine,
    or from an older version without "machine", waits for its lease."""
    here = _this_machine()
    host, _, pid = str(info.get("owner", "")).rpartition(":")
    if not here or info.get("machine") != here or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, not ours to signal
        return False
    return False


class Claim:
    """This process's claim on one config; a daemon thread renews the lease until `release()`.

    Use as a context manager around the run and its append: the claim is released however the block ends."""

    def __init__(self, records_path: Path, config_hash: str, lease_s: float) -> None:
        self.records_path = records_path
        self.file = claims_dir(records_path) / f"{config_hash}.json"
        self.config_hash = config_hash
        self.lease_s = float(lease_s)
        self.token = uuid.uuid4().hex
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"claim-{config_hash}", daemon=True)

    def info(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "machine": _this_machine(),
            "token": self.token,
            "expires": now + self.lease_s,
            "renewed": now,
        }

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with locked(self.records_path):
                cur = _read_claim(self.file)
                if cur is None or cur.get("token") != self.token:
                    log.warning("claim on %s was taken over (our lease lapsed?)", self.config_hash)
                    return
                _write_claim(self.file, self.info())

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with locked(self.records_path):
            cur = _read_claim(self.file)
            if cur is not None and cur.get("token") == self.token:
                with contextlib.suppress(OSError):
                    self.file.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_claim(
    path: str | os.PathLike[str], config_hash: str, lease_s: float = LEASE_S, skip_recorded: bool = True
) -> Claim | None:
    """Claim a config before running it; None when it is recorded (unless `skip_recorded` is false) or another
    live job holds it. An expired claim (its job died), or one whose process on this machine is gone, is taken
    over. The check and the claim happen under the
    records lock, so of several jobs asking at once exactly one gets it."""
    path = Path(path)
    cdir = claims_dir(path)
    cdir.mkdir(parents=True, exist_ok=True)
    claim = Claim(path, config_hash, lease_s)
    with locked(path):
        if skip_recorded and _recorded(path, config_hash):
            return None
        cur = _read_claim(claim.file) if claim.file.exists() else None
        if cur is not None and float(cur.get("expires", 0)) > time.time():
            if not _owner_gone(cur):
                return None
            log.warning(
                "claim on %s by %s: that process is gone; taking it over", config_hash, cur.get("owner")
            )
        elif cur is not None:
            log.warning(
                "claim on %s by %s lapsed (its job died); taking it over", config_hash, cur.get("owner")
            )
        for tmp in cdir.glob(".*.tmp"):  # orphans of a claim write killed mid-way (we hold the lock)
            with contextlib.suppress(OSError):
                tmp.unlink()
        _write_claim(claim.file, claim.info())
    claim._thread.start()
    return claim


def claimed(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """config_hash -> live claim (owner, expiry) of the configs running now."""
    now = time.time()
    out = {}
    for f in claims_dir(path).glob("*.json"):
        info = _read_claim(f)
        if info is not None and float(info.get("expires", 0)) > now:
            out[f.stem] = info
    return out


# What "the code" is for staleness: everything that can change a number (not results/, docs or the README).
CODE_PATHS: tuple[str, ...] = (
    "akvq",
    "configs",
    "hydra_plugins",
    "run.py",
    "scripts",
    "setup.py",
    "pyproject.toml",
)


@functools.cache
def git_rev(repo: Path = REPO) -> str:
    """Short commit of the checkout, `+dirty` when tracked code changed (not results or prose: appending a
    record must not make the next record "uncommitted code"); `unknown` outside git. The one format of the
    records' `git_rev` (runner and benchmark alike)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=repo, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def is_stale(rec: dict[str, Any], current: str | None = None) -> bool:
    """A record made by other code than this checkout's commit, or by uncommitted code (`+dirty`). The one
    staleness rule: the runner's printed tables and the artifacts (Table II) both flag with it."""
    rev = str(rec.get("git_rev") or "unknown")
    now = (current or git_rev()).removesuffix("+dirty")
    if rev.endswith("+dirty"):
        return True
    return rev != now and not _same_code(rev, now)


@functools.lru_cache(maxsize=256)
def _same_code(rev: str, now: str, repo: Path = REPO) -> bool:
    """Whether two commits hold the same code (a commit that only adds results or prose leaves records fresh)."""
    try:
        out = subprocess.run(["git", "diff", "--quiet", rev, now, "--", *CODE_PATHS], cwd=repo,
                             capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


STALE_NOTE = "recorded by another commit or by uncommitted code"

# Metric names tried in order when neither the task nor the record says which number is the headline.
PRIMARY_METRICS: tuple[str, ...] = (
    "accuracy", "acc", "score", "exact_match", "rouge_l_f", "rouge_l", "agreement", "ppl", "perplexity",
)  # fmt: skip


def primary_metric(metrics: dict[str, Any], declared: str | None = None) -> str | None:
    """The one resolver of a headline metric. `declared` is the task's `primary_metric` (the runner asks the
    task, whose config may override it, and stores the answer in the record; readers of records pass the
    record's field). Without one present in `metrics`: the first of PRIMARY_METRICS, else the first number
    that is not a bound (`*_lo`, `*_hi`) or a count."""
    if declared and declared in metrics:
        return str(declared)
    for m in PRIMARY_METRICS:
        if m in metrics:
            return m
    for m, v in metrics.items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if not m.endswith(("_lo", "_hi", "_low", "_high", "_std", "_n")) and m not in (
            "n",
            "samples",
            "count",
        ):
            return str(m)
    return None


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
    "LEASE_S",
    "Claim",
    "claimed",
    "try_claim",
    "RECORD_KEYS",
    "append_record",
    "completed",
    "config_hash",
    "git_rev",
    "is_stale",
    "latest_by_hash",
    "primary_metric",
    "read_records",
    "redact",
    "repair",
    "to_json",
]
