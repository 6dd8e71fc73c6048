"""scripts/vlm_report.py: records of one method on several roots (context cells) and tasks add up per cell."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import vlm_report  # noqa: E402


def _rec(quant: str, bits: float, level: str, scores: dict[str, list[int]]) -> dict[str, Any]:
    details = [
        {"dataset": task, "level": level, "sample_id": i, "score": s}
        for task, ss in scores.items()
        for i, s in enumerate(ss)
    ]
    return {"task": "synthbench", "quant": quant, "kv_effective_bits": bits, "details": details, "config": {}}


def test_cells_add_up_and_later_runs_replace() -> None:
    records = [
        _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1], "Spot-the-Diff": [1, 0]}),
        _rec("akvq", 4.5, "1K", {"SceneTransition": [0, 0], "Spot-the-Diff": [1, 1]}),
        _rec("akvq", 3.0, "2K", {"SceneTransition": [1, 1]}),  # another root: adds the 2K cell
        _rec(
            "akvq", 4.4, "1K", {"SceneTransition": [1, 0]}
        ),  # a rerun of one 1K task replaces that task only
    ]
    data = vlm_report.collect(records)
    assert vlm_report.levels(data) == ["1K/2", "2K/2"]
    assert data["akvq"][("SceneTransition", "1K/2")].scores == [1.0, 0.0]
    assert data["akvq"][("Spot-the-Diff", "1K/2")].scores == [1.0, 1.0]
    t1 = vlm_report.method_table(data, ["fp16", "akvq"], "1K/2").splitlines()
    assert t1[0].startswith("| method | KV bits | Transition | Spot-diff | mean")
    assert t1[2].startswith("| fp16 | 16.00 | 100 [100, 100] | 50 [0, 100] | 75.0 |")
    # akvq's 1K row mixes two runs (4.5 and 4.4 bits): their mean, and the mean over 4 samples (3 of 4 right)
    assert t1[3].startswith("| akvq | 4.45 | 50 [0, 100] | 100 [100, 100] | 75.0 |")
    t2 = vlm_report.method_table(data, ["fp16", "akvq"], "2K/2").splitlines()
    assert len(t2) == 3 and t2[2].startswith("| akvq | 3.00 | 100 [100, 100] | 100.0 | 2 |")
    one_cell = vlm_report.as_records(data, "2K/2")
    assert set(one_cell) == {"akvq"} and len(one_cell["akvq"]["details"]) == 2


def test_roles_grid_has_a_column_per_task() -> None:
    records = [
        _rec("akvq_roles_v1_t2", 3.5, "1K", {"SceneTransition": [0, 0]}),
        _rec("akvq_roles_v1_t2", 3.7, "1K", {"ObjectExistence": [1, 0]}),
        _rec("akvq_roles_v2_t2", 4.3, "1K", {"SceneTransition": [1, 1]}),
    ]
    # a partial grid: every row's bits over the tasks all rows ran (a task's share of text moves its bits)
    grid = vlm_report.roles_grid(vlm_report.collect(records), "1K/2").splitlines()
    assert grid[0] == "| vision | text | KV bits (Transition) | Transition | Object |"
    assert grid[2] == "| 1-bit | 2-bit | 3.50 | 0 [0, 0] | 50 [0, 100] |"
    assert grid[3] == "| 2-bit | 2-bit | 4.30 | 100 [100, 100] | – |"
    records.append(_rec("akvq_roles_v2_t2", 4.5, "1K", {"ObjectExistence": [1, 1]}))
    grid = vlm_report.roles_grid(vlm_report.collect(records), "1K/2").splitlines()
    assert grid[0] == "| vision | text | KV bits | Transition | Object |"
    assert grid[2] == "| 1-bit | 2-bit | 3.60 | 0 [0, 0] | 50 [0, 100] |"
    assert grid[3] == "| 2-bit | 2-bit | 4.40 | 100 [100, 100] | 100 [100, 100] |"


def test_roles_pairs_compare_the_grid_item_by_item() -> None:
    """Where the bits belong is read from paired items (100 items' intervals overlap): equal bits moved from vision to
    text, the widths swapped, each side lowered from 4/4; a pair missing a side is left out."""
    records = [
        _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1, 1, 1], "ObjectExistence": [1, 1, 1, 0]}),
        _rec(
            "akvq_roles_v2_t2", 4.3, "1K", {"SceneTransition": [1, 1, 1, 0], "ObjectExistence": [1, 1, 0, 0]}
        ),
        _rec(
            "akvq_roles_v1_t4", 4.3, "1K", {"SceneTransition": [0, 0, 0, 0], "ObjectExistence": [1, 0, 0, 1]}
        ),
        _rec("akvq_roles_v4_t2", 5.4, "1K", {"SceneTransition": [1, 1, 1, 1]}),
        _rec("akvq_roles_v2_t4", 4.9, "1K", {"SceneTransition": [1, 0, 1, 1]}),
    ]
    rows = vlm_report.roles_pairs(vlm_report.collect(records), "1K/4").splitlines()
    assert rows[0] == "| pair (vision/text bits) | Transition | Object |"
    assert rows[2] == (
        "| v2/t2 vs v1/t4 (4.30 vs 4.30 bits: a bit moved from vision to text, equal mean bits) | 3-0 (p = 0.25)"
        " | 1-1 (p = 1) |"
    )
    assert (
        rows[3]
        == "| v4/t2 vs v2/t4 (5.40 vs 4.90 bits: the two widths swapped between vision and text) | 1-0 (p = 1) | – |"
    )
    assert (
        rows[4] == "| fp16 vs v2/t2 (16.00 vs 4.30 bits: 16 bits against 2/2) | 1-0 (p = 1) | 1-0 (p = 1) |"
    )
    assert len(rows) == 5  # no 4/4 record: its two rows are left out
    # where vision outweighs text (4K), moving a bit to text lowers the mean bits: the row no longer says "equal"
    records[2] = _rec(
        "akvq_roles_v1_t4", 2.2, "1K", {"SceneTransition": [0, 0, 0, 0], "ObjectExistence": [1, 0, 0, 1]}
    )
    rows = vlm_report.roles_pairs(vlm_report.collect(records), "1K/4").splitlines()
    assert rows[2].startswith("| v2/t2 vs v1/t4 (4.30 vs 2.20 bits: a bit moved from vision to text) |")
    # a pair's bits are over the tasks both sides ran: v2/t2 at 6.0 on a task v1/t4 lacks does not count there
    records.append(_rec("akvq_roles_v2_t2", 6.0, "1K", {"Spot-the-Diff": [1, 1, 1, 1]}))
    rows = vlm_report.roles_pairs(vlm_report.collect(records), "1K/4").splitlines()
    assert rows[2].startswith("| v2/t2 vs v1/t4 (4.30 vs 2.20 bits: a bit moved from vision to text) |")
    assert vlm_report.roles_pairs(vlm_report.collect(records[:1]), "1K/4") == ""


def test_a_larger_sample_is_a_cell_of_its_own() -> None:
    records = [
        _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 0], "Spot-the-Diff": [1, 1]}),
        _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1, 1, 0], "Spot-the-Diff": [1, 0, 0, 0]}),
    ]
    data = vlm_report.collect(records)
    assert vlm_report.levels(data) == ["1K/2", "1K/4"]
    assert data["fp16"][("SceneTransition", "1K/2")].scores == [1.0, 0.0]
    assert data["fp16"][("Spot-the-Diff", "1K/4")].scores == [1.0, 0.0, 0.0, 0.0]
    assert vlm_report.cell_title("1K/4") == "1K cell, 4 samples per task"
    assert len(vlm_report.as_records(data, "1K/4")["fp16"]["details"]) == 8


def test_report_writes_a_grid_per_cell_and_pairs_in_the_chosen_cell(tmp_path: Path) -> None:
    records = [
        _rec("fp16", 16.0, "1K", {"SceneTransition": [1] * 4}),
        _rec("akvq_roles_v2_t2", 4.3, "1K", {"SceneTransition": [1, 0, 1, 1]}),
        _rec("akvq_roles_v2_t2", 4.3, "1K", {"SceneTransition": [0, 0]}),  # 2 samples: the 1K/2 cell
    ]
    text = vlm_report.report(records, tmp_path, cell="1K/4")
    assert "## Vision x text bits in every layer (1K cell, 4 samples per task" in text
    assert "| 2-bit | 2-bit | 4.30 | 75 [25, 100] |" in text
    assert text.rstrip().endswith("| fp16 vs v2/t2 (16.00 vs 4.30 bits: 16 bits against 2/2) | 1-0 (p = 1) |")
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == text
    assert "(1K cell, 2 samples per task; accuracy" in text  # the grid of the other cell too
    assert "### 1K cell, 2 samples per task" not in text  # no method ran there: no empty method table
    records.append(_rec("akvq", 4.5, "1K", {"SceneTransition": [1, 1, 0, 1]}))
    records.append(_rec("kivi2", 3.8, "1K", {"SceneTransition": [0, 1, 0, 1]}))
    text = vlm_report.report(records, tmp_path, cell="1K/4")
    assert "| fp16 vs akvq | 1-0 (p = 1) |" in text and "| akvq vs kivi2 | 1-0 (p = 1) |" in text
    assert "## Paired on the same samples" not in vlm_report.report(records, tmp_path, cell="2K/4")


def test_paired_table_counts_items_won_and_lost_on_the_same_samples() -> None:
    assert abs(vlm_report.sign_test(15, 1) - 2 * (1 + 16) / 2**16) < 1e-12
    assert vlm_report.sign_test(0, 0) == 1.0 and vlm_report.sign_test(3, 3) == 1.0
    records = [
        _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1, 1, 0], "ObjectExistence": [1, 1, 0, 0]}),
        _rec("akvq_rtn", 4.3, "1K", {"SceneTransition": [0, 0, 1, 0], "ObjectExistence": [1, 1, 0, 0]}),
        _rec("akvq_wht", 4.3, "1K", {"SceneTransition": [1, 1, 1, 1], "ObjectExistence": [1, 0, 0, 1]}),
    ]
    data = vlm_report.collect(records)
    rows = vlm_report.paired_table(data, ["fp16", "akvq_rtn", "akvq_wht"], "1K/4").splitlines()
    assert rows[0] == "| pair | Transition | Object |"
    assert rows[2] == "| akvq_rtn vs akvq_wht | 0-3 (p = 0.25) | 1-1 (p = 1) |"
    assert rows[3] == "| fp16 vs akvq_rtn | 2-0 (p = 0.5) | 0-0 |"
    assert rows[4] == "| fp16 vs akvq_wht | 0-1 (p = 1) | 1-1 (p = 1) |"
    assert len(rows) == 5


def test_a_second_cells_table_goes_beside_the_main_one_without_a_figure(tmp_path: Path) -> None:
    records = [
        _rec("fp16", 16.0, "2K", {"SceneTransition": [1, 1]}),
        _rec("akvq", 3.5, "2K", {"SceneTransition": [1, 0]}),
    ]
    (tmp_path / "table.md").write_text("main\n", encoding="utf-8")
    text = vlm_report.report(records, tmp_path, "2K/2", "table_2k2.md", None)
    assert (tmp_path / "table_2k2.md").read_text(encoding="utf-8") == text
    assert "| fp16 vs akvq | 1-0 (p = 1) |" in text
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == "main\n"  # the main table untouched
    assert not (tmp_path / "examples.png").exists()


@pytest.mark.parametrize(
    ("cell", "extra", "key", "named"),
    [
        ("3K", {}, "CELL", "'3K'"),
        ("8K", {"DTYPE": "bf16"}, "DTYPE", "'bf16'"),
        ("8K", {"LANES": "3"}, "LANES", "'3'"),
        ("8K", {"READ_PATH": "fast"}, "READ_PATH", "'fast'"),
        ("2K", {"GRID": "yes"}, "GRID", "'yes'"),
        ("1K", {"GRID": "1"}, "GRID", "'1K'"),
    ],
)
def test_vlm_tables_refuses_an_unknown_cell_or_setting_in_one_line(
    tmp_path: Path, cell: str, extra: dict[str, str], key: str, named: str
) -> None:
    """A typo in the cell, the dtype, the lanes or the read path must not start hours of evaluation (or write a
    root) before it fails."""
    import subprocess

    records = tmp_path / "r.jsonl"
    env = {"PATH": "/usr/bin:/bin", "SB_ROOTS": str(tmp_path), "PY": "false", **extra}
    p = subprocess.run(
        ["bash", str(ROOT / "scripts" / "vlm_tables.sh"), str(records), cell],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and named in lines[0]
    assert list(tmp_path.iterdir()) == []  # no root made, no records, no lane logs


def test_vlm_tables_long_cell_runs_named_tasks_only(tmp_path: Path) -> None:
    """`vlm_tables.sh R 4K SceneTransition`: both lanes run that task alone (a record per task, so a cell longer
    than one sitting is done a task at a time) on the full cell's root, then the cell's report; a task name that is
    not one is refused in one line before any root is made."""
    import subprocess

    log, fake = tmp_path / "calls", tmp_path / "py"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\n', encoding="utf-8")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SB_ROOTS": str(tmp_path), "PY": str(fake)}
    script, records = str(ROOT / "scripts" / "vlm_tables.sh"), str(tmp_path / "r.jsonl")
    bad = subprocess.run(["bash", script, records, "4K", "SceneTransition,Needle"], capture_output=True, text=True,
                         env=env, check=False)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "TASKS" in lines[0] and "'Needle'" in lines[0]
    assert not log.exists()
    ok = subprocess.run(["bash", script, records, "4K", "SceneTransition,Spot-the-Diff"], capture_output=True,
                        text=True, env=env, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls[0] == f"scripts/make_synthbench.py {tmp_path}/sb4K100 --seed 2026 --samples 100 --cells 4K"
    runs = sorted(c for c in calls if c.startswith("run.py"))
    assert [c.split(" quant=")[1].split()[0] for c in runs] == ["akvq", "fp16"]
    assert all(c.endswith(" task.datasets=[SceneTransition,Spot-the-Diff]") for c in runs)
    assert all(" threads=1 " in c for c in runs)
    assert calls[-1].startswith(f"scripts/vlm_report.py {records} --out results/vlm --cell 4K/100 ")
    # LANES=1: one 2-thread process runs all ten methods off one prefill; READ_PATH reaches run.py
    log.unlink()
    one = subprocess.run(["bash", script, records, "8K", "ObjectExistence"], capture_output=True, text=True,
                         env={**env, "LANES": "1", "READ_PATH": "cached"}, check=False)  # fmt: skip
    assert one.returncode == 0, one.stderr
    runs = [c for c in log.read_text(encoding="utf-8").splitlines() if c.startswith("run.py")]
    assert len(runs) == 1 and " threads=2 " in runs[0] and " quant=fp16 " in runs[0]
    compare = runs[0].split("compare=[")[1].split("]")[0].split(",")
    ten = "fp16 kivi2 skvq rtn2 smoothquant akvq akvq_plus akvq_rtn akvq_wht akvq_tsa".split()
    assert sorted(["fp16", *compare]) == sorted(ten)
    assert runs[0].endswith(" task.datasets=[ObjectExistence] read_path=cached")
    # GRID=1: the vision x text grid's six configs instead of the methods, one 1-bit config a lane, own lane logs
    log.unlink()
    grid = subprocess.run(["bash", script, records, "2K"], capture_output=True, text=True,
                          env={**env, "GRID": "1"}, check=False)  # fmt: skip
    assert grid.returncode == 0, grid.stderr
    runs = [c for c in log.read_text(encoding="utf-8").splitlines() if c.startswith("run.py")]
    lanes = [
        [c.split(" quant=")[1].split()[0], *c.split("compare=[")[1].split("]")[0].split(",")] for c in runs
    ]
    six = {vlm_report.roles_name(v, t) for v in (1, 2, 4) for t in (2, 4)}
    assert len(lanes) == 2 and set(lanes[0]) | set(lanes[1]) == six and len(lanes[0]) == len(lanes[1]) == 3
    assert all(sum("_v1_" in q for q in lane) == 1 for lane in lanes)
    assert all(f"synthbench_root={tmp_path}/sb2K100 " in c for c in runs)
    assert sorted(f.name for f in tmp_path.glob("r_grid_lane_*.log")) == [
        "r_grid_lane_a.log",
        "r_grid_lane_b.log",
    ]


def test_a_bf16_run_is_a_cell_of_its_own_and_paired_with_float32(tmp_path: Path) -> None:
    """The 8K cell runs in bf16 (AMX): its rows must not replace float32 rows of the same samples, and the report
    pairs the two dtypes item by item."""
    fp32 = _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1, 0, 1], "Spot-the-Diff": [1, 1, 1, 1]})
    bf16 = _rec("fp16", 16.0, "1K", {"SceneTransition": [1, 0, 1, 1], "Spot-the-Diff": [1, 1, 1, 0]})
    fp32["config"] = {"model": {"dtype": "float32"}}
    bf16["config"] = {"model": {"dtype": "bfloat16"}}
    data = vlm_report.collect([fp32, bf16])
    assert vlm_report.levels(data) == ["1K/4", "1K/4/bf16"]
    assert vlm_report.cell_title("1K/4/bf16") == "1K cell, 4 samples per task, model in bfloat16"
    rows = vlm_report.dtype_table(data, ["fp16"], "1K/4").splitlines()
    assert (
        rows[2] == "| fp16 | float32 vs bf16 (1K/4/bf16) | 75 / 75 (1-1) | 100 / 75 (1-0) | 87.5 / 75.0 | 4 |"
    )
    text = vlm_report.report([fp32, bf16], tmp_path, cell="1K/4", figure_name=None)
    assert "### 1K cell, 4 samples per task, model in bfloat16" in text
    assert "## The same samples in float32 and another dtype" in text
    assert "float32 and another dtype" not in vlm_report.report(
        [fp32], tmp_path, cell="1K/4", figure_name=None
    )


def test_a_short_float32_root_pairs_with_the_first_items_of_a_longer_bf16_one() -> None:
    """8K: float32 ran 20 items, bf16 100 of the same seed (the first 20 identical): pair on the items both ran."""
    fp32 = _rec("fp16", 16.0, "8K", {"SceneTransition": [1, 1]})
    bf16 = _rec("fp16", 16.0, "8K", {"SceneTransition": [1, 0, 0, 0]})
    fp32["config"] = {"model": {"dtype": "float32"}}
    bf16["config"] = {"model": {"dtype": "bfloat16"}}
    rows = vlm_report.dtype_table(vlm_report.collect([fp32, bf16]), ["fp16"], "8K/2").splitlines()
    assert rows[2] == "| fp16 | float32 vs bf16 (8K/4/bf16) | 100 / 50 (1-0) | 100.0 / 50.0 | 2 |"


def test_a_bf16_cell_alone_reports_without_a_dtype_pairing(tmp_path: Path) -> None:
    """The 8K cell's own table (--cell 8K/100/bf16): no float32 run of it, so no pairing, and no crash."""
    fp16 = _rec("fp16", 16.0, "8K", {"SceneTransition": [1, 0]})
    akvq = _rec("akvq", 2.9, "8K", {"SceneTransition": [0, 0]})
    for r in (fp16, akvq):
        r["config"] = {"model": {"dtype": "bfloat16"}}
    text = vlm_report.report([fp16, akvq], tmp_path, cell="8K/2/bf16", figure_name=None)
    assert "### 8K cell, 2 samples per task, model in bfloat16" in text
    assert "| fp16 vs akvq | 1-0 (p = 1) |" in text
    assert "another dtype" not in text


def _on(rec: dict[str, Any], sha: str, seed: int | None = 2026) -> dict[str, Any]:
    rec["config"] = {"model": {"sha256": sha * 64}, **({"data": {"seed": seed}} if seed is not None else {})}
    return rec


def test_records_of_two_weights_files_or_two_seeds_are_not_one_row() -> None:
    """A retrained file's records, or a validation root's, must not silently replace the shipped file's rows."""
    a = _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1]}), "a")
    b = _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [0, 1]}), "b")
    with pytest.raises(
        ValueError,
        match=r"fp16 on SceneTransition \(1K/2\) has records of two weights files \(aaaaaaaa, bbbbbbbb\)",
    ):
        vlm_report.collect([a, b])
    val = _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [0, 0]}), "a", 4242)
    with pytest.raises(ValueError, match=r"roots of two seeds \(2026, 4242\)"):
        vlm_report.collect([a, val])
    old = _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [0, 0]}), "a", None)  # before roots were stamped
    assert vlm_report.collect([old, a])["fp16"][("SceneTransition", "1K/2")].scores == [1.0, 1.0]
    both = vlm_report.collect([a, b], by_weights=True)
    assert set(both) == {"fp16@aaaaaaaa", "fp16@bbbbbbbb"}


