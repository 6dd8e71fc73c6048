"""More than 100 generated bad inputs through `run.py`: each must exit 2 with ONE line naming the key, write no
record and load no model; each one's good neighbour (the same command with an allowed value) must validate, and
a few neighbours really run on tiny models. Most go through run.py's Hydra entry in-process (fast); a handful
through a real `python run.py` subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import run_main

from akvq import records, runner

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema")


@dataclass
class Case:
    """`base + bad` must fail naming `key`; `base + good` must pass."""

    key: str
    bad: list[str]
    good: list[str]
    base: str = "ppl"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return " ".join(self.bad)[:80]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A MileBench root (WebQA from the fixtures), one broken copy per kind of bad data, a local model config
    directory shaped like LLaVA-1.5-7B (config.json only) and a few bad records paths."""
    import importlib.util

    from PIL import Image
    from transformers import LlamaConfig, LlavaConfig

    out = tmp_path_factory.mktemp("bad_inputs")
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "scripts" / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    full = out / "full"
    mod.make_milebench(full)
    good = out / "mb_good"
    shutil.copytree(full / "WebQA", good / "WebQA")
    paths = {"mb_good": good}

    def broken(name: str, edit: Any) -> None:
        root = out / name
        shutil.copytree(good, root)
        j = root / "WebQA" / "WebQA.json"
        d = json.loads(j.read_text())
        first = d["data"][0]
        result = edit(d, first, root)
        if result is not False:
            j.write_text(json.dumps(result if result is not None else d))
        paths[name] = root

    def truncate(d: Any, s: Any, root: Path) -> bool:
        j = root / "WebQA" / "WebQA.json"
        j.write_text(j.read_text()[:150])
        return False

    def no_image(d: Any, s: Any, root: Path) -> None:
        (root / "WebQA" / "images" / s["task_instance"]["images_path"][0]).unlink()

    def bad_image(d: Any, s: Any, root: Path) -> None:
        (root / "WebQA" / "images" / s["task_instance"]["images_path"][0]).write_bytes(b"not an image")

    def slot3(d: Any, s: Any, root: Path) -> None:
        s["task_instance"]["context"] = "look {image#3} here"
        s["task_instance"]["images_path"] = s["task_instance"]["images_path"][:1]

    broken("mb_truncated", truncate)
    broken("mb_no_meta", lambda d, s, r: d.pop("meta_data") and None)
    broken("mb_no_image", no_image)
    broken("mb_bad_image", bad_image)
    broken("mb_zero", lambda d, s, r: d.update(data=[]))
    broken("mb_qtype", lambda d, s, r: d["meta_data"].update(question_type="essay"))
    broken("mb_list", lambda d, s, r: d["data"])
    broken("mb_slot3", slot3)
    broken("mb_instr_id", lambda d, s, r: s.update(task_instruction_id=7))
    broken("mb_no_choices", lambda d, s, r: s["task_instance"].pop("choice_list") and None)
    broken("mb_no_context", lambda d, s, r: s["task_instance"].pop("context") and None)
    broken("mb_no_response", lambda d, s, r: s.pop("response") and None)

    llava_dir = out / "llava-7b-config"
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
    LlavaConfig(text_config=text).save_pretrained(llava_dir)  # the config only: no weights anywhere
    paths["llava_dir"] = llava_dir
    (out / "runs.yaml").write_text("records: here\n")
    paths["yaml"] = out / "runs.yaml"
    (out / "notes.jsonl").write_text("hello world\n")
    paths["not_records"] = out / "notes.jsonl"
    (out / "a_file").write_text("x")
    paths["a_file"] = out / "a_file"
    Image.new("RGB", (4, 4)).save(out / "img.png")
    return paths


BASES = {
    "ppl": ["task=ppl_quick", "task.prompt_len=32", "task.cont_len=4", "task.windows=1", "task.bootstrap=0"],
    "passkey": ["task=passkey", "task.lengths=[256]", "task.trials=1"],
    "agreement": ["task=agreement", "task.prompt_len=32", "task.gen_len=4", "task.samples=1"],
    "milebench": [
        "task=milebench",
        "task.datasets=[WebQA]",
        "task.limit=1",
        "task.max_new_tokens=4",
        "task.milebench_root={mb_good}",
    ],
}


