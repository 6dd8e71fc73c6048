"""train_vlm's data path: text-form questions (captions for images) and the stand-alone route stages."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import train_vlm  # noqa: E402

from akvq.models.sources.synth_vlm import IMAGE_TOKEN, TOKENS_PER_IMAGE, TowerConfig, build_untrained  # noqa: E402
from akvq.synth.bench import caption  # noqa: E402

SMALL = TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=0)


KEEP = (0, 1, 28, 29)
"""SmolLM2's decoder layers `_adapted` keeps: first and last two (what these tests check does not need depth, and
30 layers made them a minute each on an AVX2 CPU, where bf16 autocast is emulated)."""


@pytest.fixture(scope="module")
def small() -> Any:
    """One build of the small model for the module (each build reloads SmolLM2: ~8 s); tests that change it copy."""
    return build_untrained(SMALL, seed=0)


def _adapted(small: Any, targets: tuple[str, ...]) -> tuple[Any, list[torch.nn.Parameter]]:
    """A copy of the small model, its LM cut to `KEEP`, with rank-2 adapters on the last two layers whose B is
    not zero, so that A gets a gradient too."""
    from akvq.models.sources.synth_vlm import add_lora

    loaded = copy.deepcopy(small)
    lm = loaded.model.model.language_model
    lm.layers = torch.nn.ModuleList(lm.layers[i] for i in KEEP)
    for i, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = i  # a cache's slots (a frozen prefix runs into one) follow the order
    loaded.model.config.text_config.num_hidden_layers = len(KEEP)
    params = add_lora(loaded.model, 2, 4.0, targets, len(KEEP) - 2)
    with torch.no_grad():
        for p in params[1::2]:
            p.normal_(0, 0.05)
    return loaded, params


def _both_ways(
    loaded: Any, params: list[torch.nn.Parameter], examples: list[Any], flag: str
) -> tuple[list[torch.Tensor], list[float]]:
    """The adapters' whole gradient and the loss of one batch, with `accumulate`'s `flag` off, then on."""
    grads, losses = [], []
    for on in (False, True):
        for p in params:
            p.grad = None
        loss, _, _ = train_vlm.accumulate(loaded.model, loaded, examples, 2, "cpu", **{flag: on})
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        losses.append(float(loss))
    return grads, losses


def test_routes_end_with_their_own_stage() -> None:
    needle = next(s for s in train_vlm.STAGES if s.name == "needle")
    assert train_vlm.stage_start("needle") == train_vlm.stage_start("tasks") + 600
    assert train_vlm.stage_at(train_vlm.stage_start("needle")) is needle
    assert needle.text == 0.5 and needle.max_images == 33
    assert all(
        s.text == 0.0
        for s in train_vlm.STAGES
        if s.name not in ("needle", "long", "lookup", "balance", "pair")
    )  # older streams unchanged
    long = next(s for s in train_vlm.STAGES if s.name == "long")
    assert (
        train_vlm.route_stage("long") is long
        and train_vlm.last_step("long", None) == train_vlm.stage_start("long") + 240
    )
    lookup = train_vlm.route_stage("lookup")
    assert lookup is not None and train_vlm.stage_start("lookup") == train_vlm.stage_start("long") + 240
    assert "NumberAt" in lookup.tasks and lookup.min_images == 17


def test_a_loss_figure_names_the_stages_its_steps_ran(tmp_path: Path) -> None:
    """A route stage runs past its curriculum length: the figure's spans come from the steps, not from STAGES."""
    # 480 steps of one route stage (its curriculum length is 240)
    steps = [{"step": s, "loss": 0.1, "stage": "needle"} for s in range(6601, 7081)]
    assert train_vlm.stage_spans(steps) == [("needle", 6601, 7080)]
    ran = ((2, "few"), (3, "few"), (4, "more"))
    mixed = [
        {"step": 1, "loss": 1.0},
        *({"step": s, "loss": 0.5, "stage": n} for s, n in ran),
    ]  # step 1: no stage
    assert train_vlm.stage_spans(mixed) == [("few", 2, 3), ("more", 4, 4)]
    train_vlm.plot_losses(mixed, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_number_at_asks_the_needle_the_other_way_round() -> None:
    """The drill's answer is the number in the asked image; its options are that number's family."""
    from akvq.synth import bench

    rng = random.Random(3)
    pool = bench.make_pool("NumberAt", rng, 12)
    for _ in range(20):
        item = bench.generate("NumberAt", rng, pool, 20)
        q = int(item.context.rsplit("Image ", 1)[1].rstrip("?"))
        assert item.scenes[q - 1].text == item.answer and item.answer in item.choices
        assert len(set(item.choices)) == 4

        def near(a: str, b: str) -> bool:
            return sum(x != y for x, y in zip(a, b, strict=True)) == 1

        # the options are one number family: a base and three numbers one digit away from it
        assert any(all(near(b, c) for c in item.choices if c != b) for b in item.choices)


def test_batch_counts_grow_from_the_stage_minimum() -> None:
    """`needle` draws mostly short prompts early; `long` trains at 17-33 images from its first step (the 1K
    cell asks with 33)."""
    rng = random.Random(0)
    needle = train_vlm.route_stage("needle")
    long = train_vlm.route_stage("long")
    assert needle is not None and long is not None
    early = [train_vlm.batch_count(rng, needle, 0.0) for _ in range(200)]
    assert set(early) == {1, 2, 3, 4}
    first = [train_vlm.batch_count(rng, long, 0.0) for _ in range(200)]
    last = [train_vlm.batch_count(rng, long, 1.0) for _ in range(400)]
    assert min(first) == 17 and max(first) == 17  # the cap starts at the minimum
    assert min(last) == 17 and max(last) == 33
    drills = next(s for s in train_vlm.STAGES if s.name == "drills")
    assert train_vlm.batch_count(rng, drills, 0.5) is None  # not `same_count`: each item draws its own


def test_steps_may_lengthen_a_route_but_not_the_curriculum() -> None:
    tasks, needle = train_vlm.stage_start("tasks"), train_vlm.stage_start("needle")
    assert train_vlm.last_step("needle", None) == needle + 240
    assert train_vlm.last_step("needle", 480) == needle + 480  # a longer run of the same stage
    assert train_vlm.last_step("tasks", 700) == tasks + 700  # not cut at the needle stage's start
    assert train_vlm.last_step("tasks", 1) == tasks + 1
    assert train_vlm.last_step("drills", 10**6) == tasks  # the curriculum stops where the routes begin
    assert train_vlm.last_step("all", None) == tasks


def test_as_text_puts_each_caption_where_its_image_was() -> None:
    rng = random.Random(0)
    stage = next(s for s in train_vlm.STAGES if s.name == "tasks")
    item = train_vlm.draw_item(rng, stage, 6)
    prompt = "".join(f"Image {i}: {IMAGE_TOKEN} ({i})\n" for i in range(1, len(item.scenes) + 1))
    ex = train_vlm.Example(prompt, item.scenes, "x", item.task)
    got = train_vlm.as_text(ex)
    assert got.text and got.scenes == ex.scenes and IMAGE_TOKEN not in got.prompt
    for i, s in enumerate(item.scenes, 1):
        assert f"Image {i}: {caption(s)} ({i})" in got.prompt
    with pytest.raises(ValueError, match="placeholders"):
        train_vlm.as_text(train_vlm.Example(IMAGE_TOKEN, (), "x", "t"))


def test_the_pair_stage_asks_both_see_saw_tasks_in_every_batch(small: Any) -> None:
    """`Stage.each`: every batch of "pair" holds the needle and ObjectExistence at the batch's image count, the
    rest drawn from its mix; the stages without it keep their streams."""
    loaded = small
    pair = train_vlm.route_stage("pair")
    assert pair is not None and pair.each == ("ImageNeedleInAHaystack", "ObjectExistence")
    assert all(not s.each for s in train_vlm.STAGES if s.name != "pair")
    rng = random.Random(3)
    for _ in range(3):
        tasks = train_vlm.batch_tasks(pair, 4)
        batch = [train_vlm.draw_example(loaded, rng, pair, frozenset(), 17, t) for t in tasks]
        got = [ex.task for ex in batch]
        assert got[:2] == list(pair.each) and all(t in pair.tasks for t in got[2:])
        assert all(len(ex.scenes) >= 17 for ex in batch)
    with pytest.raises(ValueError, match="smaller than stage 'pair'"):
        train_vlm.batch_tasks(pair, 1)


@pytest.mark.slow
def test_a_batch_mixes_text_form_and_image_questions(small: Any) -> None:
    """Half the needle stage's questions come as text; a mixed batch has image tokens only for the others."""
    loaded = small
    stage = next(s for s in train_vlm.STAGES if s.name == "needle")
    rng = random.Random(1)
    examples = [train_vlm.draw_example(loaded, rng, stage, frozenset(), 5) for _ in range(24)]
    text = [ex for ex in examples if ex.text]
    assert 6 <= len(text) <= 18  # 0.5 of 24
    assert all(IMAGE_TOKEN not in ex.prompt for ex in text)
    batch = [text[0], next(ex for ex in examples if not ex.text)]
    enc, lens = train_vlm.make_batch(loaded, batch)
    image_id = loaded.model.config.image_token_index
    per_row = (enc["input_ids"] == image_id).sum(1).tolist()
    assert per_row == [0, TOKENS_PER_IMAGE * len(batch[1].scenes)]
    assert enc["pixel_values"].shape[0] == len(batch[1].scenes)
    assert lens[0] >= 2


def test_every_recipe_phase_is_a_command_the_script_accepts(tmp_path: Path) -> None:
    """Each phase's command line, as `run_recipe` builds it (shipped and smoke, with and without native bf16),
    passes the script's own checks; its stage draws questions; it starts from an earlier phase's export."""
    seen: list[str] = []
    for ph in train_vlm.RECIPE:
        assert ph.init is None or ph.init in seen, ph
        seen.append(ph.name)
        (
            tmp_path / f"{ph.name}.safetensors"
        ).touch()  # the export the next phase starts from (--init is checked)
        for smoke in (False, True):
            for bf16_ok in (False, True):
                args = argparse.Namespace(
                    out=tmp_path, seed=0, threads=2, device="cpu", ckpt_minutes=5.0, recipe_smoke=smoke
                )
                got = train_vlm.parse_args(train_vlm.phase_argv(ph, args, bf16_ok))
                assert got.seed == ph.seed_offset and got.out == tmp_path / ph.name
        if ph.name == "align":
            assert got.stage == "align"
            continue
        stage = train_vlm.run_route(got.stage, got.cells)
        assert stage is not None, ph
        rng = random.Random(0)
        tokens = min(stage.tokens) if stage.tokens else None
        assert all(train_vlm.draw_item(rng, stage, tokens=tokens).scenes for _ in range(4))
    assert [ph.seed_offset for ph in train_vlm.RECIPE][-5:] == [5, 7, 12, 15, 17]  # the hand runs' seeds
    assert {p.name for p in tmp_path.iterdir()} == {
        f"{ph.name}.safetensors" for ph in train_vlm.RECIPE
    }  # nothing ran


def test_a_missing_init_file_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        train_vlm.parse_args(["--out", str(tmp_path), "--init", str(tmp_path / "nope.safetensors")])
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("--init: " + repr(str(tmp_path / "nope.safetensors")) + ": no such file")
    )


