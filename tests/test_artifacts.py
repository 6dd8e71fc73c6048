"""Paper artifacts: each table and figure builds from the fixture records, the notebook runs, missing runs are
listed with the sweep command that produces them, and each sweep composes with Hydra."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from akvq.artifacts import build, data, sweeps, tables

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "records.jsonl"
NOTEBOOK = REPO / "notebooks" / "paper_artifacts.ipynb"


def write_side_inputs(root: Path) -> dict[str, list[Path]]:
    """The non-record inputs: a layer-pattern file, a profiler CSV and Fig. 5 stats (made here, small)."""
    lp, sal = root / "layer_patterns", root / "saliency"
    lp.mkdir()
    sal.mkdir()
    (lp / "llava-1.5-7b.yaml").write_text(
        "model: llava-1.5-7b\nnum_layers: 32\ntsa: [0, 1]\npsa: 2-31\nsource: paper Table I\n"
    )
    (lp / "qwen2-vl-7b.yaml").write_text("model: qwen2-vl-7b\nnum_layers: 28\npsa: all\nprofiled: false\n")
    (sal / "bad.yaml").write_text("just: a foreign file\n")
    (sal / "tiny-llava").mkdir()
    layers = np.arange(6)
    pd.DataFrame({
        "model": "tiny-llava", "layer": layers, "pattern": ["tsa", "tsa", "psa", "psa", "psa", "psa"],
        "text_mean_attn": [0.02, 0.03, 0.01, 0.01, 0.01, 0.01], "vision_mean_attn": [0.01, 0.01, 0.01, 0.02, 0.02, 0.02],
        "pivot_mass": [0.2, 0.3, 0.6, 0.7, 0.8, 0.8], "random_mass": [0.05] * 6, "topk_share": [0.3, 0.4, 0.7, 0.8, 0.9, 0.9],
        "recent_share": [0.5, 0.4, 0.3, 0.2, 0.2, 0.1], "first_token_share": [0.1, 0.2, 0.5, 0.6, 0.6, 0.7],
    }).to_csv(sal / "tiny-llava" / "profile.csv", index=False)  # the profiler's layout  # fmt: skip
    (sal / "smollm2-135m").mkdir()  # text-only: no vision column values, so no Fig. 3 panel
    pd.DataFrame({"model": "smollm2-135m", "layer": [0, 1], "recent_share": [0.6, 0.3], "pivot_mass": [0.1, 0.7],
                  "text_mean_attn": [0.01, 0.02], "vision_mean_attn": [float("nan")] * 2}).to_csv(
        sal / "smollm2-135m" / "profile.csv", index=False
    )  # fmt: skip
    (sal / "tiny-llava" / "pattern.yaml").write_text(
        "model: tiny-llava\ntsa: [0, 1]\npsa: [2, 3, 4, 5]\nprofiled: true\n"
    )
    rows = []
    rng = np.random.default_rng(0)
    for layer in (0, 3):
        for kind in ("key", "value"):
            for tr in ("none", "wht"):
                lo = rng.uniform(-3, -1, 8)
                rows.append(pd.DataFrame({"model": "smollm2-135m", "layer": layer, "kind": kind, "transform": tr,
                                          "head_dim": 4, "channel": np.arange(8), "min": lo, "p01": lo / 2, "p25": lo / 4,
                                          "p50": 0.0, "p75": -lo / 4, "p99": -lo / 2, "max": -lo}))  # fmt: skip
    fig5 = root / "fig5_kv_stats.csv"
    pd.concat(rows).to_csv(fig5, index=False)
    points = root / "points.csv"  # the benchmark's every measured point (scripts/bench_efficiency.py)
    pd.DataFrame({"model": ["smollm2-135m"] * 6 + ["tiny-llava"] * 2, "prompt_len": 2048, "device": "cpu",
                  "quant": ["fp16"] * 3 + ["akvq"] * 3 + ["fp16", "akvq"],
                  "batch": [1, 8, 32] * 2 + [16, 16], "peak_bytes": [1.2e9, 1.9e9, 4.5e9, 1.1e9, 1.2e9, 1.5e9, 2e9, 1e9],
                  "oom": [False, False, True, False, False, False, False, False]}).to_csv(points, index=False)  # fmt: skip
    return {
        "layer_pattern_dirs": [lp],
        "saliency_dirs": [sal],
        "fig5_data": [fig5],
        "efficiency_points": [points],
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[build.Context, dict[str, build.Outcome]]:
    root = tmp_path_factory.mktemp("artifacts")
    ctx = build.Context(records=data.load(FIXTURE), out=root / "out", **write_side_inputs(root))
    return ctx, {o.name: o for o in build.build_all(ctx)}


@pytest.mark.parametrize("name", list(build.BY_NAME))
def test_each_artifact_builds_from_fixtures(built, name: str) -> None:
    _, outcomes = built
    o = outcomes[name]
    assert o.error is None and o.built, (o.error, o.todo)
    suffixes = {p.suffix for p in o.paths}
    assert suffixes in ({".csv", ".md"}, {".png", ".pdf", ".csv"})
    for p in o.paths:
        assert p.is_file() and p.stat().st_size > 0
    csv = next(p for p in o.paths if p.suffix == ".csv")
    assert len(pd.read_csv(csv)) > 0


def test_torn_last_line_is_skipped() -> None:
    lines = FIXTURE.read_text().splitlines()
    assert len(data.load(FIXTURE)) == len(lines) - 1


def test_table2_numbers_from_every_metrics_layout() -> None:
    t = tables.table2(data.load(FIXTURE))
    assert t.loc[("llava-1.5-7b", "AKVQ-VL"), "SceneTransition"] == 78.0  # dataset names as keys
    assert t.loc[("llava-1.5-7b", "RTN-2"), "WebQA"] == 12.5  # `Dataset/metric` keys
    assert t.loc[("llava-1.5-7b", "KIVI-2"), "TQA"] == 41.0  # nested dicts
    assert t.loc[("llava-1.5-13b", "FP16"), "TQA"] == 55.0  # the newer record wins over the older one
    assert t.loc[("llava-1.5-7b", "AKVQ-VL"), "ΔMileBench score avg"] == pytest.approx(0.5)
    assert "milebench" not in t.columns and "RTN (+window)" not in t.index.get_level_values(1)
    cpu = tables.table2(data.load(FIXTURE), paper_tasks=False)
    assert cpu.loc[("smollm2-135m", "RTN-2"), "Δppl"] == pytest.approx(412.0 - 10.82)


def _rec(model: str, task: str, quant: str, metrics: dict, rev: str, **kw: object) -> dict:
    return {"model": model, "task": task, "quant": quant, "metrics": metrics, "git_rev": rev,
            "kv_effective_bits": {"fp16": 16.0, "kivi2": 3.0, "akvq": 2.5, "kivi4": 4.5}[quant], "config": {}, **kw}  # fmt: skip


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> str:
    """This checkout's commit, fixed (a clean `abc1234`), so staleness does not depend on the working tree."""
    from akvq import records

    monkeypatch.setattr(records, "git_rev", lambda *a: "abc1234")
    return "abc1234"


