"""SynthBench: deterministic roots in MileBench's format that the MileBench loader, prompts and scorer accept."""

from __future__ import annotations

import hashlib
import random
import re
import runpy
import sys
from pathlib import Path

import pytest

from akvq.errors import ConfigError, MissingDataError
from akvq.synth import bench
from akvq.synth.bench import LEVELS, TASKS, images_for, write_root
from akvq.tasks import get_task
from akvq.tasks.milebench import build_prompt, load_dataset, score_sample

REPO = Path(__file__).resolve().parents[1]
SMALL = {"1K": 1024, "2K": 2048}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("synthbench")
    write_root(r, seed=7, samples=3, levels=SMALL)
    return r


def test_same_seed_same_bytes_other_seed_other_items(root: Path, tmp_path: Path) -> None:
    write_root(tmp_path / "again", seed=7, samples=3, levels=SMALL)
    write_root(tmp_path / "other", seed=8, samples=3, levels=SMALL)
    assert _digest(tmp_path / "again") == _digest(root)
    assert _digest(tmp_path / "other") != _digest(root)


def test_held_out_scenes_are_exactly_the_roots_images(root: Path) -> None:
    """What training refuses to draw (`bench_scenes`) is every image file of the root, no more, no fewer."""
    files = sum(len(list((root / t / "images").iterdir())) for t in TASKS)
    assert len(bench.bench_scenes(7, 3, SMALL)) == files


def test_training_never_draws_the_evaluation_or_the_validation_roots_images() -> None:
    """`training_held_out` holds the standard root's images and the validation root's (`VAL_SEED`, where candidates
    are chosen), the 1K cell written by `make_synthbench.py --seed 4242 --cells 1K` included."""
    held = bench.training_held_out()
    val_1k = bench.bench_scenes(bench.VAL_SEED, 100, {"1K": 1024})
    assert bench.bench_scenes(bench.EVAL_SEED) <= held and val_1k <= held
    assert bench.VAL_SEED != bench.EVAL_SEED and len(held) > len(bench.bench_scenes(bench.EVAL_SEED))


def test_loads_through_milebench_loader(root: Path) -> None:
    for task in TASKS:
        samples = load_dataset(root, task)
        assert len(samples) == 3 * len(SMALL)
        # cells interleave, so MileBench's "first N" takes from every cell
        assert [s.image_quantity_level for s in samples[:2]] == list(SMALL)
        for s in samples:
            assert s.question_type == "multi-choice" and s.choices is not None and len(s.choices) == 4
            assert s.answer in s.choices and len(set(s.choices)) == 4
            slots = sorted(int(i) for i in re.findall(r"\{image#(\d+)\}", s.context))
            assert slots == list(range(1, len(s.images) + 1))
            assert all(p.is_file() for p in s.images)
            assert len(s.images) == images_for(task, SMALL[str(s.image_quantity_level)])


def test_scorer_accepts_the_trained_answer_form_only_for_the_right_option(root: Path) -> None:
    for task in TASKS:
        for s in load_dataset(root, task):
            assert s.choices is not None
            right = s.choices.index(s.answer)
            wrong = (right + 1) % 4
            assert score_sample(s, f"{chr(65 + right)}. {s.answer}") == 1.0
            assert score_sample(s, f"{chr(65 + wrong)}. {s.choices[wrong]}") == 0.0
            # the form synth-vlm is trained to give (`Item.target`): the option's text alone
            assert score_sample(s, s.answer) == 1.0
            assert score_sample(s, s.choices[wrong]) == 0.0


def test_image_number_options_are_prefix_free_so_a_bare_number_scores_right() -> None:
    rng = random.Random(1)
    for task in ("Spot-the-Diff", "ImageNeedleInAHaystack"):
        pool = bench.make_pool(task, rng, 40)
        for n in (12, 40, 333):
            for _ in range(20):
                item = bench.generate(task, rng, pool, n)
                assert bench.prefix_free([int(c) for c in item.choices]), item.choices
    assert not bench.prefix_free([3, 31]) and bench.prefix_free([3, 13, 23])


def test_cells_have_their_token_lengths(tmp_path: Path) -> None:
    """At 16 tokens per image every cell's prompt is within 10% of its nominal length, and none is cut."""
    from akvq.models.smollm2 import smollm2_tokenizer

    tok = smollm2_tokenizer()
    write_root(tmp_path, seed=3, samples=1)
    for task in TASKS:
        for s in load_dataset(tmp_path, task):
            p = build_prompt(s, tok, 8000, bench.TOKENS_PER_IMAGE)
            tokens = len(tok.encode(p.text.replace("<image>", ""))) + bench.TOKENS_PER_IMAGE * len(p.images)
            assert not p.truncated
            assert (
                abs(tokens - LEVELS[str(s.image_quantity_level)]) < 0.1 * LEVELS[str(s.image_quantity_level)]
            )