def cases() -> list[Case]:
    q = [  # quant (the default akvq unless a case picks another)
        Case("quant.bits", ["quant.bits=true"], ["quant.bits=2"]),
        Case("quant.bits", ["quant.bits=2.0"], ["quant.bits=4"]),
        Case("quant.bits", ["quant.bits=5"], ["quant.bits=8"]),
        Case("quant.bits", ["quant.bits=0"], ["quant.bits=1"]),
        Case("quant.bits", ["quant.bits=-2"], ["quant.bits=3"]),
        Case("quant.bits", ["quant.bits=two"], ["quant.bits=2"]),
        Case("quant.bits", ["quant.bits=null"], ["quant.bits=2"]),
        Case("quant.text_bits", ["quant.text_bits=16"], ["quant.text_bits=8"]),
        Case("quant.window_bits", ["quant=akvq_plus", "+quant.window_bits=4"], ["quant=akvq_plus_w8"]),
        Case(
            "quant.roles_all_layers",
            ["quant=akvq_roles_v2_t4", "quant.roles_all_layers=yes"],
            ["quant=akvq_roles_v2_t4"],
        ),
        Case("quant.text_bits", ["quant.text_bits=true"], ["quant.text_bits=4"]),
        Case("quant.clip_ratio", ["quant.clip_ratio=2.0"], ["quant.clip_ratio=0.9"]),
        Case("quant.clip_ratio", ["quant.clip_ratio=-0.5"], ["quant.clip_ratio=1.0"]),
        Case("quant.clip_ratio", ["quant.clip_ratio=0"], ["quant.clip_ratio=null"]),
        Case("quant.clip_ratio", ["quant.clip_ratio=true"], ["quant.clip_ratio=0.5"]),
        Case("quant.clip_ratio", ["quant.clip_ratio=nan"], ["quant.clip_ratio=0.8"]),
        Case("quant.group_size", ["quant.group_size=0"], ["quant.group_size=16"]),
        Case("quant.group_size", ["quant.group_size=-128"], ["quant.group_size=128"]),
        Case("quant.group_size", ["quant.group_size=12"], ["quant.group_size=8"]),
        Case("quant.group_size", ["quant.group_size=2.5"], ["quant.group_size=4"]),
        Case(
            "quant.group_size",
            ["model=tiny-llava-hd128", "quant.group_size=48"],
            ["model=tiny-llava-hd128", "quant.group_size=64"],
        ),
        Case("quant.window", ["quant.window=-1"], ["quant.window=0"]),
        Case("quant.window", ["quant.window=1.5"], ["quant.window=16"]),
        Case("quant.num_pivots", ["quant.num_pivots=-3"], ["quant.num_pivots=0"]),
        Case("quant.hadamard", ["quant.hadamard=maybe"], ["quant.hadamard=false"]),
        Case("quant.hadamard", ["quant.hadamard=1"], ["quant.hadamard=true"]),
        Case("quant.tsa", ["quant.tsa='yes'"], ["quant.tsa=false"]),
        Case("quant.psa", ["quant.psa=0"], ["quant.psa=false"]),
        Case("quant.pivot_rule", ["+quant.pivot_rule=loudest"], ["+quant.pivot_rule=attention"]),
        Case("quant.k_axis", ["+quant.k_axis=diagonal"], ["+quant.k_axis=channel"]),
        Case("quant.pivot_layer", ["+quant.pivot_layer=9"], ["+quant.pivot_layer=3"]),
        Case("quant.pivot_layer", ["+quant.pivot_layer=-5"], ["+quant.pivot_layer=-4"]),
        Case("quant.pivot_layer", ["+quant.pivot_layer=1.0"], ["+quant.pivot_layer=1"]),
        Case(
            "quant.layer_pattern", ["+quant.layer_pattern=[tsa]"], ["+quant.layer_pattern=[tsa,psa,psa,tsa]"]
        ),
        Case(
            "quant.layer_pattern",
            ["+quant.layer_pattern=[tsa,psa,psa,xyz]"],
            ["+quant.layer_pattern=[psa,psa,psa,psa]"],
        ),
        Case("quant.layer_pattern", ["+quant.layer_pattern=[]"], ["+quant.layer_pattern=null"]),
        Case("quant.colour", ["+quant.colour=red"], []),
        Case("quant.policy", ["quant.policy=zip"], ["quant.policy=akvq"]),
        Case("quant.hp_dtype", ["+quant.hp_dtype=float8"], ["+quant.hp_dtype=float16"]),
        Case("quant.k_bits", ["+quant.k_bits=7"], ["+quant.k_bits=4"]),
        Case("quant.residual", ["quant=kivi2", "quant.residual=0"], ["quant=kivi2", "quant.residual=64"]),
        Case("quant.bits", ["quant=kivi2", "quant.bits=3.5"], ["quant=kivi2", "quant.bits=4"]),
        Case(
            "quant.group_size", ["quant=kivi2", "quant.group_size=-1"], ["quant=kivi2", "quant.group_size=32"]
        ),
        Case(
            "quant.alpha", ["quant=smoothquant", "quant.alpha=1.5"], ["quant=smoothquant", "quant.alpha=0.5"]
        ),
        Case("quant.sink", ["quant=skvq", "quant.sink=-1"], ["quant=skvq", "quant.sink=0"]),
        Case("quant.window", ["quant=rtn2", "quant.window=-4"], ["quant=rtn2", "quant.window=4"]),
        Case("compare", ["compare=[fp16,kivi3]"], ["compare=[fp16,kivi2]"]),
        Case("compare", ["compare=fp16"], ["compare=[fp16]"]),
        Case("compare", ["compare=[fp16,nope]"], ["compare=[]"]),
    ]
    t = [  # tasks: ppl, passkey, agreement, milebench
        Case("task.prompt_len", ["task.prompt_len=-5"], ["task.prompt_len=16"]),
        Case("task.prompt_len", ["task.prompt_len=0"], ["task.prompt_len=8"]),
        Case("task.prompt_len", ["task.prompt_len=5000"], ["task.prompt_len=1024"]),
        Case("task.prompt_len", ["task.prompt_len=100000"], ["task.prompt_len=4000"]),
        Case("task.prompt_len", ["task.prompt_len=abc"], ["task.prompt_len=64"]),
        Case("task.prompt_len", ["task.prompt_len=1.5"], ["task.prompt_len=2"]),
        Case("task.prompt_len", ["task.prompt_len=true"], ["task.prompt_len=32"]),
        Case("task.cont_len", ["task.cont_len=0"], ["task.cont_len=8"]),
        Case("task.cont_len", ["task.cont_len=1"], ["task.cont_len=2"]),
        Case("task.cont_len", ["task.cont_len=-64"], ["task.cont_len=64"]),
        Case("task.windows", ["task.windows=0"], ["task.windows=2"]),
        Case("task.windows", ["task.windows=-2"], ["task.windows=3"]),
        Case("task.windows", ["task.windows=100000"], ["task.windows=4"]),
        Case("task.chunk", ["task.chunk=0"], ["task.chunk=4", "task.replay=false"]),
        Case("task.bootstrap", ["task.bootstrap=-1"], ["task.bootstrap=10"]),
        Case("task.seed", ["task.seed=-1"], ["task.seed=1"]),
        Case("task.foo", ["+task.foo=1"], []),
        Case("task.window", ["+task.window=3"], ["task.windows=3"]),
        Case("task.name", ["task.name=nosuchtask"], ["task.name=ppl"]),
        Case("task.name", ["task.name=''"], ["task.name=ppl"]),
        Case("task.lengths", ["task.lengths=[100000]"], ["task.lengths=[4096]"], base="passkey"),
        Case("task.lengths", ["task.lengths=[]"], ["task.lengths=[128]"], base="passkey"),
        Case("task.lengths", ["task.lengths=[10]"], ["task.lengths=[64]"], base="passkey"),
        Case("task.lengths", ["task.lengths=[256,abc]"], ["task.lengths=[256,512]"], base="passkey"),
        Case("task.lengths", ["task.lengths=512"], ["task.lengths=[512]"], base="passkey"),
        Case(
            "task.lengths",
            ["task.lengths=[1024,2048,4096,8192]"],
            ["task.lengths=[1024,2048,4096]"],
            base="passkey",
        ),
        Case("task.trials", ["task.trials=0"], ["task.trials=2"], base="passkey"),
        Case("task.gen_len", ["+task.gen_len=0"], ["+task.gen_len=4"], base="passkey"),
        Case("task.seed", ["task.seed=x"], ["task.seed=3"], base="passkey"),
        Case("task.gen_len", ["task.gen_len=-1"], ["task.gen_len=8"], base="agreement"),
        Case("task.samples", ["task.samples=0"], ["task.samples=2"], base="agreement"),
        Case("task.prompt_len", ["task.prompt_len=4093"], ["task.prompt_len=4092"], base="agreement"),
        Case("task.prompt_len", ["task.prompt_len=-1"], ["task.prompt_len=1"], base="agreement"),
        Case("task.gen_len", ["task.gen_len=4.0"], ["task.gen_len=4"], base="agreement"),
        Case("task.limit", ["task.limit=-1"], ["task.limit=2"], base="milebench"),
        Case("task.limit", ["task.limit=0"], ["task.limit=null"], base="milebench"),
        Case(
            "task.max_context_len",
            ["task.max_context_len=-5"],
            ["task.max_context_len=512"],
            base="milebench",
        ),
        Case(
            "task.max_context_len",
            ["task.max_context_len=4095"],
            ["task.max_context_len=4092"],
            base="milebench",
        ),
        Case("task.max_new_tokens", ["task.max_new_tokens=0"], ["task.max_new_tokens=8"], base="milebench"),
        Case(
            "task.max_new_tokens", ["task.max_new_tokens=5000"], ["task.max_new_tokens=512"], base="milebench"
        ),
        Case("task.batch_size", ["task.batch_size=0"], ["task.batch_size=2"], base="milebench"),
        Case(
            "task.tokens_per_image",
            ["task.tokens_per_image=0"],
            ["task.tokens_per_image=17"],
            base="milebench",
        ),
        Case(
            "task.chat_template", ["task.chat_template=maybe"], ["task.chat_template=false"], base="milebench"
        ),
        Case("task.datasets", ["task.datasets=[NoSuch]"], ["task.datasets=[WebQA]"], base="milebench"),
        Case(
            "task.datasets",
            ["task.datasets=[]"],
            ["task.datasets=null", "+task.dataset=WebQA"],
            base="milebench",
        ),
        Case("task.dataset", ["+task.dataset=webqa"], ["+task.dataset=WebQA"], base="milebench"),
    ]
    mb = [  # MileBench data: every problem named with its file and sample
        Case(
            "milebench_root",
            [f"task.milebench_root={{{name}}}"],
            ["task.milebench_root={mb_good}"],
            base="milebench",
        )
        for name in (
            "mb_truncated",
            "mb_no_meta",
            "mb_no_image",
            "mb_bad_image",
            "mb_zero",
            "mb_qtype",
            "mb_list",
            "mb_slot3",
            "mb_instr_id",
            "mb_no_choices",
            "mb_no_context",
            "mb_no_response",
        )
    ] + [
        Case(
            "milebench_root",
            ["task.milebench_root=/nonexistent/mb"],
            ["task.milebench_root={mb_good}"],
            base="milebench",
        ),
        Case(
            "milebench_root",
            ["task.milebench_root={a_file}"],
            ["task.milebench_root={mb_good}"],
            base="milebench",
        ),
        Case("milebench_root", ["milebench_root=123"], ["milebench_root=null"], base="milebench"),
    ]
    m = [  # model
        Case("model.trust_remote_code", ["model.trust_remote_code='no'"], ["model.trust_remote_code=false"]),
        Case("model.trust_remote_code", ["model.trust_remote_code=1"], ["model.trust_remote_code=false"]),
        Case("model.dtype", ["model.dtype=float7"], ["model.dtype=float32"]),
        Case("model.source", ["model.source=ftp"], ["model.source=tiny"]),
        Case(
            "model.attn_implementation",
            ["model.attn_implementation=magic"],
            ["model.attn_implementation=eager"],
        ),
        Case("model.family", ["model.family=gpt"], ["model.family=llava"]),
        Case("model.tiny_kind", ["model.tiny_kind=bert"], ["model.tiny_kind=llava"]),
        Case("model.tiny_head_dim", ["+model.tiny_head_dim=48"], ["+model.tiny_head_dim=32"]),
        Case("model.tiny_head_dim", ["+model.tiny_head_dim=0"], ["+model.tiny_head_dim=16"]),
        Case("model.revision", ["+model.revision=main"], []),
        Case("model.name", ["model.name=null"], ["model.name=tiny-llava"]),
        Case("model.gguf_file", ["model=smollm2-135m", "model.gguf_file=nope.gguf"], ["model=smollm2-135m"]),
        Case("model.path", ["model=smollm2-135m", "model.path=pkg://no_such_pkg"], ["model=smollm2-135m"]),
        Case(
            "model.path",
            ["model=llava-1.5-7b", "model.device_map=null"],
            ["model=llava-1.5-7b", "model.path={llava_dir}"],
            env={"HF_HUB_OFFLINE": "1"},
        ),
        Case(
            "model.path",
            ["model=llava-1.5-7b", "model.path=/nonexistent/llava"],
            ["model=llava-1.5-7b", "model.path={llava_dir}"],
        ),
        Case(
            "model.path",
            ["model=qwen2-vl-7b"],
            ["model=llava-1.5-7b", "model.path={llava_dir}"],
            env={"HF_HUB_OFFLINE": "0"},
        ),
        Case(
            "quant.pivot_layer",
            ["model=llava-1.5-7b", "model.path={llava_dir}", "+quant.pivot_layer=32"],
            ["model=llava-1.5-7b", "model.path={llava_dir}", "+quant.pivot_layer=31"],
        ),
        Case(
            "task.prompt_len",
            ["model=llava-1.5-7b", "model.path={llava_dir}", "task.prompt_len=4093"],
            ["model=llava-1.5-7b", "model.path={llava_dir}", "task.prompt_len=4092"],
        ),
    ]
    top = [  # top-level keys and records
        Case("windows", ["+windows=16"], ["task.windows=1"]),
        Case("hub_token", ["+hub_token=hf_x"], []),
        Case("seed", ["seed=abc"], ["seed=1"]),
        Case("seed", ["seed=-1"], ["seed=0"]),
        Case("seed", ["seed=1.5"], ["seed=2"]),
        Case("threads", ["threads=-1"], ["threads=1"]),
        Case("threads", ["threads=0"], ["threads=null"]),
        Case("threads", ["threads=two"], ["threads=2"]),
        Case("redo", ["redo=maybe"], ["redo=true"]),
        Case("redo", ["redo=1"], ["redo=false"]),
        Case("records", ["records="], ["records={tmp}/r.jsonl"]),
        Case("records", ["records={yaml}"], ["records={tmp}/r.jsonl"]),
        Case("records", ["records={tmp}"], ["records={tmp}/sub/r.jsonl"]),
        Case("records", ["records={tmp}/runs.txt"], ["records={tmp}/runs.jsonl"]),
        Case("records", ["records={a_file}/runs.jsonl"], ["records={tmp}/new/dir/runs.jsonl"]),
        Case("records", ["records={not_records}"], ["records={tmp}/other.jsonl"]),
        Case("records", ["records=123"], ["records={tmp}/r.jsonl"]),
        # /proc takes no new files, though `os.access` says root may write there
        Case("records", ["records=/proc/akvq/runs.jsonl"], ["records={tmp}/r.jsonl"]),
        Case("wandb.mode", ["wandb.mode=loud"], ["wandb.mode=offline"]),
        Case("wandb.init_timeout", ["wandb.init_timeout=0"], ["wandb.init_timeout=5"]),
        Case("wandb.colour", ["+wandb.colour=red"], []),
        Case("slurm.gpus", ["slurm.gpus=-1"], ["slurm.gpus=0"]),
        Case("slurm.time", ["slurm.time=0"], ["slurm.time=60"]),
        Case("slurm.qos", ["+slurm.qos=high"], ["slurm.partition=gpu"]),
    ]
    return q + t + mb + m + top