def test_the_weights_table_pairs_each_file_with_the_first_one_in_the_cell(tmp_path: Path) -> None:
    other_cell = _on(
        _rec("fp16", 16.0, "8K", {"SceneTransition": [1, 1]}), "c"
    )  # not in 1K/4: not the reference
    shipped = _on(_rec("fp16", 16.0, "1K", {"ImageNeedleInAHaystack": [1, 1, 0, 0]}), "a")
    recipe = _on(_rec("fp16", 16.0, "1K", {"ImageNeedleInAHaystack": [1, 0, 1, 1]}), "b")
    akvq = _on(_rec("akvq", 4.5, "1K", {"ImageNeedleInAHaystack": [0, 0, 0, 1]}), "b")
    text = vlm_report.report(
        [other_cell, shipped, recipe, akvq], tmp_path, "1K/4", "w.md", None, by_weights=True
    )
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    assert rows[0] == "| method | weights | Needle | mean | n/task |"
    assert rows[1] == "| fp16 | aaaaaaaa (reference) | 50 [0, 100] | 50.0 | 4 |"
    assert rows[2] == "| fp16 | bbbbbbbb | 75 [25, 100]; 2-1 (p = 1) | 75.0 | 4 |"
    assert (
        rows[3] == "| akvq | bbbbbbbb | 25 [0, 75] | 25.0 | 4 |"
    )  # no akvq on the reference: nothing to pair
    assert len(rows) == 4 and (tmp_path / "w.md").read_text(encoding="utf-8") == text