@pytest.mark.slow
def test_the_recipe_chains_its_phases_and_a_rerun_skips_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--recipe` runs align -> an LM phase from align's export -> the context phase (its own seed, the shortest
    cell) into a loadable float16 file, one tiny step each; the test above checks every phase's command line."""
    from dataclasses import replace

    from safetensors import safe_open

    from akvq.models.sources.synth_vlm import load_synth_vlm

    by_name = {ph.name: ph for ph in train_vlm.RECIPE}
    chain = (by_name["align"], by_name["tasks"], replace(by_name["context"], init="tasks"))
    args = argparse.Namespace(
        out=tmp_path, seed=0, threads=2, device="cpu", ckpt_minutes=5.0, recipe_smoke=True
    )
    final = train_vlm.run_recipe(args, chain)
    for ph in chain:
        assert (tmp_path / f"{ph.name}.safetensors").exists()
        if ph.name != "align":
            assert json.loads((tmp_path / ph.name / "run.json").read_text())["seed"] == ph.seed_offset
    with safe_open(str(final), framework="pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert any(".layers.0." in k for k in keys) and any(".layers.29." in k for k in keys)  # lora from 0
    assert dtypes == {torch.float16}  # the shipped file is half precision
    sha = hashlib.sha256(final.read_bytes()).hexdigest()
    assert load_synth_vlm(final, sha256=sha).family == "llava"
    record = json.loads((tmp_path / "recipe.json").read_text())
    assert record["final_sha256"] == sha and [r["phase"] for r in record["phases"]] == [
        ph.name for ph in chain
    ]
    for r in record["phases"]:
        assert (
            r["export_sha256"]
            == hashlib.sha256((tmp_path / f"{r['phase']}.safetensors").read_bytes()).hexdigest()
        )
        assert r["steps"] >= 1 and r["wall_seconds"] > 0 and r["command"] and r["seed"] is not None
    assert record["wall_seconds"] == round(sum(r["wall_seconds"] for r in record["phases"]), 1)
    capsys.readouterr()
    train_vlm.run_recipe(args, chain)
    assert capsys.readouterr().out.count("already exported") == len(chain)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sha
    assert (
        json.loads((tmp_path / "recipe.json").read_text())["phases"] == record["phases"]
    )  # a rerun trains nothing


@pytest.mark.slow
def test_micro_batches_give_the_whole_batchs_gradient(small: Any) -> None:
    """`--micro-batch` only saves memory: the summed gradient and the loss are the whole batch's."""
    loaded, params = _adapted(small, ("q_proj",))
    stage = next(s for s in train_vlm.STAGES if s.name == "needle")
    rng = random.Random(3)
    examples = [train_vlm.draw_example(loaded, rng, stage, frozenset(), 4) for _ in range(3)]
    grads, losses = [], []
    for micro in (3, 1):
        for p in params:
            p.grad = None
        loss, right, _ = train_vlm.accumulate(loaded.model, loaded, examples, micro, "cpu")
        grads.append([p.grad.clone() for p in params])
        losses.append(float(loss))
        assert len(right) == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for whole, parts in zip(*grads, strict=True):
        scale = float(
            whole.abs().max()
        )  # padding changes float sums a little: compare at the gradient's scale
        assert scale > 0 and float((whole - parts).abs().max()) < 2e-3 * scale


def test_bf16_autocast_on_cpu_is_the_same_gradient_at_bf16_precision(small: Any) -> None:
    """`--bf16` (AMX on CPU) only lowers the matmuls' precision: the loss and the adapters' gradient stay the fp32
    path's to bf16 accuracy, and the path really changes (the results are not bit-identical)."""
    loaded, params = _adapted(small, ("q_proj", "down_proj"))
    stage = next(s for s in train_vlm.STAGES if s.name == "needle")
    rng = random.Random(5)
    examples = [train_vlm.draw_example(loaded, rng, stage, frozenset(), 4) for _ in range(2)]
    grads, losses = _both_ways(loaded, params, examples, "bf16")
    assert losses[0] == pytest.approx(losses[1], rel=3e-2)
    assert not torch.equal(grads[0], grads[1])
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert float(cos) > 0.98
    assert all(p.dtype == torch.float32 for p in params)  # master weights stay fp32


def test_a_higher_rank_run_starts_from_the_files_function(tmp_path: Path) -> None:
    """`--init` a rank-2 file into a rank-4 model: the first components hold the file's factors, B rescaled to the
    new alpha / rank, so every merged weight is the file's; a lower-rank model is refused."""
    from akvq.models.sources.synth_vlm import add_lora, save_trained, trained_state

    targets = ("q_proj", "down_proj")
    r2 = TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=2)
    small = build_untrained(r2, seed=0)
    for p in add_lora(small.model, 2, 16.0, targets, 28)[1::2]:
        with torch.no_grad():
            p.normal_(0, 0.05)
    path = tmp_path / "r2.safetensors"
    save_trained(path, trained_state(small.model), r2)
    big = build_untrained(TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=4), seed=1)
    add_lora(big.model, 4, 16.0, targets, 28)
    train_vlm.load_trained(big.model, path)
    old = {n: m for n, m in small.model.named_modules() if hasattr(m, "merged_weight")}
    new = {n: m for n, m in big.model.named_modules() if hasattr(m, "merged_weight")}
    assert old.keys() == new.keys() and old
    for n in old:
        assert torch.allclose(new[n].merged_weight(), old[n].merged_weight(), atol=1e-6)
        assert not torch.equal(new[n].a[2:], torch.zeros_like(new[n].a[2:]))  # fresh directions to train
    one = build_untrained(TowerConfig(hidden=64, layers=1, heads=2, mlp=128, lora_rank=1), seed=1)
    add_lora(one.model, 1, 16.0, targets, 28)
    with pytest.raises(KeyError, match="does not fit"):
        train_vlm.load_trained(one.model, path)


def test_a_frozen_prefix_keeps_the_loss_and_trains_through_the_question_only(small: Any) -> None:
    """`Stage.frozen_prefix`: the images run into a cache without a gradient, the rest with one. The loss is the full
    forward's; adapters still get a gradient (through the question and answer tokens), but not the same one."""
    loaded, params = _adapted(small, ("q_proj", "v_proj"))
    stage = next(s for s in train_vlm.STAGES if s.name == "context")
    assert stage.frozen_prefix and stage.tokens
    rng = random.Random(7)
    examples = [
        train_vlm.draw_example(loaded, rng, stage, frozenset(), task=t, tokens=300)
        for t in train_vlm.TASKS[:2]
    ]
    grads, losses = _both_ways(loaded, params, examples, "frozen_prefix")
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert float(grads[1].abs().max()) > 0
    assert not torch.allclose(grads[0], grads[1])


def test_prefix_segments_cut_at_whole_images_of_every_row() -> None:
    """Evidence columns of one row widen over the image they cut in another (left padding differs per row), and
    each segment names the images inside it, indexed row-major as `pixel_values` is."""
    ids = torch.zeros(2, 22, dtype=torch.long)
    for row, starts in ((0, (2, 8, 14)), (1, (4, 8, 16))):  # row 1: two adjacent images, one run of 8
        for a in starts:
            ids[row, a : a + 4] = 9
    spans = train_vlm.image_spans(ids, 9, 4)
    assert spans == [[(2, 6), (8, 12), (14, 18)], [(4, 8), (8, 12), (16, 20)]]
    segs = train_vlm.prefix_segments(spans, [(2,), ()], 20)
    assert [(g.start, g.stop, g.grad, g.images) for g in segs] == [
        (0, 8, False, (0, 3)),
        (8, 12, True, (1, 4)),
        (12, 20, False, (2, 5)),
    ]
    shifted = [[(2, 6), (8, 12), (14, 18)], [(4, 8), (10, 14), (16, 20)]]  # row 1 cuts [8, 12): widen to 14
    assert [(g.start, g.stop, g.grad) for g in train_vlm.prefix_segments(shifted, [(2,), ()], 20)] == [
        (0, 8, False),
        (8, 14, True),
        (14, 20, False),
    ]
    assert [g.images for g in train_vlm.prefix_segments(spans, None, 20)] == [(0, 1, 2, 3, 4, 5)]
    with pytest.raises(ValueError, match="evidence image 4 of a row with 3 images"):
        train_vlm.prefix_segments(spans, [(4,), ()], 20)
    with pytest.raises(ValueError, match="frozen prefix"):
        train_vlm.batch_loss(None, {}, [1], frozen_prefix=False, evidence=[()])
    with pytest.raises(ValueError, match="frozen prefix"):
        train_vlm.Stage("x", 1, "qa", evidence=True)


def test_the_evidence_stage_trains_the_answers_images_at_their_place(small: Any) -> None:
    """`Stage.evidence`: the loss stays the full forward's, and the gradient now reaches the images the answer rests
    on (the projector gets one), which the frozen prefix alone never does."""
    loaded, params = _adapted(small, ("q_proj", "v_proj"))
    projector = [p.requires_grad_(True) for p in loaded.model.model.multi_modal_projector.parameters()]
    stage = train_vlm.route_stage("evidence")
    assert stage is not None and stage.frozen_prefix and stage.evidence and stage.tokens
    rng = random.Random(7)
    examples = [
        train_vlm.draw_example(loaded, rng, stage, frozenset(), task=t, tokens=300)
        for t in ("ImageNeedleInAHaystack", "ObjectExistence")
    ]
    assert all(ex.evidence for ex in examples)
    features: list[torch.Tensor] = []  # the projector's outputs that carry a gradient, one per forward

    def keep(_m: Any, _i: Any, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.retain_grad()
            features.append(out)

    loaded.model.model.multi_modal_projector.register_forward_hook(keep)
    results = []
    for flags in ({}, {"frozen_prefix": True}, {"frozen_prefix": True, "evidence": True}):
        for p in params + projector:
            p.grad = None
        features.clear()
        loss, _, _ = train_vlm.accumulate(loaded.model, loaded, examples, 2, "cpu", **flags)
        reach = sum(float(p.grad.abs().sum()) for p in projector if p.grad is not None)
        results.append((float(loss), torch.cat([p.grad.flatten() for p in params]), reach))
    (full, g_full, r_full), (frozen, g_frozen, r_frozen), (evid, g_evid, r_evid) = results
    assert full == pytest.approx(frozen, rel=1e-4) and full == pytest.approx(evid, rel=1e-4)
    assert r_full > 0 and r_frozen == 0 and r_evid > 0
    assert not torch.allclose(g_evid, g_frozen) and not torch.allclose(g_evid, g_full)
    # every run with the gradient, not only the last one before the question, gets it back through the cache
    assert len(features) > 2  # the needle's four option images lie apart
    assert all(f.grad is not None and float(f.grad.abs().sum()) > 0 for f in features)


def test_the_context_stage_asks_at_the_benchmarks_cell_lengths() -> None:
    """A `tokens` stage gives each item the image count of the benchmark's cell of that length, per task."""
    from akvq.synth.bench import LEVELS, images_for

    stage = next(s for s in train_vlm.STAGES if s.name == "context")
    assert "context" in train_vlm.ROUTES and set(stage.tokens) == set(LEVELS.values())
    rng = random.Random(1)
    for task in train_vlm.TASKS:
        item = train_vlm.draw_item(rng, stage, task=task, tokens=LEVELS["8K"])
        assert len(item.scenes) == images_for(task, LEVELS["8K"]) > 100


def test_the_recipe_drops_bf16_only_on_a_cpu_that_would_emulate_it() -> None:
    """bf16 autocast without AMX-BF16/AVX512-BF16 made a step ~10x slower than fp32 (Zen 3: 415 s vs 42 s)."""
    ph = next(p for p in train_vlm.RECIPE if "--bf16" in p.args)
    assert train_vlm.phase_args(ph, "cpu", bf16_ok=True) == ph.args
    assert train_vlm.phase_args(ph, "cuda", bf16_ok=False) == ph.args
    emulated = train_vlm.phase_args(ph, "cpu", bf16_ok=False)
    assert "--bf16" not in emulated and len(emulated) == len(ph.args) - 1


@pytest.mark.parametrize(
    "argv", [["--stage", "pair", "--cells", "2K"], ["--stage", "evidence", "--cells", "1K,3K"]]
)
def test_cells_is_refused_in_one_line_outside_context_stages_and_levels(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "argv", ["train_vlm.py", "--out", str(tmp_path), *argv])
    with pytest.raises(SystemExit):
        train_vlm.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--cells" in err and "1K, 2K, 4K, 8K" in err and "context, evidence or full" in err
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_cells_narrows_the_context_stages_to_those_lengths() -> None:
    assert train_vlm.run_route("evidence", "1K,2K").tokens == (1024, 2048)
    assert train_vlm.run_route("evidence").tokens == train_vlm.CONTEXT
    assert train_vlm.route_stage("evidence").tokens == train_vlm.CONTEXT  # STAGES untouched
    with pytest.raises(ValueError, match="context, evidence or full"):
        train_vlm.run_route("pair", "1K")
    assert train_vlm.run_route("full", "4K,8K").tokens == (4096, 7800)


def test_the_full_stage_trains_the_needle_at_the_benchmarks_lengths_through_every_token() -> None:
    """`full`: the route mix (half the needle) at the cell lengths, with the whole backward (no frozen prefix)."""
    stage = train_vlm.route_stage("full")
    assert stage is not None and stage.tokens == train_vlm.CONTEXT and stage.tasks == train_vlm.NEEDLE_MIX
    assert not stage.frozen_prefix and not stage.evidence
    assert (
        train_vlm.stage_start("full")
        == train_vlm.stage_start("evidence") + train_vlm.route_stage("evidence").steps
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--max-minutes", "-1"], "--max-minutes >= 0"),
        (["--device", "cuda:0"], "--device cuda:0: allowed: cpu, or cuda[:N] where torch sees a GPU"),
        (["--device", "gpu"], "--device gpu: allowed: cpu, or cuda[:N]"),
    ],
)
def test_device_and_max_minutes_are_refused_in_one_line_before_the_model_loads(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if argv[0] == "--device" and argv[1].startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        train_vlm.parse_args(["--out", str(tmp_path), *argv])
    assert says in capsys.readouterr().err.strip().splitlines()[-1]


def test_max_minutes_stops_a_run_checkpointed_and_says_so_in_its_record(
    small: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU run has minutes (scripts/gpu_needle.sh): `--max-minutes` ends it after the step in flight, with the
    checkpoint, run.json and loss curve of a finished run, the planned steps beside the ones done."""
    loaded = copy.deepcopy(small)
    lm = loaded.model.model.language_model
    lm.layers = torch.nn.ModuleList(lm.layers[i] for i in KEEP)
    for i, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = i
    loaded.model.config.text_config.num_hidden_layers = len(KEEP)
    monkeypatch.setattr(train_vlm, "build_untrained", lambda tower, seed=0: loaded)
    argv = ["--out", str(tmp_path), "--stage", "full", "--cells", "1K", "--steps", "3", "--batch", "1"]
    train_vlm.train(
        train_vlm.parse_args([*argv, "--lora-rank", "0", "--warmup", "1", "--max-minutes", "1e-9"])
    )
    record = json.loads((tmp_path / "run.json").read_text())
    start = train_vlm.stage_start("full")
    assert record["stopped_by_max_minutes"] and record["stage"] == "full"
    assert (record["steps"], record["planned_steps"]) == (start + 1, start + 3)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ck["step"] == start + 1 and len(ck["history"]) == 1 and (tmp_path / "loss.png").exists()
    # the minutes are a sitting's (a job's time limit): a resumed run that has trained for hours gets its own
    ck["wall"] = 7200.0
    torch.save(ck, tmp_path / "ckpt.pt")
    train_vlm.train(
        train_vlm.parse_args([*argv, "--lora-rank", "0", "--warmup", "1", "--max-minutes", "60", "--resume"])
    )
    record = json.loads((tmp_path / "run.json").read_text())
    assert not record["stopped_by_max_minutes"] and record["steps"] == start + 3
    assert record["wall_seconds"] >= 7200  # the record's wall stays the run's total
