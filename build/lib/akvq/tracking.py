"""Weights & Biases logging that can never cost a run: offline by default, and any failure warns and goes on.

Why so defensive: most runs happen on laptops and cluster nodes without an account or network. An online
run without credentials would otherwise prompt for a key (hang) and a dead network would retry for minutes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from akvq.records import redact

log = logging.getLogger(__name__)


def _has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc; without one, online mode would prompt and hang."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "wandb" in netrc.read_text()
    except OSError:
        return False


class Tracker:
    """One W&B run per akvq run. Every method is a no-op when W&B is disabled or failed to start."""

    def __init__(self, run: Any = None, mode: str = "disabled") -> None:
        self.run = run
        self.mode = mode

    @property
    def active(self) -> bool:
        return self.run is not None

    @property
    def dir(self) -> str | None:
        """The run's local files (offline: <dir>/wandb/offline-run-*/files)."""
        return getattr(self.run, "dir", None) if self.run is not None else None

    def log(self, data: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        flat = {k: v for k, v in _flatten(data).items() if isinstance(v, int | float | bool | str)}
        try:
            self.run.log(flat)
            self.run.summary.update(flat)
        except Exception as e:  # noqa: BLE001 - logging must not end a run
            log.warning("W&B log failed (%s); continuing without it", e)

    def log_samples(self, rows: Any, key: str = "samples") -> None:
        """Per-sample details (prediction, answer, score, ...) as one `wandb.Table`; columns are the union of keys."""
        if self.run is None or not isinstance(rows, list) or not rows or not isinstance(rows[0], Mapping):
            return
        try:
            import wandb

            columns = list(dict.fromkeys(k for r in rows for k in r))
            data = [[_cell(r.get(c)) for c in columns] for r in rows]
            self.run.log({key: wandb.Table(columns=columns, data=data)})
        except Exception as e:  # noqa: BLE001 - logging must not end a run
            log.warning("W&B table failed (%s); continuing without it", e)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            log.warning("W&B finish failed (%s)", e)
        self.run = None


def start(
    wandb_cfg: Mapping[str, Any], name: str, config: Mapping[str, Any], default_dir: str | Path
) -> Tracker:
    """Start a W&B run per `wandb_cfg` (mode, project, entity, group, dir, init_timeout); never raises."""
    mode = str(wandb_cfg.get("mode") or "offline")
    if mode == "disabled":
        return Tracker()
    if mode not in ("offline", "online"):
        log.warning("unknown wandb.mode %r; using offline", mode)
        mode = "offline"
    if mode == "online" and not _has_credentials():
        log.warning("wandb.mode=online but no WANDB_API_KEY or ~/.netrc entry; logging offline instead")
        mode = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    out = Path(wandb_cfg.get("dir") or default_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        import wandb

        timeout = float(wandb_cfg.get("init_timeout") or 30)
        settings = wandb.Settings(
            init_timeout=timeout,
            silent=True,
            console="off",
            disable_git=True,
            x_disable_stats=True,
        )
        run = wandb.init(
            mode=mode,
            project=wandb_cfg.get("project") or "akvq",
            entity=wandb_cfg.get("entity"),
            group=sweep_group(wandb_cfg),
            name=name,
            dir=str(out),
            config=redact(dict(config)),
            reinit="create_new",
            settings=settings,
        )
        where = Path(run.dir).parent if getattr(run, "dir", None) else out
        if mode == "offline":
            log.info("W&B offline run in %s (upload: `wandb sync %s`)", where, where)
        else:
            log.info("W&B run %s (local files in %s)", getattr(run, "url", None) or run.name, where)
        return Tracker(run, mode)
    except Exception as e:  # noqa: BLE001 - no account, no network, broken install: warn and go on
        log.warning("W&B did not start (%s: %s); continuing without it", type(e).__name__, e)
        return Tracker()


def sweep_group(wandb_cfg: Mapping[str, Any]) -> str | None:
    """`wandb.group`, else the sweep's directory when this is a job of a multirun (so its jobs are grouped)."""
    if wandb_cfg.get("group"):
        return str(wandb_cfg["group"])
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return None


def _cell(v: Any) -> Any:
    return v if isinstance(v, int | float | bool | str) or v is None else str(v)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


__all__ = ["Tracker", "start", "sweep_group"]