def test_the_script_says_in_one_line_that_records_mix_seeds_and_keeps_one_seed(tmp_path: Path) -> None:
    import json
    import subprocess

    path = tmp_path / "r.jsonl"
    recs = [
        _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1]}), "a"),
        _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [0, 0]}), "a", 4242),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    cmd = [sys.executable, str(ROOT / "scripts" / "vlm_report.py"), str(path), "--out", str(tmp_path / "o")]
    cmd += ["--cell", "1K/2", "--figure", "none"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith("--seed S keeps one")
    p = subprocess.run([*cmd, "--seed", "4242"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert "| fp16 | 16.00 | 0 [0, 0] | 0.0 | 2 |" in (tmp_path / "o" / "table.md").read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize(
    ("weights", "dtype"), [("absent.safetensors", ""), ("w.safetensors", "bfloat16"), ("", "")]
)
def test_vlm_tables_candidate_refuses_a_missing_file_or_another_dtype_in_one_line(
    tmp_path: Path, weights: str, dtype: str
) -> None:
    import subprocess

    (tmp_path / "w.safetensors").write_bytes(b"x")
    env = {"PATH": "/usr/bin:/bin", "SB_ROOTS": str(tmp_path / "roots"), "PY": "false", "DTYPE": dtype}
    args = ["bash", str(ROOT / "scripts" / "vlm_tables.sh"), str(tmp_path / "r.jsonl"), "candidate"]
    p = subprocess.run(
        [*args, *([weights] if weights else [])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and ("DTYPE" in lines[0] if dtype else "WEIGHTS" in lines[0])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.safetensors"]  # no root, records or log


def _shipped_sha() -> str:
    """The shipped synth-vlm file's SHA-256, from its model YAML (what vlm_tables.sh reads)."""
    yaml = (ROOT / "configs" / "model" / "synth-vlm.yaml").read_text(encoding="utf-8")
    return next(x.split()[1] for x in yaml.splitlines() if x.startswith("sha256:"))


def _candidate(tmp_path: Path, fail_on: str = "") -> tuple[Any, list[str]]:
    """`vlm_tables.sh OUT/cand.jsonl candidate w.safetensors` with a stand-in interpreter that logs its arguments
    (and exits 3 when they contain `fail_on`); returns the process and the logged calls."""
    import subprocess

    (tmp_path / "w.safetensors").write_bytes(b"weights")
    log = tmp_path / "calls"
    fake = tmp_path / "py"
    fail = f'case "$*" in *{fail_on}*) exit 3 ;; esac\n' if fail_on else ""
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\n{fail}', encoding="utf-8")
    fake.chmod(0o755)
    (tmp_path / "roots").mkdir()
    env = {"PATH": "/usr/bin:/bin", "SB_ROOTS": str(tmp_path / "roots"), "PY": str(fake)}
    p = subprocess.run(
        ["bash", str(ROOT / "scripts" / "vlm_tables.sh"), str(tmp_path / "out" / "cand.jsonl"), "candidate"]
        + ["w.safetensors"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return p, log.read_text(encoding="utf-8").splitlines()


def test_vlm_tables_candidate_runs_three_methods_on_the_file_then_pairs_it_with_the_shipped_records(
    tmp_path: Path,
) -> None:
    """The wiring, with a stand-in interpreter that logs its arguments: the weights file (relative to the caller)
    and its SHA-256 reach run.py, the shipped table's root and count, the paired report, then the same on the
    validation root."""
    import hashlib

    p, calls = _candidate(tmp_path)
    assert p.returncode == 0, p.stderr
    w, roots, records = tmp_path / "w.safetensors", tmp_path / "roots", tmp_path / "out" / "cand.jsonl"
    make, run, report, make_val = calls[:4]
    val_runs, val_report = sorted(calls[4:6]), calls[6:]
    assert make == f"scripts/make_synthbench.py {roots}/sb1K100 --seed 2026 --samples 100 --cells 1K"
    assert run.startswith("run.py model=synth-vlm task=synthbench task.limit=100 ")
    assert f"synthbench_root={roots}/sb1K100 records={records} quant=fp16 compare=[akvq,akvq_plus]" in run
    assert f"model.weights={w} model.sha256={hashlib.sha256(b'weights').hexdigest()}" in run
    # paired with the shipped file's own records (its sha256 from the YAML): a stale records path fails in one line
    shipped = _shipped_sha()
    pair = f"--weights {shipped[:8]},{hashlib.sha256(b'weights').hexdigest()[:8]} --cell 1K/100 --out {records.parent}"
    assert report == (
        f"scripts/vlm_report.py results/vlm/synthbench_full1_shipped.jsonl {records} --by-weights --seed 2026 "
        f"{pair} --table table_cand.md"
    )
    # then the validation root, where candidates are chosen: fp16 on the two contested tasks, paired with the shipped
    assert make_val == f"scripts/make_synthbench.py {roots}/sbval --seed 4242 --samples 100 --cells 1K"
    for run_val, task in zip(val_runs, ["ImageNeedleInAHaystack", "ObjectExistence"], strict=True):
        assert run_val.startswith(f"run.py model=synth-vlm task=synthbench/{task} task.limit=100 threads=1 ")
        assert (
            f"synthbench_root={roots}/sbval records={records} quant=fp16 compare=[] model.weights={w}"
            in run_val
        )
    assert val_report == [
        f"scripts/vlm_report.py results/vlm/synthbench_full1_val.jsonl {records} --by-weights --seed 4242 "
        f"{pair} --table table_cand_val.md --figure none"
    ]


@pytest.mark.parametrize("case", ["missing", "no synthbench", "no such seed"])
def test_the_script_refuses_a_missing_file_or_no_records_before_it_writes_a_table(
    tmp_path: Path, case: str
) -> None:
    """A typo in the records path used to write an empty table over the committed one (--out's default)."""
    import json
    import subprocess

    path = tmp_path / "r.jsonl"
    if case != "missing":
        rec = (
            {"task": "ppl", "quant": "fp16"}
            if case == "no synthbench"
            else _rec("fp16", 16.0, "1K", {"X": [1]})
        )
        path.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "vlm_report.py"),
        str(path),
        "--out",
        str(out),
        "--seed",
        "7",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and ("no such file" if case == "missing" else "no synthbench records") in last
    assert not out.exists()


def test_weights_keeps_the_named_files_and_refuses_an_unknown_one_in_one_line(tmp_path: Path) -> None:
    """A records file that holds other candidates too (synthbench_context.jsonl) gives a table of the files named."""
    import json
    import subprocess

    path = tmp_path / "r.jsonl"
    recs = [
        _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [1, 1]}), "a"),
        _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [0, 1]}), "b"),
        _on(_rec("fp16", 16.0, "1K", {"SceneTransition": [0, 0]}), "c"),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = tmp_path / "o"
    cmd = [sys.executable, str(ROOT / "scripts" / "vlm_report.py"), str(path), "--out", str(out)]
    cmd += ["--cell", "1K/2", "--figure", "none", "--by-weights"]
    p = subprocess.run([*cmd, "--weights", "AAAA,cccc"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    rows = [r for r in (out / "table.md").read_text(encoding="utf-8").splitlines() if r.startswith("| fp16")]
    assert [r.split(" | ")[1] for r in rows] == ["aaaaaaaa (reference)", "cccccccc"]
    for bad, said in [
        ("a,dddd", "no synthbench records of weights dddd... in"),
        ("a,x1", "'x1' is not a SHA-256"),
    ]:
        p = subprocess.run([*cmd, "--weights", bad], capture_output=True, text=True, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and said in lines[-1]


def test_vlm_tables_candidate_stops_when_a_validation_lane_fails(tmp_path: Path) -> None:
    """A lane that fails must not leave a validation table without its task: the script stops and says where."""
    p, calls = _candidate(tmp_path, fail_on="synthbench/ObjectExistence")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "validation lane failed (rc 3)" in lines[0] and "cand_val_" in lines[0]
    # no validation table from half the lanes
    assert not any(c.startswith("scripts/vlm_report.py") and "--seed 4242" in c for c in calls)


def test_the_records_a_candidate_is_paired_with_are_the_shipped_files() -> None:
    """Shipping a file means moving `vlm_tables.sh`'s SHIPPED_RECORDS / SHIPPED_VAL to its records: each must hold
    fp16 records of the weights the model YAML names on its root, or a candidate is paired with an older file."""
    from akvq.records import read_records

    script = (ROOT / "scripts" / "vlm_tables.sh").read_text(encoding="utf-8")
    shipped = _shipped_sha()
    for var, seed in [("SHIPPED_RECORDS", "2026"), ("SHIPPED_VAL", "4242")]:
        found = re.search(rf"^{var}=(\S+)$", script, re.MULTILINE)
        assert found, f"vlm_tables.sh sets no {var}"
        fp16 = [
            r
            for r in read_records(ROOT / found.group(1))
            if vlm_report.is_synthbench(r)
            and r["quant"] == "fp16"
            and vlm_report.weights_of(r) == shipped
            and vlm_report.seed_of(r) == seed
        ]
        assert fp16, f"{var}={found.group(1)} holds no fp16 records of {shipped[:8]} on seed {seed}"


def test_the_needle_by_depth_splits_items_by_where_the_answer_sits(tmp_path: Path) -> None:
    # 8 items of 8 images: answers at images 1, 2 (1st quarter), 3, 4, 5, 6, 7, 8; right only at the ends.
    # The answers of the four wrong items: two name none of the options (a number off the list, text); one names
    # another option; one is empty, which MileBench's matcher reads as option C, so it names an option too.
    preds = {0: "1", 1: "2", 2: "5", 3: "99", 4: "no idea", 5: "", 6: "Image 7", 7: "8"}
    det = [
        {"dataset": "ImageNeedleInAHaystack", "level": "8K", "sample_id": i, "answer": str(i + 1), "images": 8,
         "score": float(i in (0, 1, 6, 7)), "prediction": preds[i]}
        for i in range(8)
    ]  # fmt: skip
    root = tmp_path / "root"
    (root / "ImageNeedleInAHaystack").mkdir(parents=True)
    data_json = [
        {"sample_id": i, "task_instruction_id": 0, "response": str(i + 1),
         "task_instance": {"context": "", "images_path": [], "choice_list": [str(i + 1), "5", "6", "3"]}}
        for i in range(8)
    ]  # fmt: skip
    meta = {"task_instruction": ["Find the image."], "question_type": "multi-choice"}
    (root / "ImageNeedleInAHaystack" / "ImageNeedleInAHaystack.json").write_text(
        json.dumps({"meta_data": meta, "data": data_json})
    )
    fp16 = {"task": "synthbench", "quant": "fp16", "kv_effective_bits": 16.0, "details": det, "config": {}}
    recs = [
        fp16,
        # an older record whose answers are not image numbers: no row, not a crash
        _rec("akvq", 3.0, "8K", {"ImageNeedleInAHaystack": [1] * 8}),
    ]
    data = vlm_report.collect(recs)
    rows = vlm_report.depth_table(data, ["fp16", "akvq"], "8K/8").splitlines()
    assert rows[0] == "| method | 1st quarter | 2nd | 3rd | 4th | ends / middle | p | no option named |"
    # no root on this machine: the last column is empty
    assert rows[2] == "| fp16 | 100 (2/2) | 0 (0/2) | 0 (0/2) | 100 (2/2) | 100 / 0 | 0.029 | – |"
    assert len(rows) == 3
    assert vlm_report.depth_table(data, ["akvq"], "8K/8") == ""
    fp16["config"] = {"task": {"synthbench_root": str(root)}}
    rows = vlm_report.depth_table(vlm_report.collect([fp16]), ["fp16"], "8K/8").splitlines()
    assert rows[2].endswith("| 100 / 0 | 0.029 | 25 % |")  # "99" and "no idea" of 8
    # a root at that path holding other items (an answer differs from the record's) is not read
    data_json[3]["response"] = "4x"
    (root / "ImageNeedleInAHaystack" / "ImageNeedleInAHaystack.json").write_text(
        json.dumps({"meta_data": meta, "data": data_json})
    )
    rows = vlm_report.depth_table(vlm_report.collect([fp16]), ["fp16"], "8K/8").splitlines()
    assert rows[2].endswith("| 0.029 | – |")
    # a retrained file's report (--by-weights) has the section too, a row per file
    other = {**fp16, "details": [{**d, "score": 1.0 - d["score"]} for d in det]}
    text = vlm_report.report(
        [_on(dict(fp16), "a"), _on(other, "b")], tmp_path / "w", "8K/8", "w.md", None, by_weights=True
    )
    depth = text.split("## The needle by depth, each weights file")[1].splitlines()
    assert [r.split(" | ")[0] for r in depth if r.startswith("| fp16")] == [
        "| fp16@aaaaaaaa",
        "| fp16@bbbbbbbb",
    ]
    assert [r for r in depth if r.startswith("| fp16@bbbbbbbb")][0].split(" | ")[5] == "0 / 100"
    # Fisher's exact test against values worked by hand (the 4/4 vs 0/4 table: 2 / C(8, 4) = 1/35)
    assert abs(vlm_report.fisher_exact(4, 0, 0, 4) - 2 / 70) < 1e-12
    assert vlm_report.fisher_exact(2, 2, 2, 2) == pytest.approx(1.0)
    assert abs(vlm_report.fisher_exact(3, 1, 1, 3) - 34 / 70) < 1e-12
