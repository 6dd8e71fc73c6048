"""The sweeps behind each artifact: read `configs/sweep/*.yaml`, expand their grids, find the runs not recorded.

Why: "missing records" is only useful when it says exactly what to run. Each sweep file is a Hydra config
(`# @package _global_` with `hydra.sweeper.params`), so `python run.py -m +sweep=<name>` runs its grid and the
runner skips recorded runs; here the same grid is expanded to tell which (model, task, quant) are absent.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from akvq.paths import REPO

CONFIG_DIR = REPO / "configs"  # the checkout's: sweeps and benchmark lists are not in a wheel (akvq.paths)
GPU_LAUNCH = "hydra/launcher=submitit_slurm slurm.partition=<gpu-partition>"
BENCH_ENTRY = "python scripts/bench_efficiency.py"


@dataclass(frozen=True)
class SweepInfo:
    """What make_artifacts needs to know about a sweep beyond its grid: where it runs and the extra arguments."""

    name: str
    where: str  # "gpu" (real models, SLURM) or "cpu" (here)
    extra: str = ""  # arguments appended to the printed command
    entry: str = "python run.py -m"  # how the sweep is launched


# Where each sweep runs; the grids themselves live in configs/sweep/<name>.yaml.
SWEEPS: dict[str, SweepInfo] = {
    "paper_table2": SweepInfo("paper_table2", "gpu", GPU_LAUNCH),
    "paper_ablation": SweepInfo("paper_ablation", "gpu", GPU_LAUNCH),
    "cpu_scale": SweepInfo("cpu_scale", "cpu"),
    "cpu_fidelity": SweepInfo("cpu_fidelity", "cpu"),
    "cpu_tiny": SweepInfo("cpu_tiny", "cpu", "task.milebench_root=<fixtures>/milebench"),
    "bench_paper": SweepInfo("bench_paper", "gpu", entry=BENCH_ENTRY),
    "bench_cpu": SweepInfo("bench_cpu", "cpu", entry=BENCH_ENTRY),
}


@dataclass
class Grid:
    """One sweep's expanded grid: every (model, task, quant) option triple it launches. A benchmark sweep
    (a `runs:` list of scripts/bench_efficiency.py overrides) also keeps which run produces which point."""

    name: str
    params: dict[str, list[str]]
    points: list[tuple[str, str, str]] = field(default_factory=list)
    runs: dict[tuple[str, str, str], str] = field(default_factory=dict)

    @property
    def is_bench(self) -> bool:
        return bool(self.runs)


def sweep_path(name: str, config_dir: Path = CONFIG_DIR) -> Path:
    return config_dir / "sweep" / f"{name}.yaml"


def sweep_names(config_dir: Path = CONFIG_DIR, kind: str = "all") -> list[str]:
    """Sweep config names; kind "hydra" = run.py sweeps, "bench" = benchmark run lists, "all" = both."""
    names = sorted(p.stem for p in (config_dir / "sweep").glob("*.yaml"))
    if kind == "all":
        return names
    return [
        n
        for n in names
        if (OmegaConf.select(OmegaConf.load(sweep_path(n, config_dir)), "runs") is not None)
        == (kind == "bench")
    ]


def _values(key: str, value: Any) -> list[str]:
    """Values of one sweeper param (`a,b,c`, `choice(a,b)`, `range(...)`), parsed as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    (ov,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
    return [str(v) for v in ov.sweep_string_iterator()] if ov.is_sweep_override() else [str(ov.value())]


def load_grid(name: str, config_dir: Path = CONFIG_DIR) -> Grid:
    """Expand `configs/sweep/<name>.yaml`'s `hydra.sweeper.params` into its (model, task, quant) triples."""
    node = OmegaConf.load(sweep_path(name, config_dir))
    if OmegaConf.select(node, "runs") is not None:
        return _bench_grid(name, [str(r) for r in node.runs])
    raw = OmegaConf.select(node, "hydra.sweeper.params", default=None)
    params_cfg = OmegaConf.to_container(raw) if raw is not None else {}
    assert isinstance(params_cfg, dict)
    params = {str(k): _values(str(k), v) for k, v in params_cfg.items()}
    axes = [params.get(k, [""]) for k in ("model", "task", "quant")]
    return Grid(name, params, [tuple(p) for p in itertools.product(*axes)])  # type: ignore[misc]


def _bench_grid(name: str, runs: list[str]) -> Grid:
    """Points of a benchmark run list: each run measures (model, `efficiency/<prompt_len>`, quant) per quant.
    Defaults not given in a run come from configs/bench/efficiency.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    defaults_path = CONFIG_DIR / "bench" / "efficiency.yaml"
    base = OmegaConf.to_container(OmegaConf.load(defaults_path)) if defaults_path.is_file() else {}
    assert isinstance(base, dict)
    grid = Grid(name, {})
    for run in runs:
        ov = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(run.split())}
        cfg = {**base, **ov}
        for q in cfg.get("quants") or []:
            point = (str(cfg["model"]), f"efficiency/{cfg['prompt_len']}", str(q))
            grid.points.append(point)
            grid.runs[point] = run
    return grid


def command(name: str) -> str:
    """The exact command that runs (or resumes) a run.py sweep."""
    info = SWEEPS.get(name, SweepInfo(name, "cpu"))
    return " ".join(x for x in (info.entry, f"+sweep={name}", info.extra) if x)


def commands_for(grid: Grid, missing: list[tuple[str, str, str]]) -> list[str]:
    """Commands that produce the missing points: the sweep command, or for a benchmark list each run needed."""
    if not grid.is_bench:
        return [command(grid.name)]
    info = SWEEPS.get(grid.name, SweepInfo(grid.name, "cpu", entry=BENCH_ENTRY))
    runs = list(dict.fromkeys(grid.runs[p] for p in missing))
    return [f"{info.entry} {r}" for r in runs]


@functools.lru_cache(maxsize=512)
def _group_field(group: str, option: str, key: str, config_dir: Path) -> str | None:
    path = config_dir / group / f"{option}.yaml"
    if not path.is_file():
        return None
    try:
        val = OmegaConf.select(OmegaConf.load(path), key, default=None)
    except Exception:  # noqa: BLE001 - a config with interpolations to other groups; fall back to the option name
        return None
    return None if val is None else str(val)


def record_names(model: str, task: str, config_dir: Path = CONFIG_DIR) -> tuple[set[str], set[str]]:
    """Names a record of this grid point may carry: the option name, or the config's `name`/`label`
    (the runner writes `model.name` and the task's label)."""
    models = {model} | ({n} if (n := _group_field("model", model, "name", config_dir)) else set())
    tasks = {task}
    if label := _group_field("task", task, "label", config_dir):
        tasks.add(label)
    return models, tasks


def missing_points(
    grid: Grid, records: list[dict[str, Any]], config_dir: Path = CONFIG_DIR
) -> list[tuple[str, str, str]]:
    """Grid points with no record; a multi-task record (`milebench`) also counts for `milebench/<Dataset>`
    and vice versa."""
    have = {(str(r.get("model")), str(r.get("task")), str(r.get("quant"))) for r in records}
    out = []
    for model, task, quant in grid.points:
        models, tasks = record_names(model, task, config_dir)
        found = any(
            m in models
            and q == quant
            and (t in tasks or any(t.startswith(x + "/") or x.startswith(t + "/") for x in tasks))
            for m, t, q in have
        )
        if not found:
            out.append((model, task, quant))
    return out
