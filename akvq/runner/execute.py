"""Run one plan on a loaded model and measure it: wall time, peak memory, device. Returns what the task returned
plus the measurements; `report.record` turns that into a record."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from akvq.runner.plan import RunPlan


@dataclass
class Measured:
    result: Any  # the task's TaskResult (or anything with its attributes)
    wall_seconds: float
    peak_memory_bytes: int
    device: str
    # plans run together off one prefill per prompt (their wall time and peak are the group's)
    shared_with: int = 1


def model_device(loaded: Any) -> str:
    """`cuda` when any weight is on a GPU, else `cpu` (device_map may spread a model over several GPUs)."""
    model = getattr(loaded, "model", None)
    try:
        devs = {p.device.type for p in model.parameters()} if model is not None else set()
    except Exception:  # noqa: BLE001 - fakes and odd wrappers
        devs = set()
    return "cuda" if "cuda" in devs else "cpu"


def describe_device(kind: str) -> str:
    import torch

    if kind == "cuda" and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"cuda {torch.cuda.get_device_name(0)}" + (f" x{n}" if n > 1 else "")
    return f"cpu ({torch.get_num_threads()} threads)"


def reset_peak(kind: str) -> None:
    if kind.startswith("cuda"):
        import torch

        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def peak_memory(kind: str) -> int:
    """The one peak-memory measurement (runner and benchmark). `kind`: "cuda", "cuda:<i>" or "cpu".
    GPU: max allocated bytes since the last `reset_peak`, summed over GPUs. CPU: the process's peak RSS so far
    (includes the loaded model; RSS cannot be reset within a process, so the benchmark runs a process per point)."""
    if kind.startswith("cuda"):
        import torch

        return int(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def execute(plans: list[RunPlan], loaded: Any, seed: int, partials: list[Path | None]) -> list[Measured]:
    """Run plans on the loaded model (seeded), timing them and reading peak memory; several plans are one
    `Task.run_shared` call (one prefill per prompt), and each gets the group's wall time and peak. `partials`:
    where a task that resumes (MileBench) appends finished samples, handed to it as `partial_path`."""
    import torch
    from omegaconf import OmegaConf

    kind = model_device(loaded)
    torch.manual_seed(seed)
    reset_peak(kind)
    t0 = time.perf_counter()
    runs = []
    for p, part in zip(plans, partials, strict=True):
        extra: dict[str, Any] = {"partial_path": str(part)} if part is not None else {}
        if len(plans) > 1:
            extra["run_label"] = p.quant  # which method a shared run's log line is about
        if p.config.get("read_path", "dequantize") != "dequantize":
            extra["read_path"] = p.config["read_path"]  # the generation tasks' caches read this way
        runs.append((p.policy, OmegaConf.merge(p.task_cfg, extra) if extra else p.task_cfg))
    if len(plans) == 1:
        results = [plans[0].task_obj.run(loaded, *runs[0])]
    else:
        results = plans[0].task_obj.run_shared(loaded, runs)
    if kind == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = peak_memory(kind)
    return [Measured(r, wall, peak, describe_device(kind), len(plans)) for r in results]
