"""The lmms-eval plugin: entry point, model class contract, the fixture MMMU task through the runner and the CLI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "scripts" / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_all(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def test_entry_point_gives_lmms_eval_a_manifest() -> None:
    (ep,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "akvq"]
    from lmms_eval.models import get_model
    from lmms_eval.models.registry_v2 import ModelManifest

    from akvq.integrations.lmms_eval import AKVQLmms

    payload = ep.load()()
    assert (
        isinstance(payload, ModelManifest)
        and payload.simple_class_path == "akvq.integrations.lmms_eval.AKVQLmms"
    )
    assert get_model("akvq") is AKVQLmms


def test_model_class_contract_and_clean_keeps_the_model() -> None:
    from conftest import tiny

    from akvq.integrations.lmms_eval import AKVQLmms, model_spec
    from akvq.policies import make_policy

    lm = AKVQLmms(loaded=tiny("llava"), policy=make_policy("fp16"), batch_size=3, chat_template=False)
    lm.clean()
    assert lm.loaded.model is not None and lm.batch_size == 3
    assert lm._prompt("What is shown?", 2) == "<image> <image>\nWhat is shown?"
    assert lm._prompt("<image> left, <image> right", 2) == "<image> left, <image> right"
    assert model_spec("tiny-llava").tiny_kind == "llava"
    assert model_spec("llava-hf/llava-1.5-7b-hf", dtype="float16").path == "llava-hf/llava-1.5-7b-hf"
    assert AKVQLmms(loaded=lm.loaded, quant="kivi2").policy == make_policy("kivi2")
    assert AKVQLmms(loaded=lm.loaded, quant="akvq", **{"quant.window": 64}).policy.window == 64


def test_loglikelihood_reads_the_continuation_through_the_cache() -> None:
    import torch
    from conftest import image, tiny
    from lmms_eval.api.instance import Instance

    from akvq.integrations.lmms_eval import AKVQLmms
    from akvq.models.prompting import build_inputs
    from akvq.policies import make_policy

    loaded = tiny("llava")
    img = image(56, 56, 7)
    lm = AKVQLmms(loaded=loaded, policy=make_policy("fp16"), chat_template=False)
    lm.task_dict = {"t": {"test": [{"img": img}]}}
    args = ("<image> The colour is", " a bright red", lambda d: [d["img"]], 0, "t", "test")
    req = Instance("loglikelihood", args, 0, {"task": "t", "doc_id": 0, "repeats": 1})
    (out,) = lm.loglikelihood([req])
    logp, greedy = out.text  # what lmms-eval's unwrap_generation_output hands to the task
    # Reference: one forward over context + continuation without any cache.
    ctx = build_inputs(loaded, ["<image> The colour is"], [[img]])
    cont = loaded.tokenizer.encode(" a bright red", add_special_tokens=False)
    ids = torch.cat([ctx["input_ids"], torch.tensor([cont])], dim=1)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, pixel_values=ctx["pixel_values"]).logits
    ref = torch.log_softmax(logits.float(), -1)[0, ctx["input_ids"].shape[1] - 1 : -1]
    assert logp == pytest.approx(float(ref.gather(1, torch.tensor(cont)[:, None]).sum()), abs=1e-3)
    assert isinstance(greedy, bool) and lm.stats.kv_bytes > 0


@pytest.mark.slow
def test_fixture_mmmu_through_the_runner(
    fixtures: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import tiny
    from hydra import compose, initialize_config_dir

    from akvq import records, runner

    monkeypatch.setenv("AKVQ_FIXTURES", str(fixtures["include_path"].parent))
    session = runner.Session(load_model=lambda model_cfg: tiny("llava"))
    over = [
        "model=tiny-llava",
        "task=mmmu_fixture",
        "task.batch_size=2",
        "task.limit=2",
        "quant=kivi2",
        "compare=[fp16]",
        f"records={tmp_path / 'runs.jsonl'}",
        "wandb.mode=disabled",
    ]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=over, return_hydra_config=True)
    rows = runner.main(cfg, session)
    assert [(r["task"], r["quant"]) for r in rows] == [("mmmu_fixture", "fp16"), ("mmmu_fixture", "kivi2")]
    for r in rows:
        assert 0.0 <= r["metrics"]["mmmu_acc"] <= 1.0 and r["metrics"]["samples"] == 2
        assert r["primary_metric"] == "mmmu_acc"
        assert r["kv_bytes"] > 0 and r["num_tokens"] > 0 and r["tokens_per_second"] > 0
    assert rows[0]["kv_effective_bits"] >= 16
    assert len(records.read_records(tmp_path / "runs.jsonl")) == 2


def lmms_cli(tmp_path: Path, quant: str, task: str, include: Path, *extra: str) -> tuple[list[str], str]:
    """`python -m lmms_eval --model akvq` offline on a tiny LLaVA: (the task's rows of the results table, stdout)."""
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "akvq", "--model_args", f"pretrained=tiny-llava,quant={quant}",
           "--tasks", task, "--include_path", str(include), "--output_path", str(tmp_path / "out"), *extra]  # fmt: skip
    env: dict[str, Any] = {**os.environ, **OFFLINE}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[
        -3000:
    ]  # lmms-eval 0.7.3 exits 0 even after an error: see the rows
    return [line for line in proc.stdout.splitlines() if line.startswith(f"|{task}")], proc.stdout


@pytest.mark.slow
def test_lmms_eval_cli_runs_the_fixture_task(fixtures: dict[str, Path], tmp_path: Path) -> None:
    table, out = lmms_cli(
        tmp_path, "kivi2", "akvq_mmmu_fixture", fixtures["include_path"], "--limit", "2", "--batch_size", "2"
    )
    assert table and "mmmu_acc" in table[0], out[-2000:]


@pytest.mark.slow
def test_lmms_eval_cli_scores_a_loglikelihood_task(fixtures: dict[str, Path], tmp_path: Path) -> None:
    """A `multiple_choice` task end to end: the (logprob, greedy) pairs survive lmms-eval's output unwrapping."""
    rows, out = lmms_cli(tmp_path, "akvq", "akvq_mc_fixture", fixtures["include_path"])
    assert rows and "|acc" in rows[0].replace(" ", ""), out[-2000:]
    cells = [c.strip() for c in rows[0].split("|")]  # |task|version|filter|n-shot|acc|↑|value|±|stderr|
    acc = float(cells[cells.index("acc") + 2])
    assert 0.0 <= acc <= 1.0
