"""The runner with fake model loading and a fake task: records, resume, validation order, W&B offline files,
and a real Hydra multirun through run.py's entry point."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import FakeTask, run_main, run_py
from omegaconf import OmegaConf

from akvq import records, runner
from akvq.errors import ConfigError
from akvq.policies import quant_config

REPO = Path(__file__).resolve().parent.parent


def make_cfg(tmp_path: Path, **over: Any) -> Any:
    base = {
        "model": {"name": "fake-lm", "source": "tiny", "family": "llama", "tiny_kind": "llama"},
        "task": OmegaConf.to_container(OmegaConf.load(REPO / "configs/task/ppl_quick.yaml")),
        "quant": quant_config("akvq"),
        "quant_name": "akvq",
        "compare": ["fp16", "kivi2"],
        "records": str(tmp_path / "runs.jsonl"),
        "redo": False,
        "seed": 0,
        "threads": None,
        "wandb": {"mode": "disabled"},
    }
    cfg = OmegaConf.create(base)
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, force_add=True, merge=False)  # a new task replaces the old one
    return cfg


def test_one_process_compares_quants_and_records(tmp_path: Path, fakes: SimpleNamespace, capsys: Any) -> None:
    rows = runner.main(make_cfg(tmp_path), fakes.session)
    assert [r["quant"] for r in rows] == ["fp16", "kivi2", "akvq"]
    assert fakes.loads == 1  # one model load for the three runs
    got = records.read_records(tmp_path / "runs.jsonl")
    assert [r["quant"] for r in got] == ["fp16", "kivi2", "akvq"]
    for r in got:
        assert set(records.RECORD_KEYS) <= set(r)
        assert r["model"] == "fake-lm" and r["task"] == "ppl"
        assert r["peak_memory_bytes"] > 0 and r["tokens_per_second"] > 0 and r["wall_seconds"] >= 0
        assert r["config"]["quant"] == quant_config(r["quant"])
        assert "compare" not in r["config"] and r["primary_metric"] == "ppl"
        assert r["details"] == {"windows": [1.0, 2.0]}
    assert len({r["config_hash"] for r in got}) == 3
    out = capsys.readouterr().out
    for word in ("quant", "ppl", "eff. bits", "KV bytes", "peak mem", "tok/s", "fp16", "kivi2", "akvq"):
        assert word in out


def test_resume_skips_completed_runs(tmp_path: Path, fakes: SimpleNamespace) -> None:
    cfg = make_cfg(tmp_path)
    runner.main(cfg, fakes.session)
    assert len(fakes.task.calls) == 3
    # a killed sweep: the last run's record never got written
    path = tmp_path / "runs.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")
    rows = runner.main(cfg, fakes.session)
    assert len(fakes.task.calls) == 4 and fakes.loads == 1  # the session still holds the model
    assert [r["quant"] for r in rows] == ["fp16", "kivi2", "akvq"]
    # everything recorded: nothing runs, no model is asked for
    runner.main(
        cfg, runner.Session(load_model=None, validate_model=lambda c: None, get_task=lambda n, c: fakes.task)
    )
    assert len(fakes.task.calls) == 4
    # unless asked
    runner.main(make_cfg(tmp_path, redo=True), fakes.session)
    assert len(fakes.task.calls) == 7
    assert len(records.read_records(path)) == 6


def test_reporting_keys_do_not_change_the_hash(tmp_path: Path, fakes: SimpleNamespace) -> None:
    a = runner.plan(make_cfg(tmp_path), fakes.session)
    b = runner.plan(
        make_cfg(tmp_path, records="x.jsonl", **{"wandb.mode": "offline"}, compare=["kivi2", "fp16"]),
        fakes.session,
    )
    assert {p.quant: p.config_hash for p in a} == {p.quant: p.config_hash for p in b}
    c = runner.plan(make_cfg(tmp_path, **{"task.windows": 3}), fakes.session)
    assert a[0].config_hash != c[0].config_hash


def test_overridden_quant_fields_get_their_own_label(tmp_path: Path, fakes: SimpleNamespace) -> None:
    plans = runner.plan(make_cfg(tmp_path, compare=[], **{"quant.text_bits": 8}), fakes.session)
    assert [p.quant for p in plans] == ["akvq[text_bits=8]"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"compare": ["fp16", "nope"]}, "'nope' is not a quant config"),
        ({"quant.bits": 5}, "bits=5"),
        ({"quant.colour": "red"}, "colour"),
        ({"quant.policy": "zip"}, "unknown quant policy"),
        ({"task.name": ""}, 'task.name="": must be a task registry name'),
        ({"read_path": "fast"}, r"read_path=\"fast\": must be one of \['dequantize', 'cached'\]"),
    ],
)
def test_bad_configs_fail_before_loading(
    tmp_path: Path, fakes: SimpleNamespace, over: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        runner.main(make_cfg(tmp_path, **over), fakes.session)
    assert fakes.loads == 0
    assert not (tmp_path / "runs.jsonl").exists()


def test_image_task_on_text_model_is_refused(tmp_path: Path, fakes: SimpleNamespace) -> None:
    fakes.task = FakeTask(needs_images=True)
    with pytest.raises(ConfigError, match="text-only"):
        runner.main(make_cfg(tmp_path), fakes.session)
    assert fakes.loads == 0
    vlm = {"model.family": "llava", "model.tiny_kind": "llava"}
    runner.plan(make_cfg(tmp_path, **vlm), fakes.session)  # a VLM is fine
    # the real task classes say whether they feed images (Task.needs_images), the one place that decides
    with pytest.raises(ConfigError, match="text-only"):
        runner.plan(make_cfg(tmp_path, task={"name": "milebench/ALFRED"}), runner.Session())


def test_secrets_never_reach_records(tmp_path: Path, fakes: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match="hub_token"):  # an unknown key is refused, secret or not
        runner.main(make_cfg(tmp_path, compare=[], hub_token="hf_SECRET"), fakes.session)
    cfg = make_cfg(tmp_path, compare=[], **{"wandb.api_key": "wb_SECRET"})
    runner.main(cfg, fakes.session)
    text = (tmp_path / "runs.jsonl").read_text()
    assert "SECRET" not in text and records.REDACTED in text


def test_large_details_go_to_a_sidecar(tmp_path: Path, fakes: SimpleNamespace) -> None:
    fakes.task = FakeTask(details={"logits": list(range(100_000))})
    (rec,) = runner.main(make_cfg(tmp_path, compare=[]), fakes.session)
    assert "details" not in rec
    side = tmp_path / rec["details_path"]
    assert json.loads(side.read_text())["logits"][-1] == 99_999


def test_multirun_runs_only_each_jobs_quant() -> None:
    hyd = {"runtime": {"choices": {"quant": "kivi2"}}, "mode": "RunMode.MULTIRUN", "overrides": {"task": []}}
    cfg = OmegaConf.create({"quant": {"policy": "kivi"}, "compare": ["fp16", "kivi2"], "hydra": hyd})
    assert runner.quant_names(cfg) == (["kivi2"], "kivi2")
    cfg.hydra.overrides.task = ["quant=kivi2", "compare=[fp16]"]
    assert runner.quant_names(cfg) == (["fp16", "kivi2"], "kivi2")
    cfg.hydra.mode = "RunMode.RUN"
    cfg.hydra.overrides.task = []
    assert runner.quant_names(cfg) == (["fp16", "kivi2"], "kivi2")


def test_wandb_offline_run_writes_local_files(
    tmp_path: Path, fakes: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.task = FakeTask(details=[{"prediction": "red", "answer": "red", "score": 1.0}, {"prediction": "b"}])
    cfg = make_cfg(
        tmp_path, compare=[], wandb={"mode": "offline", "dir": str(tmp_path / "wb"), "init_timeout": 30}
    )
    with caplog.at_level("INFO", logger="akvq.tracking"):
        runner.main(cfg, fakes.session)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")) and (runs[0] / "files").is_dir()
    assert f"W&B offline run in {runs[0]} (upload: `wandb sync {runs[0]}`)" in caplog.text
    (table,) = (runs[0] / "files" / "media" / "table").glob("samples_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["prediction", "answer", "score"] and data["data"][1] == ["b", None, None]


def test_wandb_online_without_account_does_not_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from akvq import tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    t = tracking.start({"mode": "online", "dir": str(tmp_path)}, "x", {"a": 1}, tmp_path)
    assert t.mode == "offline"  # fell back instead of prompting for a key
    t.log({"m": {"x": 1.0}})
    t.finish()
    assert tracking.start({"mode": "disabled"}, "x", {}, tmp_path).active is False


def test_hydra_multirun_through_run_py(tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                      capsys: Any) -> None:  # fmt: skip
    """`python run.py -m quant=fp16,kivi2 ...` in-process (fake model and task): two jobs, two records."""
    assert run_py(tmp_path, monkeypatch, fakes, "model=fake-lm", "quant=fp16,kivi2") == 0
    got = records.read_records(tmp_path / "runs.jsonl")
    assert [r["quant"] for r in got] == ["fp16", "kivi2"]  # compare ignored in a sweep
    assert fakes.loads == 1  # the jobs of a local sweep share run.py's session and its model
    summary = capsys.readouterr().out.split("sweep summary")[-1]
    assert "fp16" in summary and "kivi2" in summary


@pytest.mark.slow
def test_real_stack_on_tiny_llama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The composed default with a tiny random llama and a small ppl: real policies, cache and task, two quants."""
    import warnings

    from conftest import tiny
    from hydra import compose, initialize_config_dir

    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")
    session = runner.Session(load_model=lambda model_cfg: tiny("llama"))
    overrides = [
        "model=tiny-llama",
        "task.prompt_len=48",
        "task.cont_len=6",
        "task.windows=2",
        "task.bootstrap=20",
        "quant=kivi2",
        "compare=[fp16]",
        f"records={tmp_path / 'runs.jsonl'}",
        "wandb.mode=disabled",
    ]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    rows = runner.main(cfg, session)
    assert [(r["model"], r["task"], r["quant"]) for r in rows] == [
        ("tiny-llama", "ppl_quick", q) for q in ("fp16", "kivi2")
    ]
    for r in rows:
        assert math.isfinite(r["metrics"]["ppl"]) and r["kv_bytes"] > 0 and r["kv_effective_bits"] > 0
        # the two ran off one prefill per window, each timed on its own work (the prefill counted in each)
        assert r["num_tokens"] == 12 and r["tokens_per_second"] > 0 and r["prefill_shared_by"] == 2
    assert rows[0]["kv_effective_bits"] >= 16
    assert "ppl" in capsys.readouterr().out
    assert len(records.read_records(tmp_path / "runs.jsonl")) == 2
    overrides[-2] = f"records={tmp_path / 'alone.jsonl'}"
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "share_prefill=false"], return_hydra_config=True)
    alone = runner.main(cfg, session)
    for a, s in zip(alone, rows, strict=True):
        assert "prefill_shared_by" not in a and a["tokens_per_second"] > 0
        assert (a["metrics"], a["kv_bytes"], a["config_hash"]) == (
            s["metrics"],
            s["kv_bytes"],
            s["config_hash"],
        )


