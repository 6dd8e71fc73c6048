"""Config composition with Hydra's compose API: every model x task x quant that should work validates, the ones
that must not fail with a clear message before any model loads, and both launchers compose."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from akvq import runner
from akvq.errors import ConfigError
from akvq.policies import quant_config
from akvq.runner.plan import model_is_vlm
from akvq.tasks import needs_images

CONFIG_DIR = runner.CONFIG_DIR
MODELS = runner.available("model")
TASKS = runner.available("task")
QUANTS = runner.available("quant")
LADDER = {  # the ablation ladder RTN -> +WHT -> +TSA -> +PSA as (hadamard, tsa, psa)
    "akvq_rtn": (False, False, False),
    "akvq_wht": (True, False, False),
    "akvq_tsa": (True, True, False),
    "akvq_psa": (True, True, True),
}

Compose = Callable[..., DictConfig]
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")


@pytest.fixture(scope="module")
def cfg_of() -> Iterator[Compose]:
    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture
def session() -> runner.Session:
    """The real task registry; a task whose module is not written yet stands in as a bare Task."""
    from akvq.tasks import get_task as real
    from akvq.tasks.base import Task

    def get_task(name: str, cfg: Any) -> Any:
        try:
            return real(name, cfg)
        except ModuleNotFoundError:
            return Task(name, cfg)

    return runner.Session(get_task=get_task)


def test_expected_choices_exist() -> None:
    for m in (
        "llava",
        "llava-1.5-7b",
        "llava-1.5-13b",
        "llava-1.6-vicuna-7b",
        "llava-1.6-mistral-7b",
        "qwen2-vl-7b",
        "qwen2.5-vl-7b",
        "smollm2-135m",
        "tiny-llava",
        "tiny-llava-next",
        "tiny-qwen2-vl",
    ):
        assert m in MODELS
    for t in ("ppl", "ppl_quick", "passkey", "agreement"):
        assert t in TASKS
    for q in ("fp16", "rtn2", "rtn4", "kivi2", "kivi4", "skvq", "smoothquant", "akvq", "akvq_paper", *LADDER):
        assert q in QUANTS


def test_embedded_default(cfg_of: Compose, session: runner.Session) -> None:
    cfg = cfg_of()
    assert cfg.model.name == "smollm2-135m" and cfg.model.source == "gguf"
    assert cfg.task.name == "ppl" and cfg.hydra.runtime.choices.task == "ppl_quick"
    assert cfg.task.prompt_len == 1024 and cfg.task.cont_len == 64 and cfg.task.windows == 2
    assert cfg.quant.policy == "akvq" and list(cfg.compare) == ["fp16", "kivi2"]
    assert (
        runner.default_records(cfg) == "results/_scratch/runs.jsonl"
    )  # ppl_quick is ad hoc: scratch records
    assert cfg.records is None and cfg.redo is False and cfg.wandb.mode == "offline"
    plans = runner.plan(cfg, session, check_data=False)
    assert [p.quant for p in plans] == ["fp16", "kivi2", "akvq"]
    assert {p.task for p in plans} == {"ppl_quick"} and {p.model for p in plans} == {"smollm2-135m"}


def test_task_params(cfg_of: Compose) -> None:
    assert OmegaConf.to_container(cfg_of("task=ppl").task) == {
        "name": "ppl",
        "prompt_len": 4096,
        "cont_len": 256,
        "windows": 8,
        "bootstrap": 1000,
        "seed": 0,
        "chunk": 1,
        "replay": True,
    }
    assert list(cfg_of("task=passkey").task.lengths) == [1024, 2048, 4096, 8192]
    a = cfg_of("task=agreement").task
    assert (a.prompt_len, a.gen_len, a.samples) == (1024, 64, 4)


def test_every_quant_composes_like_the_runner_loads_it(cfg_of: Compose) -> None:
    from akvq.policies import make_policy

    for q in QUANTS:
        node = OmegaConf.to_container(cfg_of(f"quant={q}").quant)
        assert node == quant_config(q), q
        assert make_policy(node) == make_policy(q)
    assert quant_config("akvq_paper") == quant_config("akvq")
    for name, flags in LADDER.items():
        q = quant_config(name)
        assert q["policy"] == "akvq" and (q["hadamard"], q["tsa"], q["psa"]) == flags
        assert {k: v for k, v in q.items() if k not in ("hadamard", "tsa", "psa")} == {
            k: v for k, v in quant_config("akvq").items() if k not in ("hadamard", "tsa", "psa")
        }


def test_model_aliases(cfg_of: Compose) -> None:
    assert cfg_of("model=llava").model.name == "llava-1.5-7b"
    assert OmegaConf.to_container(cfg_of("model=llava").model) == OmegaConf.to_container(
        cfg_of("model=llava-1.5-7b").model
    )


def test_every_combination(cfg_of: Compose, session: runner.Session) -> None:
    """models x tasks x quants: text tasks run everywhere, image tasks only on VLMs (clear error otherwise).
    Each (model, task) is planned once with every quant in `compare`, which validates each quant's policy.
    The per-dataset `milebench/<Dataset>` configs differ from `milebench` only in `datasets`, and a quant's
    validity does not depend on the task, so those are planned with one quant to keep this test fast."""
    top = {k: v for k, v in OmegaConf.to_container(cfg_of(), resolve=False).items() if k != "hydra"}
    models = {m: OmegaConf.to_container(cfg_of(f"model={m}").model) for m in MODELS}
    tasks = {t: OmegaConf.to_container(cfg_of(f"task={t}").task) for t in TASKS}
    ok = refused = 0
    for m, mcfg in models.items():
        for t, tcfg in tasks.items():
            quants = ["akvq"] if t.startswith("milebench/") else QUANTS
            if mcfg["source"] == "tiny":  # KV width 32 < the HF backends' group of 64: tests/test_peers.py
                quants = [q for q in quants if not q.startswith("hf_")]
            choices = {"model": m, "task": t, "quant": "akvq"}
            hyd = {"runtime": {"choices": choices}}
            cfg = OmegaConf.create({**top, "model": mcfg, "task": tcfg, "compare": quants, "hydra": hyd})
            if needs_images(session.get_task(str(tcfg["name"]), OmegaConf.create(tcfg))) and not model_is_vlm(
                mcfg
            ):
                with pytest.raises(ConfigError, match="text-only"):
                    runner.plan(cfg, session, check_data=False)
                refused += 1
                continue
            if t in ("ppl", "passkey") and mcfg["source"] == "tiny":  # 4352 or 8192 tokens > 4096 positions
                with pytest.raises(ConfigError, match=r"more than the 4096 positions of model"):
                    runner.plan(cfg, session, check_data=False)
                refused += 1
                continue
            plans = runner.plan(cfg, session, check_data=False)
            assert sorted(p.quant for p in plans) == sorted(quants)
            assert {p.model for p in plans} == {mcfg["name"]}
            assert len({p.config_hash for p in plans}) == len(quants)
            ok += len(plans)
    assert ok >= len(MODELS) * 2 * len(
        [q for q in QUANTS if not q.startswith("hf_")]
    )  # two text tasks a model
    assert refused > 0


@pytest.mark.parametrize("group", ["model", "task", "quant"])
def test_unknown_names_list_the_options(cfg_of: Compose, group: str) -> None:
    with pytest.raises(MissingConfigException, match=f"{group}/nope") as e:
        cfg_of(f"{group}=nope")
    assert "Available options" in str(e.value)


_REPO = Path(__file__).resolve().parent.parent


def _run_py() -> Any:
    """run.py as a module (its import registers a resolver and a Session; no Hydra run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run", _REPO / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["task=synthbench/Nope"],
            "task=synthbench/Nope: no such config; task/synthbench has: ImageNeedleInAHaystack,",
        ),
        (["model=synth-vlm", "-m", "quant=fp16,kivi3"], "quant=kivi3: no such config; quant has: akvq,"),
        (["+sweep=cpu_fidelty"], "sweep=cpu_fidelty: no such config; sweep has: cpu_fidelity, cpu_scale,"),
        (["task=nope"], "(and the folders task=milebench/..., task=synthbench/...)"),
        (["task=milebench/Nope/x"], "task/milebench/Nope has: nothing"),
    ],
)
def test_an_unknown_choice_is_one_line_before_hydra(argv: list[str], line: str) -> None:
    """run.py's own check: one line with the options of the folder that was meant (Hydra's error lists the top
    group's for a nested name, in many lines)."""
    got = _run_py().unknown_choice(argv)
    assert got is not None and line in got and "\n" not in got


