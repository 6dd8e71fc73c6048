"""Pre-flight: every job of a sweep checked before any starts, failed jobs reported while the rest run, the
SLURM dry run, and the offline checks of weights and lmms-eval datasets (no network, no retries)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import FakeTask, run_py
from test_runner import make_cfg

from akvq import records
from akvq.errors import MissingDataError
from akvq.runner import preflight

REPO = Path(__file__).resolve().parent.parent


def test_local_sweep_with_a_broken_job_starts_nothing(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rc = run_py(tmp_path, monkeypatch, fakes, "model=fake-lm,gone", "quant=fp16")
    out = capsys.readouterr().out
    assert rc == 2
    assert "pre-flight: 1/2 jobs OK" in out
    assert "model=gone" in out and "model.path=" in out and "no config.json" in out
    assert fakes.loads == 0 and not (tmp_path / "runs.jsonl").exists()


class FailingTask(FakeTask):
    """Fails for 2-bit policies, like a run that hits a bug after the model loaded."""

    def run(self, loaded: Any, policy: Any, cfg: Any) -> SimpleNamespace:
        if getattr(policy, "bits", 16) == 2:
            raise RuntimeError("boom in the generation loop")
        return super().run(loaded, policy, cfg)


def test_failing_job_is_reported_and_the_others_run(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    fakes.task.__class__ = FailingTask
    rc = run_py(tmp_path, monkeypatch, fakes, "model=fake-lm", "quant=kivi2,fp16,rtn4")
    out = capsys.readouterr().out
    assert rc == 1
    assert sorted(r["quant"] for r in records.read_records(tmp_path / "runs.jsonl")) == ["fp16", "rtn4"]
    assert "1 failed job(s)" in out and "FAILED quant=kivi2: RuntimeError: boom in the generation loop" in out
    summary = out.split("sweep summary")[-1]
    assert "fp16" in summary and "rtn4" in summary


def test_recorded_jobs_are_not_started_again(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert run_py(tmp_path, monkeypatch, fakes, "model=fake-lm", "quant=fp16") == 0
    assert run_py(tmp_path, monkeypatch, fakes, "model=fake-lm", "quant=fp16,kivi2") == 0
    out = capsys.readouterr().out
    assert "1 of 2 jobs are recorded already" in out and "OK (recorded)" in out
    assert len(fakes.task.calls) == 2  # fp16 once, then only kivi2
    assert len(records.read_records(tmp_path / "runs.jsonl")) == 2


def test_slurm_dry_run_prints_the_sbatch_script_and_submits_nothing(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rc = run_py(
        tmp_path,
        monkeypatch,
        fakes,
        "model=fake-lm",
        "quant=fp16,kivi2",
        "hydra/launcher=submitit_slurm",
        "slurm.partition=gpu",
        "slurm.time=90",
        "hydra.launcher.gres=gpu:a100:1",
        "preflight=dry_run",
    )
    out = capsys.readouterr().out
    assert rc == 0 and "pre-flight: 2/2 jobs OK" in out and "dry run: 2 jobs would start" in out
    assert "#SBATCH --array=0-1%2" in out and "#SBATCH --partition=gpu" in out and "#SBATCH --time=90" in out
    assert "#SBATCH --gres=gpu:a100:1" in out and "gpus-per-node" not in out  # finding 6
    assert fakes.loads == 0 and not (tmp_path / "multirun" / ".submitit").exists()


def test_launcher_config_prints_resolved() -> None:
    """`--cfg hydra -p hydra.launcher --resolve` (only the Hydra config: the short keys fall back)."""
    res = subprocess.run(
        [
            sys.executable,
            "run.py",
            "hydra/launcher=submitit_slurm",
            "--cfg",
            "hydra",
            "-p",
            "hydra.launcher",
            "--resolve",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "timeout_min: 240" in res.stdout and "max_num_timeout: 3" in res.stdout


def test_hub_weights_missing_offline_name_the_real_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from omegaconf import OmegaConf

    cfg = dict(OmegaConf.load(REPO / "configs/model/llava.yaml"))
    assert cfg["path"] == "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(MissingDataError) as e:
        preflight.check_weights(cfg)
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "`hf download llava-hf/llava-1.5-7b-hf --local-dir DIR`" in msg
    assert "<hub-id>" not in msg


def test_a_source_with_its_own_files_checks_them(tmp_path: Path) -> None:
    """synth-vlm has no hub `path`: pre-flight asks its source (it used to stop at "no `path`")."""
    from omegaconf import OmegaConf

    cfg = dict(OmegaConf.load(REPO / "configs/model/synth-vlm.yaml"))
    assert cfg["path"] is None
    assert preflight.check_weights(cfg) == (None, None)
    with pytest.raises(MissingDataError, match="synth-vlm weights .*not found"):
        preflight.check_weights({**cfg, "weights": str(tmp_path / "absent.safetensors")})


def test_mmmu_dataset_missing_offline_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Finding 3: `task=mmmu` on an offline node fails here, not after loading the model."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingDataError) as e:
        preflight.check_lmms_dataset("mmmu_val", [])
    msg = str(e.value)
    assert "\n" not in msg and "mmmu_val" in msg and "--repo-type dataset" in msg
    (tmp_path / "hub" / "datasets--lmms-lab-encoder--MMMU" / "snapshots" / "abc").mkdir(parents=True)
    assert preflight.check_lmms_dataset("mmmu_val", []) is None  # cached: OK


def test_mmmu_dataset_missing_with_no_hub_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not offline by setting but without network: one line here, not a minute of retries after the model
    loaded (what `python run.py task=mmmu model=synth-vlm` did on this machine)."""
    from huggingface_hub import constants

    from akvq.models.sources import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    preflight.hub_problem.cache_clear()
    with pytest.raises(MissingDataError) as e:
        preflight.check_lmms_dataset("mmmu_val", [])
    msg = str(e.value)
    assert "\n" not in msg and "cannot be reached" in msg and "--repo-type dataset" in msg
    preflight.hub_problem.cache_clear()