CASES = cases()


def fill(args: list[str], data: dict[str, Path], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **data) for a in args]


@dataclass
class Spy:
    """Counts every way a model could be built; any call fails the bad-input test."""

    calls: list[str] = field(default_factory=list)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    import dataclasses

    from akvq.models import sources
    from akvq.models.sources import tiny

    s = Spy()

    def refuse(name: str) -> Any:
        def f(*a: Any, **k: Any) -> Any:
            s.calls.append(name)
            raise AssertionError(f"{name} called for a bad input")

        return f

    import akvq.models

    monkeypatch.setattr(akvq.models, "load_model", refuse("akvq.models.load_model"))  # what Session() calls
    monkeypatch.setattr(tiny, "build_tiny", refuse("build_tiny"))
    for name, src in list(sources.SOURCES.items()):
        monkeypatch.setitem(
            sources.SOURCES, name, dataclasses.replace(src, load=refuse(f"sources.{name}.load"))
        )
    yield s


def common(tmp: Path, model: str = "model=tiny-llava") -> list[str]:
    return [
        model,
        "quant=akvq",
        "compare=[]",
        f"records={tmp / 'runs.jsonl'}",
        "wandb.mode=disabled",
        f"hydra.run.dir={tmp / 'out'}",
        "hydra.output_subdir=null",
    ]