def _write(path: Path, recs: list[dict]) -> Path:
    from akvq import records

    for r in recs:
        records.append_record(path, r)
    return path


def test_table2_one_column_per_dataset_averages_one_metric_kind_flags_stale(tmp_path: Path, now: str) -> None:
    recs = [
        # one MileBench record with two datasets, as `task=milebench` writes it
        _rec("llava-1.5-7b", "milebench", q, {"SceneTransition": a, "WebQA": b, "average": (a + b) / 2}, now,
             primary_metric="average")
        for q, a, b in (("fp16", 70.0, 50.0), ("akvq", 66.0, 48.0))
    ] + [  # CPU-scale tasks: perplexity and passkey accuracy
        _rec("smollm2-135m", "ppl", q, {"ppl": p, "ppl_lo": p - 1}, now, primary_metric="ppl")
        for q, p in (("fp16", 10.0), ("akvq", 12.0))
    ] + [
        _rec("smollm2-135m", "passkey", "fp16", {"acc": 1.0}, now, primary_metric="acc"),
        _rec("smollm2-135m", "passkey", "akvq", {"acc": 0.8}, "0000000"),  # another commit: stale
    ]  # fmt: skip
    path = _write(tmp_path / "runs.jsonl", recs)
    t = tables.table2(data.load(path))
    assert list(t.columns) == [
        "SceneTransition",
        "WebQA",
        "MileBench score avg",
        "ΔMileBench score avg",
        "eff. bits",
    ]
    assert t.loc[("llava-1.5-7b", "AKVQ-VL"), "MileBench score avg"] == 57.0
    assert t.loc[("llava-1.5-7b", "AKVQ-VL"), "ΔMileBench score avg"] == -3.0
    cpu = tables.table2(data.load(path), paper_tasks=False)
    assert not any("avg" in str(c).lower() for c in cpu.columns)  # ppl and passkey accuracy: never averaged
    assert list(cpu.columns) == ["passkey", "ppl", "Δpasskey", "Δppl", "eff. bits", "stale"]
    assert cpu.loc[("smollm2-135m", "AKVQ-VL"), "Δppl"] == 2.0
    assert cpu.loc[("smollm2-135m", "AKVQ-VL"), "stale"] == "passkey"
    assert cpu.loc[("smollm2-135m", "FP16"), "stale"] == ""
    md = tables.write(cpu, tmp_path / "out", "cpu", "CPU")[1].read_text()
    assert (
        "| AKVQ-VL |" in md
        and "| passkey |" in md
        and "stale: the cells listed were recorded by another commit" in md
    )
    assert "Metrics: passkey: acc, ppl: ppl (lower is better)." in md
    assert "stale" not in tables.table2(data.load(path)).columns  # no stale cell, no column, no footnote