def test_model_larger_than_the_gpus_is_refused(fakes: SimpleNamespace, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    with open(weights / "model.safetensors", "wb") as f:
        f.truncate(2 * preflight.GiB)  # sparse: 2 GiB on paper
    (weights / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_size": 64,
                "intermediate_size": 128,
                "max_position_embeddings": 4096,
                "vocab_size": 128,
            }
        )
    )
    cfg = make_cfg(tmp_path, compare=[])
    cfg.model = {"name": "big", "source": "hub", "path": str(weights), "family": "llama"}
    cfg.slurm = {"gpus": 1, "gpu_mem_gb": 1}
    check = preflight.check_job("big", cfg, slurm=True, session=fakes.session)
    assert not check.ok and "2.0 GiB" in check.problems[0] and "1 x 1 GiB GPU" in check.problems[0]
    cfg.slurm = {"gpus": 2, "gpu_mem_gb": 2}
    assert preflight.check_job("big", cfg, slurm=True, session=fakes.session).ok


def test_wandb_groups_the_jobs_of_a_sweep(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from akvq import tracking

    groups: list[Any] = []
    real = tracking.start

    def spy(*args: Any, **kwargs: Any) -> Any:
        t = real(*args, **kwargs)
        groups.append(t.run.group if t.run is not None else None)
        return t

    monkeypatch.setattr(tracking, "start", spy)
    assert (
        run_py(tmp_path, monkeypatch, fakes, "model=fake-lm", "quant=fp16,kivi2", "wandb.mode=offline") == 0
    )
    assert groups == [str(tmp_path / "multirun")] * 2
    assert tracking.sweep_group({"group": "mine"}) == "mine"


def test_help_lists_only_run_py_groups() -> None:
    res = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    groups = res.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    names = {line.split(":")[0] for line in groups.splitlines() if ":" in line}
    assert {"model", "task", "quant", "sweep", "hydra/launcher"} <= names
    assert not names & {"bench", "layer_patterns"} and "bench_cpu" not in groups
    assert res.stdout.startswith("run.py: akvq's entry point")  # no library's log line above it (numexpr's)
