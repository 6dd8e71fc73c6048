"""The artifact registry: what each table/figure is built from, how to build it, and what to run when its
records are missing.

Why a registry: one command (`scripts/make_artifacts.py`), the notebook and the tests all walk the same
list, so an artifact cannot be forgotten by one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from akvq.artifacts import data, figures, saliency, style, sweeps, tables

REPO = sweeps.REPO
PROFILE_HINT = (
    "python scripts/profile_layers.py --model <model> --samples 8 --write-pattern  (writes results/saliency/<model>/; "
    "smollm2-135m runs here; LLaVA/Qwen2-VL on a GPU with --milebench-root DIR --dataset SceneTransition)"
)
FIG5_COMMAND = "python scripts/fig5_kv_distribution.py"
BENCH_HINT = (
    "python scripts/bench_efficiency.py <one entry of configs/sweep/bench_paper.yaml or bench_cpu.yaml>"
)


@dataclass
class Context:
    """Where inputs are and where outputs go; tests point every path at fixtures."""

    records: list[dict[str, Any]]
    out: Path
    layer_pattern_dirs: list[Path] = field(default_factory=lambda: [REPO / "configs" / "layer_patterns"])
    saliency_dirs: list[Path] = field(default_factory=lambda: [REPO / "results" / "saliency"])
    fig5_data: list[Path] | None = None  # None: OUT/figures/data, then the repo's results/figures/data
    efficiency_points: list[Path] = field(
        default_factory=lambda: [REPO / "results" / "efficiency" / "points.csv"]
    )
    config_dir: Path = sweeps.CONFIG_DIR

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def fig5_paths(self) -> list[Path]:
        if self.fig5_data is not None:
            return list(self.fig5_data)
        rel = Path("figures") / "data" / "fig5_kv_stats.csv"
        return [self.out / rel, REPO / "results" / rel]


@dataclass
class Artifact:
    """One table or figure: `build(ctx)` writes it and returns the paths (empty when there is no data);
    `sweeps` are the configs/sweep grids behind it; `how` says how to produce inputs that are not records."""

    name: str
    title: str
    build: Callable[[Context], list[Path]]
    sweeps: tuple[str, ...] = ()
    how: str = ""
    frame: Callable[[Context], pd.DataFrame | None] | None = None


# --------------------------------------------------------------------------------------------- builders


def _table(
    fn: Callable[[Context], pd.DataFrame], stem: str, title: str, note: str, digits: int = 1
) -> Callable[[Context], list[Path]]:
    def build(ctx: Context) -> list[Path]:
        df = fn(ctx)
        if df is None or df.empty:
            return []
        return tables.write(df, ctx.tables, stem, title, note, digits)

    return build


def _figure(
    fn: Callable[[Context], tuple[Any, pd.DataFrame] | None], stem: str
) -> Callable[[Context], list[Path]]:
    def build(ctx: Context) -> list[Path]:
        made = fn(ctx)
        return [] if made is None else style.save(*made, ctx.figures, stem)

    return build


def _table2(ctx: Context) -> list[Path]:
    """Table II plus its long form (every cell with the FP16 reference, delta and the paper's number if quoted)."""
    paths = _table(
        lambda c: tables.table2(c.records, True),
        "table2_accuracy",
        "Table II: accuracy (%) per task",
        NOTE_RECORDS + " " + tables.NOTE,
    )(ctx)
    if paths:
        long = tables.table2_long(ctx.records)
        long = long[long["task"].map(tables.is_paper_task)]
        p = ctx.tables / "table2_accuracy_long.csv"
        long.to_csv(p, index=False, float_format="%.6g")
        paths.append(p)
    return paths


def _patterns(ctx: Context) -> pd.DataFrame:
    return tables.table1(saliency.load_layer_patterns(*ctx.layer_pattern_dirs, *ctx.saliency_dirs))


def _profiles(ctx: Context) -> pd.DataFrame:
    return saliency.load_profiles(*ctx.saliency_dirs)


def _fig5(ctx: Context) -> tuple[Any, pd.DataFrame] | None:
    stats = figures.load_fig5(ctx.fig5_paths())
    return None if stats is None else figures.fig5(stats)


NOTE_RECORDS = (
    "Built by `python scripts/make_artifacts.py` from the run records; newest record per cell wins."
)

ARTIFACTS: list[Artifact] = [
    Artifact("table1", "Table I: layer patterns (TSA / PSA) per model",
             _table(_patterns, "table1_layer_patterns", "Table I: layer patterns per model",
                    "From configs/layer_patterns/ and profiler outputs under results/saliency/ (those win)."),
             how=PROFILE_HINT, frame=_patterns),
    Artifact("table2", "Table II: MileBench accuracy per task, model and method",
             _table2,
             sweeps=("paper_table2", "cpu_tiny"), frame=lambda c: tables.table2(c.records, True)),
    Artifact("table2_cpu", "Table II, CPU scale: SmolLM2 fidelity (perplexity, passkey, agreement)",
             _table(lambda c: tables.table2(c.records, False), "table2_cpu_fidelity",
                    "Table II (CPU scale): real-text fidelity per method", NOTE_RECORDS + " Perplexity: lower is better.", 3),
             sweeps=("cpu_scale", "cpu_fidelity"), frame=lambda c: tables.table2(c.records, False)),
    Artifact("ablation", "Table III: ablation RTN -> +WHT -> +TSA -> +PSA",
             _table(lambda c: tables.ablation(c.records), "table3_ablation", "Ablation: RTN -> +WHT -> +TSA -> +PSA",
                    NOTE_RECORDS, 2),
             sweeps=("paper_ablation", "cpu_scale"), frame=lambda c: tables.ablation(c.records)),
    Artifact("table4", "Table IV: largest batch, throughput and peak memory",
             _table(lambda c: tables.table4(c.records), "table4_efficiency", "Table IV: batch, throughput, memory",
                    NOTE_RECORDS + " Rows named `paper:` are the paper's numbers (4x V100), for reference.", 2),
             sweeps=("bench_paper", "bench_cpu"), how=BENCH_HINT, frame=lambda c: tables.table4(c.records)),
    Artifact("fig2", "Fig. 2: locality (recent-window attention share per layer)",
             _figure(lambda c: figures.fig_attention(_profiles(c), "fig2_locality"), "fig2_locality"), how=PROFILE_HINT),
    Artifact("fig3", "Fig. 3: text-salient attention (per-token attention, text vs vision)",
             _figure(lambda c: figures.fig_attention(_profiles(c), "fig3_tsa"), "fig3_tsa"), how=PROFILE_HINT),
    Artifact("fig4", "Fig. 4: pivot-salient attention (pivot share vs random tokens)",
             _figure(lambda c: figures.fig_attention(_profiles(c), "fig4_psa"), "fig4_psa"), how=PROFILE_HINT),
    Artifact("fig5", "Fig. 5: K/V per-channel distribution before and after WHT (real SmolLM2 K/V)",
             _figure(_fig5, "fig5_kv_distribution"), how=FIG5_COMMAND),
    Artifact("fig8", "Fig. 8: accuracy vs KV effective bits",
             _figure(lambda c: figures.fig8(c.records), "fig8_accuracy_vs_bits"),
             sweeps=("paper_table2", "cpu_scale"), frame=lambda c: figures.fig8_frame(c.records)),
    Artifact("fig9", "Fig. 9: peak memory vs batch size",
             _figure(lambda c: figures.fig9(c.records, c.efficiency_points), "fig9_memory_vs_batch"),
             sweeps=("bench_paper", "bench_cpu"), how=BENCH_HINT, frame=lambda c: figures.fig9_frame(c.records, c.efficiency_points)),
    Artifact("fig9_tiny", "Fig. 9 for the tiny random-weight models (memory mechanics only)",
             _figure(lambda c: figures.fig9(c.records, c.efficiency_points, random_weights=True),
                     "fig9_memory_vs_batch_tiny"),
             sweeps=("bench_cpu",), how=BENCH_HINT, frame=lambda c: figures.fig9_frame(c.records, c.efficiency_points)),
]  # fmt: skip
BY_NAME: dict[str, Artifact] = {a.name: a for a in ARTIFACTS}


# --------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    name: str
    title: str
    paths: list[Path]
    seconds: float
    todo: list[str]  # what to run for the missing inputs (empty when complete)
    error: str | None = None

    @property
    def built(self) -> bool:
        return bool(self.paths)


def todo_for(art: Artifact, ctx: Context) -> list[str]:
    """Lines saying which runs are missing for this artifact and the exact command for each sweep."""
    lines = []
    known = [n for n in art.sweeps if sweeps.sweep_path(n, ctx.config_dir).is_file()]
    for name in known:
        grid = sweeps.load_grid(name, ctx.config_dir)
        miss = sweeps.missing_points(grid, ctx.records, ctx.config_dir)
        if not miss:
            continue
        where = (
            "GPU cluster"
            if sweeps.SWEEPS.get(name, sweeps.SweepInfo(name, "cpu")).where == "gpu"
            else "here (CPU)"
        )
        shown = ", ".join("/".join(p) for p in miss[:4]) + (
            f", ... (+{len(miss) - 4})" if len(miss) > 4 else ""
        )
        runs = "\n".join(f"      run: {c}" for c in sweeps.commands_for(grid, miss))
        lines.append(
            f"{len(miss)}/{len(grid.points)} runs of sweep {name} missing ({where}): {shown}\n{runs}"
        )
    return lines


def build_all(ctx: Context, only: list[str] | None = None) -> list[Outcome]:
    """Build every artifact (or `only` those); one artifact failing is reported, not fatal to the rest."""
    outcomes = []
    for art in ARTIFACTS:
        if only and art.name not in only:
            continue
        t0 = time.perf_counter()
        err = None
        try:
            paths = art.build(ctx)
        except Exception as e:  # noqa: BLE001 - keep going, report it
            paths, err = [], f"{type(e).__name__}: {e}"
        todo = todo_for(art, ctx)
        if (
            not paths and not todo and art.how
        ):  # inputs that are not sweep records (profiler, K/V dump, bench)
            todo = [f"inputs: {art.how}"]
        outcomes.append(Outcome(art.name, art.title, paths, time.perf_counter() - t0, todo, err))
    return outcomes


def report(outcomes: list[Outcome], root: Path | None = None) -> str:
    """Human summary: what was written, what is missing and the command that would produce it."""

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root)) if root else str(p)
        except ValueError:
            return str(p)

    lines = []
    for o in outcomes:
        state = "built" if o.built else ("FAILED" if o.error else "no data")
        lines.append(f"[{state:>7}] {o.name}: {o.title} ({o.seconds:.1f}s)")
        if o.paths:
            lines.append("          " + ", ".join(rel(p) for p in o.paths if p.suffix in (".md", ".png")))
        if o.error:
            lines.append(f"          error: {o.error}")
        for t in o.todo:
            lines.append(f"    missing: {t}")
    return "\n".join(lines)


def context(records_path: str | Path | None, out: str | Path, **kw: Any) -> Context:
    return Context(records=data.load(records_path), out=Path(out), **kw)