def test_needle_options_are_near_misses(root: Path) -> None:
    """The fine-detail task: the wrong options show numbers one digit away from the asked one."""
    rng = random.Random(0)
    for _ in range(50):
        family = bench._number_family(rng)
        assert len(set(family)) == 4 and all(len(n) == 4 and n[0] != "0" for n in family)
        assert [sum(a != b for a, b in zip(family[0], n, strict=True)) for n in family[1:]] == [1, 1, 1]
    pool = bench.make_pool("ImageNeedleInAHaystack", rng, 10)
    item = bench.generate("ImageNeedleInAHaystack", rng, pool, 12)
    asked = re.search(r"number (\d{4})", item.context)
    assert asked is not None
    shown = [item.scenes[int(c) - 1].text for c in item.choices]
    assert shown[item.choices.index(item.answer)] == asked.group(1)
    assert sorted(sum(a != b for a, b in zip(asked.group(1), str(n), strict=True)) for n in shown) == [
        0,
        1,
        1,
        1,
    ]


def test_bad_names_fail_before_any_model() -> None:
    with pytest.raises(ConfigError, match="known: SceneTransition"):
        get_task("synthbench/NoSuchTask")
    with pytest.raises(ValueError, match="at least 4 images"):
        bench.generate(
            "Spot-the-Diff", random.Random(0), bench.make_pool("Spot-the-Diff", random.Random(0), 1), 2
        )
    task = get_task("synthbench", {"synthbench_root": "/nonexistent/synthbench"})
    with pytest.raises(MissingDataError, match="make_synthbench.py"):
        task.validate()


def test_a_root_without_the_task_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "SceneTransition").mkdir()
    task = get_task("synthbench/Spot-the-Diff", {"synthbench_root": str(tmp_path)})
    with pytest.raises(MissingDataError, match=r"lacks Spot-the-Diff/Spot-the-Diff.json.*make_synthbench.py"):
        task.validate()


def test_script_writes_a_root_and_refuses_bad_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sb"
    script = str(REPO / "scripts/make_synthbench.py")
    args = [script, str(out), "--seed", "5", "--cells", "1K", "--samples"]
    monkeypatch.setattr(sys, "argv", [*args, "1"])
    runpy.run_path(script, run_name="__main__")
    assert {p.name for p in out.iterdir()} == {*TASKS, "SYNTHBENCH.json"}
    assert [s.image_quantity_level for s in load_dataset(out, "ObjectExistence")] == ["1K"]
    monkeypatch.setattr(sys, "argv", [*args, "0"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(script, run_name="__main__")
    assert exc.value.code == 2 and "--samples must be >= 1" in capsys.readouterr().err


def test_task_runs_per_cell_on_a_tiny_llava(root: Path) -> None:
    """The MileBench pipeline end to end on a random tiny LLaVA: `limit` counts per cell, cells get metrics."""
    from akvq.models import load_model
    from akvq.policies import make_policy

    loaded = load_model({"name": "tiny-llava", "source": "tiny", "family": "llava", "tiny_kind": "llava"})
    task = get_task(
        "synthbench/ObjectExistence", {"synthbench_root": str(root), "limit": 1, "max_new_tokens": 2}
    )
    task.validate()
    res = task.run(loaded, make_policy("fp16"))
    assert [d["level"] for d in res.details] == list(SMALL)
    assert set(res.metrics) >= {"ObjectExistence", "average", "ObjectExistence/1K", "ObjectExistence/2K"}
    assert all(0.0 <= res.metrics[f"ObjectExistence/{c}"] <= 100.0 for c in SMALL)


def test_the_roots_contents_not_its_path_make_a_run(root: Path, tmp_path: Path) -> None:
    """Two roots of one seed with other cells are two runs (a 2K root is not "recorded already" by the 1K run);
    a copy of one root elsewhere is the same run."""
    import shutil
    import warnings

    from hydra import compose, initialize_config_dir

    from akvq import runner

    other = tmp_path / "other"
    write_root(other, seed=7, samples=3, levels={"2K": LEVELS["2K"]})
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    hashes = {}
    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")
    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"
    ):
        for name, r in (("root", root), ("other", other), ("moved", moved)):
            cfg = compose(
                "config",
                overrides=["model=synth-vlm", "task=synthbench", f"synthbench_root={r}", "compare=[]"],
                return_hydra_config=True,
            )
            (plan,) = runner.plan(cfg, runner.Session(), check_data=False)
            assert plan.config["data"]["seed"] == 7
            hashes[name] = plan.config_hash
    assert hashes["root"] == hashes["moved"] != hashes["other"]