def test_adhoc_and_scratch_records_never_enter(tmp_path: Path, now: str) -> None:
    good = _rec("smollm2-135m", "ppl", "fp16", {"ppl": 10.0}, now)
    adhoc = _rec(
        "smollm2-135m", "ppl", "akvq", {"ppl": 11.0}, now, config={"task": {"name": "ppl", "adhoc": True}}
    )
    path = _write(tmp_path / "runs.jsonl", [good, adhoc])
    scratch = _write(
        tmp_path / "_scratch" / "runs.jsonl", [_rec("smollm2-135m", "ppl", "kivi2", {"ppl": 9.0}, now)]
    )
    t = tables.table2(data.load([path, scratch]), paper_tasks=False)
    assert list(t.index.get_level_values("method")) == ["FP16"]


def _make_tables():  # scripts/ is not a package
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_make_tables_is_the_same_table2(tmp_path: Path, now: str) -> None:
    """scripts/make_tables.py is a CLI over tables.table2: MileBench per dataset, no mixed averages, its flags."""
    recs = [
        _rec("llava-1.5-7b", "milebench", q, {"SceneTransition": a, "WebQA": b}, now)
        for q, a, b in (("fp16", 70.0, 50.0), ("kivi2", 60.0, 40.0), ("akvq", 66.0, 48.0))
    ] + [
        _rec("smollm2-135m", "ppl", "fp16", {"ppl": 10.0}, now),
        _rec("smollm2-135m", "passkey", "fp16", {"accuracy": 1.0, "acc": 0.5}, now),
        # an older duplicate loses to the newer one
        _rec("llava-1.5-7b", "milebench", "akvq", {"SceneTransition": 1.0, "WebQA": 1.0}, now),
    ]  # fmt: skip
    recs[2], recs[-1] = recs[-1], recs[2]
    path = _write(tmp_path / "runs.jsonl", recs)
    with open(path, "a") as fh:
        fh.write('{"model": "x"')  # a torn line is ignored
    mt, out = _make_tables(), tmp_path / "tables"
    assert mt.main(["--records", str(path), "--out", str(out)]) == 0
    df = pd.read_csv(out / "table2.csv")
    assert list(df.columns) == ["model", "method", "SceneTransition", "WebQA", "passkey", "ppl",
                                "MileBench score avg", "ΔMileBench score avg", "Δpasskey", "Δppl", "eff. bits"]  # fmt: skip
    assert list(df["method"][:3]) == ["FP16", "KIVI-2", "AKVQ-VL"]  # reference, baselines, the method
    row = df.set_index("method").loc["AKVQ-VL"]
    assert (row["SceneTransition"], row["MileBench score avg"], row["ΔMileBench score avg"]) == (
        66.0,
        57.0,
        -3.0,
    )
    assert df.loc[df["model"] == "smollm2-135m", "passkey"].tolist() == [
        1.0
    ]  # accuracy before acc by default
    assert mt.main(["--records", str(path), "--out", str(out), "--tasks", "ppl,passkey", "--metric",
                    "passkey=acc", "--models", "smollm2-135m", "--name", "fidelity"]) == 0  # fmt: skip
    fid = pd.read_csv(out / "fidelity.csv")
    assert list(fid.columns) == ["model", "method", "ppl", "passkey", "Δppl", "Δpasskey", "eff. bits"]
    assert fid["passkey"].tolist() == [0.5]
    assert "Metrics: ppl: ppl (lower is better), passkey: acc." in (out / "fidelity.md").read_text()
    assert mt.main(["--records", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 1


def test_ablation_order_and_table4_ratios() -> None:
    recs = data.load(FIXTURE)
    ab = tables.ablation(recs)
    assert list(ab.index) == ["FP16", "RTN (+window)", "+WHT", "+WHT+TSA", "+WHT+TSA+PSA"]
    assert list(ab.iloc[:, 0]) == [73.0, 7.5, 20.5, 41.0, 78.0]
    t4 = tables.table4(recs).reset_index()
    akvq = t4[(t4["model"] == "smollm2-135m") & (t4["method"] == "AKVQ-VL")].iloc[0]
    assert akvq["batch ×"] == pytest.approx(72 / 16) and akvq["tokens/s ×"] == pytest.approx(470 / 180)
    assert akvq["KV ÷"] == pytest.approx(46080 / 6500) and akvq["fixed batch"] == 8
    assert (t4["model"] == "paper: llava-1.5-7b").sum() == 2


def test_table1_ranges(built) -> None:
    ctx, _ = built
    t1 = build.BY_NAME["table1"].frame(ctx)
    assert t1.loc["llava-1.5-7b", "TSA layers"] == "0-1" and t1.loc["llava-1.5-7b", "PSA layers"] == "2-31"
    assert t1.loc["qwen2-vl-7b", "TSA layers"] == "none" and "unprofiled" in t1.loc["qwen2-vl-7b", "source"]
    assert t1.loc["tiny-llava", "PSA layers"] == "2-5"  # the profiler's results/saliency/<model>/pattern.yaml


def test_attention_figures_by_role(built) -> None:
    _, outcomes = built
    per_fig = {
        n: set(pd.read_csv(next(p for p in outcomes[n].paths if p.suffix == ".csv"))["model"])
        for n in ("fig2", "fig3", "fig4")
    }
    assert per_fig == {  # the real model only, where it has the figure's columns
        "fig2": {"smollm2-135m"},
        "fig3": {"tiny-llava"},
        "fig4": {"smollm2-135m"},
    }


def test_fig9_points_from_benchmark_csv_and_records(built) -> None:
    ctx, _ = built
    df = build.BY_NAME["fig9"].frame(ctx)
    fp16 = df[(df["quant"] == "fp16") & (df["model"] == "smollm2-135m")].sort_values("batch")
    assert list(fp16["batch"]) == [1, 8, 16]  # CSV points (the OOM one dropped) + the records' largest batch
    assert set(df["quant"]) == {"fp16", "kivi2", "akvq"}


def test_missing_records_list_the_sweep_command(tmp_path: Path) -> None:
    ctx = build.Context(
        records=[], out=tmp_path, layer_pattern_dirs=[], saliency_dirs=[], fig5_data=[], efficiency_points=[]
    )
    todo = {o.name: "\n".join(o.todo) for o in build.build_all(ctx)}
    assert "python run.py -m +sweep=paper_table2 hydra/launcher=submitit_slurm" in todo["table2"]
    assert "python run.py -m +sweep=cpu_scale" in todo["fig8"]
    assert "python run.py -m +sweep=paper_ablation" in todo["ablation"]
    assert "fig5_kv_distribution.py" in todo["fig5"]
    assert "python scripts/bench_efficiency.py model=smollm2-135m prompt_len=8192" in todo["table4"]
    assert not list(tmp_path.rglob("*.png"))
    # with the fixtures, only the absent grid points are listed
    part = build.todo_for(build.BY_NAME["table2"], build.Context(records=data.load(FIXTURE), out=tmp_path))
    assert "18/24 runs of sweep paper_table2 missing" in part[0] and "llava-1.5-7b/milebench/skvq" in part[0]


def test_make_artifacts_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_artifacts", REPO / "scripts" / "make_artifacts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "none.jsonl").touch()  # nothing has run yet
    assert (
        mod.main(["--records", str(tmp_path / "none.jsonl"), "--out", str(tmp_path), "--only", "table2,fig9"])
        == 0
    )
    out = capsys.readouterr().out
    assert "0 records read" in out and "+sweep=paper_table2" in out
    assert not (tmp_path / "artifacts_status.md").exists()  # a partial build leaves the full status alone
    assert mod.main(["--records", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 0
    assert "artifacts built" in (tmp_path / "artifacts_status.md").read_text()
    (tmp_path / "artifacts_status.md").unlink()
    with pytest.raises(SystemExit) as e:  # a typo: one line, nothing rebuilt as if no run had happened
        mod.main(["--records", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "artifacts_status.md").exists()


@pytest.mark.parametrize("name", sweeps.sweep_names(kind="bench"))
def test_bench_sweep_runs_compose(name: str) -> None:
    """Every run of a benchmark list composes against configs/bench/efficiency.yaml as the script does."""
    from hydra import compose, initialize_config_dir

    grid = sweeps.load_grid(name)
    assert grid.is_bench and grid.points
    with initialize_config_dir(str(REPO / "configs" / "bench"), version_base=None):
        for run in set(grid.runs.values()):
            cfg = compose("efficiency", overrides=run.split())
            assert (REPO / "configs" / "model" / f"{cfg.model}.yaml").is_file(), run
            assert all((REPO / "configs" / "quant" / f"{q}.yaml").is_file() for q in cfg.quants), run


@pytest.mark.parametrize("name", sweeps.sweep_names(kind="hydra"))
def test_sweep_composes_with_hydra(name: str) -> None:
    from hydra import compose, initialize_config_dir

    if not (REPO / "configs" / "config.yaml").is_file():
        pytest.skip("configs/config.yaml not there yet")
    grid = sweeps.load_grid(name)
    assert grid.points, name
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
        params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
        assert params == {k: ",".join(v) for k, v in grid.params.items()}
        # every option the grid names must exist; a whole task family not yet in configs/ is a skip, not a pass
        absent = []
        for group, idx in (("model", 0), ("task", 1), ("quant", 2)):
            for opt in sorted({p[idx] for p in grid.points}):
                if not (REPO / "configs" / group / f"{opt}.yaml").is_file():
                    family = REPO / "configs" / group / f"{opt.split('/')[0]}.yaml"
                    assert group == "task" and not family.is_file(), (
                        f"sweep {name}: no configs/{group}/{opt}.yaml"
                    )
                    absent.append(f"{group}/{opt}")
        for model, task, quant in grid.points[:2]:
            if f"task/{task}" not in absent:
                one = compose("config", overrides=[f"model={model}", f"task={task}", f"quant={quant}"])
                assert one.quant.policy and one.task.name and one.model.name
    if absent:
        pytest.skip(f"sweep {name} composes; task configs not in configs/ yet: {absent}")


def test_notebook_executes_on_fixture_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbclient
    import nbformat

    side = write_side_inputs(tmp_path)  # a small Fig. 5 input keeps the run short
    monkeypatch.setenv("AKVQ_FIG5_DATA", str(side["fig5_data"][0]))
    monkeypatch.setenv("AKVQ_RECORDS", str(FIXTURE))
    monkeypatch.setenv("AKVQ_ARTIFACTS_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"{len(data.load(FIXTURE))} records from" in text
    out = tmp_path / "out"
    assert (out / "tables" / "table2_accuracy.csv").is_file()
    assert (out / "figures" / "fig8_accuracy_vs_bits.png").is_file() and (
        out / "figures" / "fig5_kv_distribution.png"
    ).is_file()
    t2 = pd.read_csv(out / "tables" / "table2_accuracy.csv").set_index(["model", "method"])
    assert t2.loc[("llava-1.5-7b", "AKVQ-VL"), "MileBench score avg"] == pytest.approx(60.5)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))  # fmt: skip
    assert os.environ["AKVQ_RECORDS"] == str(FIXTURE)


def test_sweep_launches_its_grid(tmp_path: Path) -> None:
    """`-m +sweep=<name>` really expands `hydra.sweeper.params` into one job per grid point (a stand-in app on
    the same configs, so no model runs)."""
    import subprocess
    import sys

    app = tmp_path / "app.py"
    app.write_text(
        "import hydra\nfrom hydra.core.hydra_config import HydraConfig\n"
        f"@hydra.main(config_path={str(REPO / 'configs')!r}, config_name='config', version_base=None)\n"
        "def main(cfg):\n    c = HydraConfig.get().runtime.choices\n"
        "    print('JOB', c['model'], c['task'], c['quant'], flush=True)\nmain()\n"
    )
    import os

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
    }  # akvq's launchers (hydra_plugins/), as run.py beside them sees
    out = subprocess.run(
        [sys.executable, str(app), "-m", "+sweep=cpu_fidelity", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    jobs = {tuple(line.split()[1:]) for line in out.stdout.splitlines() if line.startswith("JOB")}
    assert jobs == set(sweeps.load_grid("cpu_fidelity").points), out.stderr[-2000:]


def test_figures_never_mix_real_and_random_weight_models(built) -> None:
    ctx, outcomes = built
    real = pd.read_csv(ctx.figures / "fig9_memory_vs_batch.csv")
    tiny = pd.read_csv(ctx.figures / "fig9_memory_vs_batch_tiny.csv")
    assert set(real["model"]) == {"smollm2-135m"} and set(tiny["model"]) == {"tiny-llava"}
    assert not any(str(s).startswith("/") for s in pd.concat([real, tiny])["source"])  # no absolute paths


def test_fig8_uses_a_log_axis_and_one_name_per_method() -> None:
    from akvq.artifacts import figures, style

    recs = [
        {"model": "smollm2-135m", "task": "ppl", "quant": q, "metrics": {"ppl": v}, "primary_metric": "ppl",
         "kv_effective_bits": b, "config": {}}
        for q, v, b in (("fp16", 12.0, 16.0), ("rtn2", 230.0, 2.6), ("akvq_plus", 13.4, 2.7))
    ]  # fmt: skip
    fig, df = figures.fig8(recs)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "perplexity" in ax.get_ylabel()
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert labels == {style.label(q) for q in ("fp16", "rtn2", "akvq_plus")} and "akvq_plus" not in labels
    assert style.label("akvq[bits=4]") == "AKVQ-VL [bits=4]"


def test_tables_and_fig8_take_one_setting_per_task(tmp_path: Path, now: str) -> None:
    """A 512-token and a 4096-token perplexity are two measurements, not an old and a new one: the setting most
    methods were measured in is shown, and a method measured only elsewhere is left out, not mixed in."""

    def ppl(q: str, p: float, prompt: int) -> dict:
        cfg = {"task": {"name": "ppl", "prompt_len": prompt, "cont_len": 64, "chunk": 1, "replay": True}}
        return _rec("smollm2-135m", "ppl", q, {"ppl": p}, now, primary_metric="ppl", config=cfg)

    # 4096: fp16, akvq, kivi4; 512 (newer): fp16, kivi2 -- the 4096 setting has more methods
    recs = [ppl("fp16", 10.0, 4096), ppl("akvq", 11.0, 4096), ppl("kivi4", 10.5, 4096)]
    recs += [ppl("fp16", 9.0, 512), ppl("kivi2", 99.0, 512)]
    path = _write(tmp_path / "runs.jsonl", recs)
    prim = data.primary_frame(data.load(path))
    assert sorted(prim["quant"]) == ["akvq", "fp16", "kivi4"] and sorted(prim["value"]) == [10.0, 10.5, 11.0]
    assert data.setting_of(recs[0]) == "chunk=1, cont_len=64, prompt_len=4096"  # replay/name change no number
    t = tables.table2(data.load(path), paper_tasks=False)
    assert t.loc[("smollm2-135m", "FP16"), "ppl"] == 10.0

    def passkey(q: str, acc: float, trials: int) -> dict:
        cfg = {"task": {"name": "passkey", "lengths": [1024], "trials": trials}}
        return _rec("smollm2-135m", "passkey", q, {"acc": acc}, now, primary_metric="acc", config=cfg)

    # more methods at 2 trials (3 x 2 measurements) lose to fewer at 10 (2 x 10)
    recs = [passkey(q, 0.5, 2) for q in ("fp16", "kivi2", "akvq")] + [
        passkey("fp16", 0.7, 10),
        passkey("akvq", 0.4, 10),
    ]
    prim = data.primary_frame(data.load(_write(tmp_path / "pk.jsonl", recs)))
    assert sorted(zip(prim["quant"], prim["value"])) == [("akvq", 0.4), ("fp16", 0.7)]


def test_records_are_stale_only_when_code_changed(tmp_path: Path) -> None:
    """Committing results or prose keeps records fresh; a change under a code path makes them stale."""
    import subprocess

    from akvq import records

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "akvq").mkdir()
    (tmp_path / "akvq" / "m.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs.jsonl").write_text("")
    git("add", ".")
    git("commit", "-qm", "a")
    a = git("rev-parse", "--short", "HEAD")
    (tmp_path / "results" / "runs.jsonl").write_text("{}\n")
    assert records.git_rev.__wrapped__(tmp_path) == a  # appending a record is not uncommitted code
    git("commit", "-qam", "results")
    b = git("rev-parse", "--short", "HEAD")
    assert records._same_code(a, b, tmp_path)
    (tmp_path / "akvq" / "m.py").write_text("x = 2\n")
    assert records.git_rev.__wrapped__(tmp_path) == b + "+dirty"
    git("commit", "-qam", "code")
    c = git("rev-parse", "--short", "HEAD")
    assert not records._same_code(a, c, tmp_path)