@pytest.mark.parametrize(
    "argv",
    [
        ["task=synthbench/Spot-the-Diff", "quant=akvq", "model=synth-vlm"],
        ["-m", "quant=fp16,kivi2,akvq", "task=ppl,passkey"],
        ["quant.window=64", "task.limit=3", "model.path=/x", "+task.foo=1", "~compare"],
        ["quant=glob(akvq*)", "task=null", "hydra/launcher=submitit_slurm", "model=${oc.env:M}"],
        ["model=fake-lm", "hydra.searchpath=[file:///elsewhere]"],  # another search path may hold it
    ],
)
def test_known_choices_and_other_overrides_pass_the_check(argv: list[str]) -> None:
    assert _run_py().unknown_choice(argv) is None


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["quant.bitz=2"],
            "quant.bitz: no such key (did you mean quant.bits?); quant (quant=akvq) has: policy, bits,",
        ),
        (["seedd=1"], "seedd: no such key (did you mean seed?); the config has: model, task, quant,"),
        (["task.limit=3"], "task.limit: no such key; task (task=ppl_quick) has: name,"),
        (["slurm.partitio=x", "+sweep=cpu_tiny"], "(did you mean slurm.partition?); slurm has: partition,"),
        (["comapre=[fp16,kivi2]"], "comapre: no such key (did you mean compare?)"),
        # a sweep: every choice of the key's group is checked, not only the first
        (["-m", "task=synthbench,ppl", "task.limit=3"], "task.limit: no such key; task (task=ppl) has:"),
        (
            ["-m", "quant=akvq,fp16", "quant.window=64"],
            "quant.window: no such key; quant (quant=fp16) has: policy",
        ),
    ],
)
def test_an_unknown_key_is_one_line_before_hydra(argv: list[str], line: str) -> None:
    """Hydra's error for a key the config lacks is five lines and lists nothing; ours names the nearest key and
    what the node has."""
    got = _run_py().unknown_key(argv)
    assert got is not None and line in got and "\n" not in got, got


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["quant=fp16", "model=synth-vlm"],  # no key override: nothing composed
        [
            "task=synthbench/Spot-the-Diff",
            "task.limit=3",
            "quant.window=64",
            "compare=[fp16]",
            "slurm.gpus=2",
        ],
        ["-m", "quant=akvq,kivi2", "quant.bits=4", "model.dtype=bfloat16", "hydra.job.chdir=false"],
        ["+task.foo=1", "task.foo=2"],  # made by the first override
        ["quant=glob(akvq*)", "quant.bits=2"],  # a choice only Hydra's parser reads
        ["--config-name", "other", "foo.bar=1"],  # another primary config
    ],
)
def test_existing_keys_pass_the_key_check(argv: list[str]) -> None:
    assert _run_py().unknown_key(argv) is None


