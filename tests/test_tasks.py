"""Adding a task, demonstrated: a test-only toy task registered in one place (the `akvq.tasks` registry), with its
config keys declared on the class, run through `run.py` on a tiny model (docs/architecture.md, "Add a task")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import run_main

from akvq import api, records, tasks
from akvq.runner.validate import Int
from akvq.tasks.base import Task, TaskResult, cfg_get


class ToyTask(Task):
    """Greedy-decode `new_tokens` tokens after a fixed prompt through the method's cache; the metric is the share
    of them equal to the prompt's first token (a number, nothing more)."""

    primary_metric = "share"
    config_schema = {"new_tokens": Int(1)}

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        n = int(cfg_get(cfg if cfg is not None else self.cfg, "new_tokens", 4))
        inputs = loaded.tokenizer(["The capital of France is"], return_tensors="pt")
        out, cache = api.generate(loaded.model, dict(inputs), policy, max_new_tokens=n, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        report = cache.memory_report()
        share = float((new == inputs["input_ids"][0, 0]).float().mean())
        return TaskResult(
            {"share": share, "n": float(new.numel())}, report.total_bytes, report.effective_bits, n
        )


def test_toy_task_runs_through_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. the one registry line (a real task: `akvq/tasks/__init__.py`, `_FIXED`)
    monkeypatch.setitem(tasks._FIXED, "toy", f"{__name__}:ToyTask")
    # 2. its config (a real task: `configs/task/toy.yaml`)
    extra = tmp_path / "configs" / "task"
    extra.mkdir(parents=True)
    (extra / "toy.yaml").write_text("name: toy\nnew_tokens: 3\n")
    recs = tmp_path / "runs.jsonl"
    argv = ["-m", "task=toy", "model=tiny-llama", "quant=fp16,kivi2", f"records={recs}", "wandb.mode=disabled",
            f"hydra.searchpath=[file://{extra.parent}]", f"hydra.sweep.dir={tmp_path / 'multirun'}"]  # fmt: skip
    assert run_main(argv, monkeypatch) == 0
    got = records.read_records(recs)
    assert [(r["task"], r["quant"]) for r in got] == [("toy", "fp16"), ("toy", "kivi2")]
    for r in got:
        assert r["primary_metric"] == "share" and r["metrics"]["n"] == 3.0
        assert r["kv_bytes"] > 0 and r["num_tokens"] == 3
    # the class's declared keys are checked like any task's, before anything loads
    (extra / "toy.yaml").write_text("name: toy\nnew_tokens: 0\n")
    assert run_main([*argv[:4], f"records={tmp_path / 'bad.jsonl'}", *argv[5:]], monkeypatch) == 2
    assert not (tmp_path / "bad.jsonl").exists()