def argv_of(case: Case, which: list[str], data: dict[str, Path], tmp: Path) -> list[str]:
    return common(tmp) + fill(BASES[case.base], data, tmp) + fill(which, data, tmp)


def test_there_are_over_100_bad_inputs() -> None:
    assert len(CASES) >= 100
    groups = {c.key.split(".")[0] for c in CASES}
    assert {"quant", "task", "model", "records", "milebench_root", "seed", "threads"} <= groups


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_before_loading(
    case: Case,
    data: dict[str, Path],
    tmp_path: Path,
    spy: Spy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import huggingface_hub

    from akvq.models.sources import hub

    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)  # this machine: no hub
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: spy.calls.append("hf_hub_download")
    )
    code = run_main(argv_of(case, case.bad, data, tmp_path), monkeypatch)
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if x.strip()]
    assert code == 2, lines
    assert len(lines) == 1, lines  # one line, no traceback
    assert re.search(rf"\b{re.escape(case.key)}(\[\d+\])?[= ]", lines[0]), lines[0]  # names the key
    assert spy.calls == []  # no model built or loaded, no hub download (with its minute of retries)
    assert not (tmp_path / "runs.jsonl").exists() and not list(tmp_path.rglob("*.jsonl"))

    # the good neighbour validates (data checks included)
    from hydra import compose, initialize_config_dir

    args = [a for a in argv_of(case, case.good, data, tmp_path) if not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args, return_hydra_config=True)
    assert runner.plan(cfg, runner.Session())


