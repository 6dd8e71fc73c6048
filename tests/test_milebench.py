"""MileBench: loader, prompts, truncation and scoring on hand-checked samples; the tiny LLaVA end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

from akvq.errors import ConfigError, MissingDataError
from akvq.tasks import milebench as mb

REPO = Path(__file__).resolve().parent.parent


def load_make_fixtures() -> Any:
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "scripts" / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return load_make_fixtures().make_all(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def root(fixtures: dict[str, Path]) -> Path:
    return fixtures["milebench_root"]


class WordTokenizer:
    """One token per whitespace-separated word: truncation results can be checked by hand."""

    def __init__(self) -> None:
        self.vocab: list[str] = []

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = []
        for w in text.split():
            if w not in self.vocab:
                self.vocab.append(w)
            ids.append(self.vocab.index(w))
        return ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)


# ------------------------------------------------------------------------------------------ names/configs


def test_all_29_datasets_and_the_paper_12() -> None:
    assert len(mb.DATASETS) == 29 == len(set(mb.DATASETS))
    assert len(mb.PAPER_TASKS) == 12 == len(set(mb.PAPER_TASKS))
    assert set(mb.PAPER_TASKS) <= set(mb.DATASETS)
    assert {"SceneTransition", "WebQA", "TQA", "DocVQA"} <= set(mb.PAPER_TASKS)
    per_dataset = {p.stem for p in (REPO / "configs" / "task" / "milebench").glob("*.yaml")}
    assert per_dataset == set(mb.DATASETS)
    from omegaconf import OmegaConf

    assert list(OmegaConf.load(REPO / "configs" / "task" / "milebench.yaml").datasets) == list(mb.PAPER_TASKS)


def test_task_names_resolve() -> None:
    from akvq.tasks import get_task

    assert get_task("milebench", {}).datasets == list(mb.PAPER_TASKS)
    assert get_task("milebench/Spot-the-Diff", {}).datasets == ["Spot-the-Diff"]
    with pytest.raises(ConfigError, match="unknown MileBench dataset"):
        get_task("milebench/SceneTransitions", {})


def test_missing_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MILEBENCH_ROOT", raising=False)
    task = mb.MileBenchTask("milebench", {})
    with pytest.raises(MissingDataError, match="FreedomIntelligence/MileBench.*MILEBENCH_ROOT"):
        task.validate()
    monkeypatch.setenv("MILEBENCH_ROOT", str(tmp_path))
    with pytest.raises(MissingDataError, match="SceneTransition/SceneTransition.json"):
        task.validate()


def test_missing_data_fails_before_the_model_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from akvq import runner

    monkeypatch.delenv("MILEBENCH_ROOT", raising=False)

    def no_load(_: Any) -> None:
        raise AssertionError("the model must not load when data is missing")

    session = runner.Session(load_model=no_load)
    over = ["model=tiny-llava", "task=milebench/SceneTransition", "quant=fp16", "compare=[]"]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*over, f"records={tmp_path / 'r.jsonl'}", "wandb.mode=disabled"])
    with pytest.raises(MissingDataError, match="milebench_root"):
        runner.main(cfg, session)


# ------------------------------------------------------------------------------------- loader and prompts


def test_loader_reads_the_official_layout(root: Path) -> None:
    samples = mb.load_dataset(root, "SceneTransition")
    assert [s.sample_id for s in samples] == [1, 2, 3]
    s = samples[0]
    assert s.question_type == "multi-choice" and s.answer == "From red to blue."
    assert s.instruction.startswith("Watch the frames")
    assert [p.name for p in s.images] == [f"SceneTransition_1_{k}.jpg" for k in (1, 2, 3)]
    assert all(p.is_file() for p in s.images)
    assert mb.load_dataset(root, "WebQA", limit=1)[0].choices == ["The first flag", "The second flag"]


def test_prompt_of_a_multi_choice_sample(root: Path) -> None:
    s = mb.load_dataset(root, "SceneTransition")[0]
    p = mb.build_prompt(s, WordTokenizer(), max_context_len=10_000, tokens_per_image=576)
    assert p.text == (
        "Watch the frames of a video and answer the question about how the scene changes.\n"
        "Frames: <image>\n<image>\n<image> Question: What is the scene transition in the video?"
        "\nChoice list: \nA. From red to blue.\nB. From blue to red.\nC. From green to yellow.\nD. No change."
        "\nYour answer is: "
    )
    assert p.images == s.images and not p.truncated


def test_gpr1200_lists_choices_without_letters() -> None:
    s = mb.Sample(
        "GPR1200", 1, "Find it.", "{image#1} Which?", [Path("a.jpg")], "cat", "multi-choice", ["dog", "cat"]
    )
    assert mb.full_context(s) == "<image> Which?\nChoice list: \ndog\ncat\nYour answer is: "


def test_middle_truncation_by_hand() -> None:
    tok = WordTokenizer()
    context = "intro words here <image> middle text <image> final question ?"
    imgs = [Path("1.jpg"), Path("2.jpg")]
    # instruction 2 tokens; pieces from the end: 3 text, image 4, 2 text, image 4, 3 text.
    p = mb.truncate_middle(
        "Answer now.", context, imgs, tok, max_context_len=2 + 3 + 4 + 2, tokens_per_image=4
    )
    assert p.text == "Answer now.\n middle text <image> final question ?"
    assert p.images == [Path("2.jpg")] and p.truncated and p.dropped_images == 1
    # The text before image 2 no longer fits: the prompt starts with that image.
    p = mb.truncate_middle(
        "Answer now.", context, imgs, tok, max_context_len=2 + 3 + 4 + 1, tokens_per_image=4
    )
    assert p.text == "Answer now.\n<image> final question ?" and p.images == [Path("2.jpg")]
    # Not even the last text fits: it is cut to its last tokens and no image is kept.
    p = mb.truncate_middle("Answer now.", context, imgs, tok, max_context_len=2 + 2, tokens_per_image=4)
    assert p.text == "Answer now.\nquestion ?" and p.images == [] and p.dropped_images == 2
    # Everything fits: nothing changes.
    p = mb.truncate_middle("Answer now.", context, imgs, tok, max_context_len=100, tokens_per_image=4)
    assert p.text == "Answer now.\n" + context and p.images == imgs and not p.truncated


def test_truncated_needle_sample_keeps_the_question(root: Path) -> None:
    s = mb.load_dataset(root, "TextNeedleInAHaystack")[0]
    full = mb.build_prompt(s, WordTokenizer(), 10_000, 16)
    assert not full.truncated and "The secret word is mango." in full.text
    p = mb.build_prompt(s, WordTokenizer(), max_context_len=60, tokens_per_image=16)
    assert p.truncated and p.dropped_images == 1 and p.images == [s.images[1]]
    assert p.text.startswith(s.instruction + "\n") and p.text.endswith("<image> What is the secret word?")
    assert len(WordTokenizer().encode(p.text.replace("<image>", " "))) + 16 <= 60


# ------------------------------------------------------------------------------------------------ scoring


def test_normalization_matches_the_official_rules() -> None:
    assert mb.normalize("A. Blastomycosis") == "a blastomycosis"
    assert mb.normalize("Hello, world!") == "hello world"
    assert mb.normalize("1,000 apples.") == "1000 apples"
    assert mb.normalize("'It costs 3.5 dollars.'") == "it costs 3.5 dollars"


def test_multi_choice_option_matching() -> None:
    choices = ["From red to blue.", "From blue to red.", "From green to yellow.", "No change."]
    gt = "From red to blue."
    assert mb.score_multi_choice("A", gt, choices) == 1.0
    assert mb.score_multi_choice("A. From red to blue.", gt, choices) == 1.0
    assert mb.score_multi_choice("I think from red to blue", gt, choices) == 1.0
    assert mb.score_multi_choice("B", gt, choices) == 0.0
    assert mb.score_multi_choice("the answer is a", gt, choices) == 0.0  # officially "AA": two letters named
    assert mb.score_multi_choice("", "From green to yellow.", choices) == 1.0  # empty counts as C, officially
    # the letters the scorer reads: one names an option, none or several name none
    assert [mb.chosen_option(t, choices) for t in ("B", "from blue to red", "the answer is a", "42")] == [
        "B",
        "B",
        "AA",
        "",
    ]


def test_rouge_l_by_hand() -> None:
    assert mb.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8)
    assert mb.rouge_l("a b c", "d e f") == 0.0
    assert mb.rouge_l("same words", "same words") == pytest.approx(1.0)


def test_open_ended_and_needle_samples(root: Path) -> None:
    diff = mb.load_dataset(root, "Spot-the-Diff")[0]  # "A second white square was added on the right."
    # 6 of 9 distinct reference words, all 6 prediction words: P = 1, R = 2/3, F = 0.8.
    assert mb.score_sample(diff, "A second white square was added.") == pytest.approx(0.8)
    assert mb.score_sample(diff, "") == 0.0
    needle = mb.load_dataset(root, "TextNeedleInAHaystack")[0]
    assert mb.score_sample(needle, "The secret word is Mango.") == 1.0
    assert mb.score_sample(needle, "mangoes") == 0.0
    coqa = mb.Sample("MMCoQA", 1, "", "", [], "mango", "open-ended")
    assert mb.score_sample(coqa, "mangoes") == 1.0
    agg = mb.aggregate([needle, needle], [1.0, 0.0])
    assert agg.score == 50.0 and agg.metric == "accuracy" and agg.by_level == {"Few": 50.0}


# ------------------------------------------------------------------------------------ tiny LLaVA end to end

FIXTURE_SETS = ["SceneTransition", "WebQA", "Spot-the-Diff", "TextNeedleInAHaystack"]


@pytest.mark.slow
def test_batched_greedy_equals_batch_size_one(root: Path) -> None:
    from conftest import tiny

    from akvq.policies import make_policy

    loaded = tiny("llava")
    preds = {}
    for bs in (1, 3):
        # SceneTransition: 3, 2 and 4 images, so a batch of 3 pads both the text and the image tokens.
        cfg = {
            "milebench_root": str(root),
            "datasets": ["SceneTransition"],
            "max_new_tokens": 5,
            "batch_size": bs,
        }
        cfg["tokens_per_image"] = 16  # measured value for the tiny model; saves a processor call
        result = mb.MileBenchTask("milebench", cfg).run(loaded, make_policy("fp16"), None)
        preds[bs] = [d["prediction"] for d in result.details]
    assert preds[1] == preds[3] and len(preds[1]) == 3 and all(preds[1])


@pytest.mark.slow
def test_tiny_llava_through_the_runner(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import tiny
    from hydra import compose, initialize_config_dir

    from akvq import records, runner

    session = runner.Session(load_model=lambda model_cfg: tiny("llava"))
    over = [
        "model=tiny-llava",
        "task=milebench",
        f"task.milebench_root={root}",
        f"task.datasets=[{','.join(FIXTURE_SETS)}]",
        "task.max_new_tokens=3",
        "task.limit=2",
        "task.batch_size=4",
        "task.max_context_len=200",  # the long needle sample gets truncated
        "quant=rtn2",
        "compare=[fp16]",
        f"records={tmp_path / 'runs.jsonl'}",
        "wandb.mode=disabled",
    ]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=over, return_hydra_config=True)
        alone = compose(
            "config", overrides=[*over, "share_prefill=false", f"records={tmp_path / 'alone.jsonl'}"],
            return_hydra_config=True,
        )  # fmt: skip
    with caplog.at_level("INFO", logger="akvq"):
        rows = runner.main(cfg, session)  # fp16 and rtn2 share each batch's prefill
    # each method's score line names it by its config name
    assert any(m.startswith("MileBench SceneTransition (rtn2): ") for m in caplog.messages), caplog.messages
    assert [r["quant"] for r in rows] == ["fp16", "rtn2"]
    for r in rows:
        assert set(FIXTURE_SETS) | {"average"} <= set(r["metrics"])
        assert all(0.0 <= r["metrics"][d] <= 100.0 for d in FIXTURE_SETS)
        assert r["kv_bytes"] > 0 and r["num_tokens"] > 0
        assert r["tokens_per_second"] > 0 and r["prefill_shared_by"] == 2  # its own seconds, prefill in each
        assert r["primary_metric"] == "average"
    assert rows[0]["kv_effective_bits"] >= 16 > rows[1]["kv_effective_bits"]
    assert math.isfinite(rows[1]["kv_effective_bits"])
    assert len(records.read_records(tmp_path / "runs.jsonl")) == 2
    # the same runs one by one: the same records (share_prefill is not part of a run's identity)
    rows_alone = runner.main(alone, session)
    for r, a in zip(rows, rows_alone, strict=True):
        assert a["tokens_per_second"] > 0 and "prefill_shared_by" not in a
        for key in ("config_hash", "metrics", "kv_bytes", "kv_effective_bits", "num_tokens"):
            assert r[key] == a[key], key
        assert [d["prediction"] for d in r["details"]] == [d["prediction"] for d in a["details"]]
    # read_path=cached (a dequantized copy kept beside the packed tables): the caches are built that way, and
    # the records are the same runs (same hash, metrics and texts)
    from akvq.cache.cache import AKVQCache

    built: list[str] = []
    init = AKVQCache.__init__

    def spy(self: AKVQCache, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        built.append(self.read_path)

    monkeypatch.setattr(AKVQCache, "__init__", spy)
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cached = compose(
            "config", overrides=[*over, "read_path=cached", f"records={tmp_path / 'cached.jsonl'}"],
            return_hydra_config=True,
        )  # fmt: skip
    rows_cached = runner.main(cached, session)
    assert built and set(built) == {"cached"}
    for r, c in zip(rows, rows_cached, strict=True):
        for key in ("config_hash", "metrics", "kv_bytes", "kv_effective_bits", "num_tokens"):
            assert r[key] == c[key], key
        assert [d["prediction"] for d in r["details"]] == [d["prediction"] for d in c["details"]]


def _run_resumable(root: Path, session: Any, records_file: Path, *extra: str) -> list[dict[str, Any]]:
    """akvq on the fixture root through the runner (the resume tests' run)."""
    from hydra import compose, initialize_config_dir

    from akvq import runner

    over = [
        "model=tiny-llava",
        "task=milebench",
        f"task.milebench_root={root}",
        f"task.datasets=[{','.join(FIXTURE_SETS)}]",
        "task.max_new_tokens=4",
        "task.tokens_per_image=16",
        "quant=akvq",
        f"records={records_file}",
        "wandb.mode=disabled",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=over, return_hydra_config=True)
    return runner.main(cfg, session)


@pytest.mark.slow
def test_killed_run_resumes_with_only_the_missing_samples(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped after 4 of 9 batches continues from its partial file; its record equals an unbroken run's."""
    from conftest import tiny

    from akvq import records, runner
    from akvq.tasks import generation

    session = runner.Session(load_model=lambda model_cfg: tiny("llava"))
    real = generation.generate_texts
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(1)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt  # what SIGINT/SIGTERM does mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_texts", counting)

    def run(records_file: Path) -> dict[str, Any]:
        return _run_resumable(root, session, records_file, "compare=[]")[0]

    stop_after = None
    whole = run(tmp_path / "a" / "runs.jsonl")
    assert len(calls) == 9  # 3 + 2 + 2 + 2 samples, batch size 1
    calls.clear()
    stop_after = 4
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b" / "runs.jsonl")
    partial = runner.partial_path(tmp_path / "b" / "runs.jsonl", whole["config_hash"])
    assert len(partial.read_text().splitlines()) == 4
    calls.clear()
    stop_after = None
    resumed = run(tmp_path / "b" / "runs.jsonl")
    assert len(calls) == 5  # only the missing samples
    assert not partial.exists()  # the record replaces it
    for key in ("metrics", "details", "kv_bytes", "kv_effective_bits", "num_tokens", "config_hash"):
        assert resumed[key] == whole[key], key
    assert "resumed_samples" not in whole and resumed["resumed_samples"] == 4  # its wall time: this sitting's
    assert len(records.read_records(tmp_path / "b" / "runs.jsonl")) == 1


@pytest.mark.slow
def test_killed_shared_runs_resume_each_from_its_own_partial(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """akvq and fp16 sharing each prefill, stopped after 4 of 9 batches: the rerun generates only the missing
    batches, for both, and their records equal unbroken separate runs'."""
    from conftest import tiny

    from akvq import records, runner
    from akvq.tasks import generation

    session = runner.Session(load_model=lambda model_cfg: tiny("llava"))
    real = generation.generate_texts_shared
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> list[list[str]]:
        calls.append(len(args[1]))
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_texts_shared", counting)

    def run(records_file: Path, *extra: str) -> list[dict[str, Any]]:
        return _run_resumable(root, session, records_file, "compare=[fp16]", *extra)

    stop_after = None
    whole = run(tmp_path / "a" / "runs.jsonl", "share_prefill=false")
    assert calls == [1] * 18  # one by one: one method a call, 9 batches each
    calls.clear()
    stop_after = 4
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b" / "runs.jsonl")
    for rec in whole:
        partial = runner.partial_path(tmp_path / "b" / "runs.jsonl", rec["config_hash"])
        assert len(partial.read_text().splitlines()) == 4
    calls.clear()
    stop_after = None
    resumed = run(tmp_path / "b" / "runs.jsonl")
    assert calls == [2] * 5  # only the missing batches, both methods in each
    for r, w in zip(resumed, whole, strict=True):
        assert r["prefill_shared_by"] == 2
        assert "resumed_samples" not in w and r["resumed_samples"] == 4
        for key in ("metrics", "details", "kv_bytes", "kv_effective_bits", "num_tokens", "config_hash"):
            assert r[key] == w[key], key
    assert len(records.read_records(tmp_path / "b" / "runs.jsonl")) == 2


def test_fixtures_hold_every_dataset_task_milebench_runs(root: Path) -> None:
    """The documented offline smoke test (`task=milebench` on the fixture root) finds all 12 datasets."""
    mb.MileBenchTask("milebench", {"milebench_root": str(root)}).validate()
    for name in mb.PAPER_TASKS:
        samples = mb.load_dataset(root, name)
        assert samples and all(s.choices and s.answer in s.choices for s in samples)