@pytest.mark.parametrize(
    ("argv", "word"), [(["task=synthbench/Spot-the-Dif"], "Spot-the-Diff"), (["quant.bitz=2"], "quant.bits")]
)
def test_run_py_names_an_unknown_choice_or_key_in_one_line(
    tmp_path: Path, argv: list[str], word: str
) -> None:
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, str(_REPO / "run.py"), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    lines = [x for x in (p.stdout + p.stderr).splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1 and word in lines[0], lines


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["quant.bits=5"], "bits=5"),
        (["+quant.wat=1"], "wat"),
        (["compare=[fp16,kivi3]"], "kivi3"),
        (["model.source=ftp"], 'model.source="ftp": must be one of'),
        (["model.dtype=float7"], "dtype"),
        (["task.name=nosuchtask"], "unknown task"),
        (["model=smollm2-135m", "task=mmmu"], "text-only"),
        (["model=tiny-llama", "task=milebench/ALFRED"], "text-only"),
    ],
)
def test_bad_configs_fail_clearly(
    cfg_of: Compose, session: runner.Session, overrides: list[str], message: str
) -> None:
    cfg = cfg_of(*overrides)
    with pytest.raises(ValueError, match=message):  # ConfigError and UnsupportedModelError are ValueErrors
        runner.plan(cfg, session, check_data=False)


def test_local_launcher(cfg_of: Compose) -> None:
    cfg = cfg_of()
    assert (
        cfg.hydra.launcher._target_ == "hydra_plugins.akvq_launchers.LocalLauncher"
    )  # pre-flight, then jobs


def test_slurm_launcher_composes_and_builds_sbatch(
    cfg_of: Compose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher config instantiates and its parameters make a valid sbatch script (no cluster needed)."""
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm import slurm

    cfg = cfg_of(
        "hydra/launcher=submitit_slurm",
        "slurm.partition=gpu",
        "slurm.gpus=4",
        "slurm.time=600",
        "slurm.account=proj",
        "hydra.launcher.qos=high",
        f"hydra.sweep.dir={tmp_path}",
    )
    lcfg = cfg.hydra.launcher
    assert lcfg._target_.endswith("SlurmLauncher")
    assert (lcfg.partition, lcfg.gpus_per_node, lcfg.timeout_min, lcfg.account) == ("gpu", 4, 600, "proj")
    launcher = instantiate(lcfg)
    params = dict(launcher.params)
    assert params["submitit_folder"].startswith(str(tmp_path))
    # what the plugin's launch() does with them, up to the sbatch script
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    ex = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=0)
    params.pop("max_num_timeout")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = slurm._make_sbatch_string(
        command="python run.py", folder=str(tmp_path), **ex._executor.parameters
    )
    for line in ("--partition=gpu", "--gpus-per-node=4", "--time=600", "--account=proj", "--qos=high"):
        assert f"#SBATCH {line}" in script