NEIGHBOURS_THAT_RUN = [
    ["model=tiny-llama", "quant.bits=4", "quant.clip_ratio=0.9"],
    ["model=tiny-llama", "quant=kivi2", "quant.residual=16", "seed=1", "threads=1"],
    ["model=tiny-llava", "+quant.pivot_layer=-4", "+quant.layer_pattern=[tsa,psa,psa,tsa]"],
]


@pytest.mark.parametrize("good", NEIGHBOURS_THAT_RUN, ids=[" ".join(g) for g in NEIGHBOURS_THAT_RUN])
def test_good_neighbours_really_run(
    good: list[str], data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [*common(tmp_path, good[0]), *BASES["ppl"], *good[1:]]
    assert run_main(argv, monkeypatch) == 0
    (rec,) = records.read_records(tmp_path / "runs.jsonl")
    assert rec["metrics"]["ppl"] > 0 and rec["num_tokens"] == 4


def test_milebench_reports_every_problem_at_once(tmp_path: Path, data: dict[str, Path]) -> None:
    from akvq.errors import ConfigError
    from akvq.tasks.milebench import validate_milebench_root

    root = tmp_path / "mb"
    shutil.copytree(data["mb_slot3"], root)
    shutil.copytree(data["mb_truncated"] / "WebQA", root / "SceneTransition")
    (root / "SceneTransition" / "WebQA.json").rename(root / "SceneTransition" / "SceneTransition.json")
    img = next((root / "WebQA" / "images").rglob("*.jpg"))
    img.write_bytes(b"\x89PNG broken")
    with pytest.raises(ConfigError) as e:
        validate_milebench_root(root, ["WebQA", "SceneTransition"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "WebQA/WebQA.json sample 1: context names {image#3} but has 1 image path(s)" in msg
    assert "SceneTransition/SceneTransition.json: not valid JSON" in msg
    assert "does not open" in msg
    validate_milebench_root(data["mb_good"], ["WebQA"])

    # the sweep pre-flight's entry point reads the data too
    from hydra import compose, initialize_config_dir

    from akvq.runner.validate import validate

    case = Case("milebench_root", ["task.milebench_root={mb_slot3}"], [], base="milebench")
    args = [a for a in argv_of(case, case.bad, data, tmp_path) if not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args, return_hydra_config=True)
    with pytest.raises(ConfigError, match=r"\{image#3\}"):
        validate(cfg)


SUBPROCESS_CASES = [CASES[0], next(c for c in CASES if c.id.startswith("task.milebench_root={mb_slot3}"))]


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_bad_input_through_a_real_process(case: Case, data: dict[str, Path], tmp_path: Path) -> None:
    """The same through `python run.py` (logging, exit status and all): no spy here, so the proof that nothing
    loaded is the time (imports only) and the absence of the model's log line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, str(REPO / "run.py"), *argv_of(case, case.bad, data, tmp_path)]
    p = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200
    )  # imports alone take minutes on a busy 2-core machine
    lines = [x for x in (p.stdout + p.stderr).splitlines() if x.strip()]
    assert p.returncode == 2, lines
    assert len(lines) == 1 and f"{case.key}=" in lines[0], lines
    assert "loading model" not in p.stdout + p.stderr
    assert not (tmp_path / "runs.jsonl").exists()