def test_run_py_bad_config_exits_2_before_loading(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`python run.py quant.bits=5`: one clear error line and exit status 2, no model load, no record."""
    recs = tmp_path / "runs.jsonl"
    argv = ["quant.bits=5", f"records={recs}", "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'out'}"]
    assert run_main(argv, monkeypatch, fakes.session) == 2
    out = capsys.readouterr()
    assert "ConfigError: quant.bits=5: must be one of [1, 2, 3, 4, 8]" in out.out + out.err
    assert fakes.loads == 0 and not recs.exists()


def test_data_root_reaches_the_task_but_not_the_hash(tmp_path: Path, fakes: SimpleNamespace) -> None:
    task = {"name": "milebench", "milebench_root": None, "datasets": ["ALFRED"]}
    over = {"model.family": "llava", "model.tiny_kind": "llava", "compare": [], "task": task}
    a = runner.plan(make_cfg(tmp_path, milebench_root="/data/a", **over), fakes.session)
    b = runner.plan(make_cfg(tmp_path, milebench_root="/mnt/b", **over), fakes.session)
    assert a[0].task_cfg.milebench_root == "/data/a" and b[0].task_cfg.milebench_root == "/mnt/b"
    assert a[0].config_hash == b[0].config_hash


def test_results_of_other_code_are_flagged(tmp_path: Path, fakes: SimpleNamespace, capsys: Any) -> None:
    cfg = make_cfg(tmp_path, compare=[])
    (row,) = runner.main(cfg, fakes.session)
    now = records.git_rev()
    assert runner.is_stale({"git_rev": "0123abc"}, "4567def") and runner.is_stale(
        {"git_rev": "4567def+dirty"}, "4567def"
    )
    assert not runner.is_stale({"git_rev": "4567def"}, "4567def+dirty")  # clean results, edited checkout
    old = dict(row, git_rev="0123abc")
    table = runner.format_table([old])
    assert "akvq *" in table and f"now {now}" in table
    assert ("akvq *" in runner.format_table([row])) == now.endswith("+dirty")
