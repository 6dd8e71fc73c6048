"""Train synth-vlm's vision tower, projector and LoRA adapters on procedurally generated SynthBench items.

    python scripts/train_vlm.py --recipe --out runs/synth-vlm [--threads 2] [--device cuda]   # one command
    nice -n 19 python scripts/train_vlm.py --out runs/synth-vlm [--seed 0] [--threads 2] [--resume]
    python scripts/train_vlm.py --out runs/synth-vlm --export assets/synth-vlm/synth-vlm.safetensors

`--recipe` runs the phases of `RECIPE` in order (align, tasks, needle, balance, lookup, pair, context, full), each in
OUT/<phase> from the previous phase's export, and writes OUT/synth-vlm.safetensors with its SHA-256 and
OUT/recipe.json (each phase's record and export SHA-256, the CPU, the hours); run again after a kill, it skips the
exported phases and resumes the one in progress.

Stage 0, `--stage align` (akvq/synth/align.py): only the tower and projector, trained so that an image's 16
tokens equal SmolLM2's input embeddings of its description ("            9451"); no LM forward, so it runs
at hundreds of images per second. Its checkpoint is OUT/align.pt (`--stage align --export FILE` exports it,
at curriculum step 0), and `--init FILE` starts the LM stages from it. `--stage caption|drills|...` starts
the curriculum at that stage (`--steps N` then counts from there; a route stage, `tasks`, `needle` or `long`, may
run longer than its default). `--read N --init FILE` measures, forward only, whether the frozen LM reads the image tokens of N held-out images (OUT/read.json).

SmolLM2-135M-Instruct stays frozen (LoRA on q/v when `--lora-rank` > 0); the loss is on the answer tokens
only (the option text, `12<|im_end|>`). Prompts are built by the MileBench prompt code exactly as evaluation builds them,
then wrapped in the chat template. Stages (the curriculum, `STAGES`) go from single-image drills on short
sequences to multi-image tasks with more images. Every `--ckpt-minutes` the trained tensors, optimizer, data
RNG and loss history go to OUT/ckpt.pt (atomically), so a killed run resumes with `--resume` and continues
the same stream. OUT/run.json records command, git rev, seed, steps and wall time; OUT/loss.png the curve.

Seeded and deterministic on CPU for a fixed thread count. Training items come from the `train` stream of
`--seed`, which never shares draws with a benchmark root; the standard evaluation seed is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from akvq.api import cache_kwarg  # noqa: E402
from akvq.models.sources.synth_vlm import (  # noqa: E402
    IMAGE_TOKEN,
    TOKENS_PER_IMAGE,
    TRAINED_PREFIXES,
    TowerConfig,
    add_lora,
    build_untrained,
    save_trained,
    sha256_of,
    trained_state,
)
from akvq.native import cpu_model, native_bf16  # noqa: E402
from akvq.paths import atomic_open, save_figure, write_atomic  # noqa: E402
from akvq.records import git_rev  # noqa: E402
from akvq.synth import align  # noqa: E402
from akvq.synth.bench import (  # noqa: E402
    EVAL_SEED,
    INSTRUCTIONS,
    LEVELS,
    MIN_IMAGES,
    TASKS,
    VAL_SEED,
    Item,
    caption,
    caption_scene,
    generate,
    images_for,
    make_pool,
    training_held_out,
)
from akvq.synth.draw import Scene, render  # noqa: E402
from akvq.tasks.generation import chat_text  # noqa: E402
from akvq.tasks.milebench import Sample, build_prompt  # noqa: E402

END = "<|im_end|>"


@dataclass(frozen=True)
class Stage:
    """`kind` "caption": one image then its caption (LLaVA's alignment stage: cheap, ~25 tokens, rich targets);
    "qa": benchmark-format questions with up to `max_images` images."""

    name: str
    steps: int
    kind: str
    tasks: tuple[str, ...] = ()
    max_images: int = 1
    same_count: bool = False
    """One image count per batch (little padding), drawn uniformly from [1, cap], the cap growing from 4 to
    `max_images` over the run: short, cheap sequences while the answer format is learnt, longer ones later."""
    min_images: int = 1
    """With `same_count`, the fewest images a batch draws; the cap grows from max(4, this) to `max_images`.
    Above 1 the stage trains at the evaluation's counts instead of mostly short prompts."""
    text: float = 0.0
    """Fraction of questions given with each image's caption in its place ("Image 3: 9451 (3)"): ~5 tokens an
    image instead of 21, so the LM practises matching and copying a label over many images at a quarter of the
    cost; the aligned tower makes image tokens read like those captions."""
    each: tuple[str, ...] = ()
    """Tasks asked once in every batch, the rest drawn from `tasks`: no step trains one of them alone. With the needle
    and ObjectExistence (`pair`) this moved the needle 81.5 -> 88.5 % over 200 fresh items (results/vlm/HISTORY.md)."""
    tokens: tuple[int, ...] = ()
    """Prompt lengths (tokens) a batch draws one of; each item then has as many images as the benchmark's cell of that
    length (`images_for`), instead of a count from `max_images`."""
    frozen_prefix: bool = False
    """Gradient only through the tokens after the last image: the images' keys and values are computed without one
    (`batch_loss`). A full backward at 8K tokens was estimated at 1-2 min an item here; the first `context` run took
    44 s a step of 8 items at 1K-7.8K tokens (2 threads, bf16)."""
    evidence: bool = False
    """With `frozen_prefix` (required), the images the answer rests on (`Item.evidence`: the option images, the
    asked-about one) also run with the gradient, at their place in the long prompt: `context` never trains an image's
    own keys and values beyond ~1K tokens, and at 8K the needle and Spot-the-Diff stayed near chance after it."""

    def __post_init__(self) -> None:
        if self.evidence and not self.frozen_prefix:
            raise ValueError(
                f"stage {self.name!r}: evidence trains through a frozen prefix; set frozen_prefix too"
            )


NEEDLE_MIX = ("ImageNeedleInAHaystack", "ImageNeedleInAHaystack", *TASKS)
"""The route stages' questions: half the needle, half the four benchmark tasks (the needle among them)."""
LOOKUP_MIX = ("ImageNeedleInAHaystack", "ImageNeedleInAHaystack", "NumberAt", *TASKS)
""""lookup": the needle both ways round (3/7 the needle, 1/7 `NumberAt`) and the other three tasks kept up."""
BALANCE_MIX = (*LOOKUP_MIX, "ObjectExistence")
""""balance": "lookup" with ObjectExistence twice (it cost the needle 14 paired items: results/vlm/HISTORY.md)."""
PAIR = ("ImageNeedleInAHaystack", "ObjectExistence")
""""pair": the see-sawing two in every batch (`Stage.each`), the rest of the batch drawn from `LOOKUP_MIX`."""
CONTEXT = tuple(LEVELS.values())
""""context": the benchmark's four cell lengths, 1K to 7.8K tokens. The earlier stages train on prompts of ~1K tokens;
at 7.8K the model answers SceneTransition with <|im_end|> (results/vlm/HISTORY.md, "fp16 at 8K")."""

STAGES: tuple[Stage, ...] = (
    Stage("caption", 1500, "caption"),
    Stage("drills", 500, "qa", ("ReadNumber", "NameObject", "ObjectExistence"), 2),
    Stage("few", 1000, "qa", ("ReadNumber", "NameObject", *TASKS), 6),
    Stage("more", 1500, "qa", TASKS, 12),
    Stage("many", 1500, "qa", TASKS, 24),
    Stage("tasks", 600, "qa", ("ReadNumber", "NameObject", *TASKS), 16, same_count=True),
    Stage("needle", 240, "qa", NEEDLE_MIX, 33, same_count=True, text=0.5),
    Stage("long", 240, "qa", NEEDLE_MIX, 33, same_count=True, min_images=17, text=0.5),
    Stage("lookup", 200, "qa", LOOKUP_MIX, 33, same_count=True, min_images=17, text=0.5),
    Stage("balance", 60, "qa", BALANCE_MIX, 33, same_count=True, min_images=17, text=0.5),
    Stage("pair", 200, "qa", LOOKUP_MIX, 33, same_count=True, min_images=17, text=0.5, each=PAIR),
    Stage("context", 60, "qa", TASKS, tokens=CONTEXT, frozen_prefix=True),
    Stage("evidence", 60, "qa", TASKS, tokens=CONTEXT, frozen_prefix=True, evidence=True),
    Stage("full", 150, "qa", NEEDLE_MIX, tokens=CONTEXT),
)
"""The curriculum: captions, single-image questions on short sequences, then more images per prompt.

"tasks" is the short route from the aligned tower (`--init` the stage-0 file, `--stage tasks`): the frozen LM
already reads aligned image tokens, so only the four benchmark tasks and the two drills are trained, on 1-16
images. The answer is the option's text (`Item.target`).

"needle" continues from "tasks" (`--stage needle --init` its file): half of the questions are the needle, up to
33 images (the 1K cell's count), half of all questions in text form (`Stage.text`). Its counts are drawn from
[1, cap], so most of its prompts are short, while the 1K cell asks with 33 images; "long" continues from
"needle" with 17-33 images a prompt (`Stage.min_images`). "lookup" continues from "long" once that levels off:
the needle's misses are the number-to-index lookup over 33 labelled items, so it also asks the reverse.
"balance" continues from "lookup" with ObjectExistence weighted up again; "pair" asks both in every batch.
"context" asks the four tasks at the benchmark's 1K-8K lengths, the gradient through the question and answer only;
"evidence" the same with the gradient also through the images the answer rests on. "full" asks the route stages'
mix (half the needle) at those lengths with the whole backward: every image's keys and values at every depth get the
gradient, which `evidence` (40 steps on a CPU) did not give the 4K-8K needle. A GPU's stage (`--device cuda`,
`scripts/gpu_needle.sh`): one 7.7K-token item's forward and backward took 154 s and 15 GB in fp32 on a 2-core AVX2 CPU."""

ROUTES = ("tasks", "needle", "long", "lookup", "balance", "pair", "context", "evidence", "full")
"""Stages that run alone (from an `--init` file) and end with themselves; the others run into the next."""


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt text with `<image>` placeholders, its scenes, and the supervised answer."""

    prompt: str
    scenes: tuple[Scene, ...]
    target: str
    task: str
    text: bool = False
    """The images are given as their captions (`as_text`); `scenes` stays for the held-out check."""
    evidence: tuple[int, ...] = ()
    """The images (1-based) the answer rests on (`Item.evidence`); `Stage.evidence` trains through them."""


def stage_start(name: str) -> int:
    """The curriculum step at which stage `name` begins."""
    done = 0
    for s in STAGES:
        if s.name == name:
            return done
        done += s.steps
    raise ValueError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def stage_at(step: int) -> Stage:
    done = 0
    for s in STAGES:
        done += s.steps
        if step < done:
            return s
    return STAGES[-1]


def route_stage(name: str) -> Stage | None:
    """The route stage called `name` (it runs alone, every step of the run in it), or None."""
    return next((s for s in STAGES if s.name == name and s.name in ROUTES), None)


def run_route(name: str, cells: str = "") -> Stage | None:
    """The route stage a run trains in, at only the benchmark `cells` given ("1K,2K"); cells are refused (ValueError,
    one line) for a stage without lengths or outside `LEVELS`."""
    route = route_stage(name)
    if not cells:
        return route
    if route is None or not route.tokens or any(c not in LEVELS for c in cells.split(",")):
        with_lengths = [s.name for s in STAGES if s.tokens]
        raise ValueError(
            f"--cells {cells}: allowed with --stage {', '.join(with_lengths[:-1])} or {with_lengths[-1]}, "
            f"cells from {', '.join(LEVELS)}"
        )
    return replace(route, tokens=tuple(LEVELS[c] for c in cells.split(",")))


def last_step(stage: str, steps: int | None) -> int:
    """The curriculum step a run started at `stage` ends at. A route stage is its own run, so `--steps` may be
    longer than its default (the stage then continues); the long curriculum ends where the routes begin."""
    end = stage_start(ROUTES[0])
    route = route_stage(stage)
    if route is not None:
        return stage_start(stage) + (steps or route.steps)
    if stage != "all":
        return min(end, stage_start(stage) + steps) if steps else end
    return steps or end


def batch_count(rng: random.Random, stage: Stage, done: float) -> int | None:
    """The image count of a `same_count` batch `done` (0..1) of the way through the run; None draws per item."""
    if not stage.same_count:
        return None
    low = max(4, stage.min_images)
    return rng.randint(stage.min_images, low + round((stage.max_images - low) * done))


def batch_tasks(stage: Stage, batch: int) -> list[str | None]:
    """A batch's tasks: `Stage.each` first, None (drawn per item) for the rest."""
    if len(stage.each) > batch:
        raise ValueError(
            f"--batch {batch} is smaller than stage {stage.name!r}'s {len(stage.each)} tasks per batch"
        )
    return [*stage.each, *[None] * (batch - len(stage.each))]


def draw_item(
    rng: random.Random,
    stage: Stage,
    count: int | None = None,
    task: str | None = None,
    tokens: int | None = None,
) -> Item:
    """One question: `task` or a task of the stage, with the images of a `tokens`-long prompt, `count` images (at
    least the task's minimum) or a random count in [task minimum, stage maximum]."""
    task = task or rng.choice(stage.tasks)
    if tokens is not None:
        n = images_for(task, tokens)
    elif count is None:
        n = rng.randint(MIN_IMAGES[task], max(MIN_IMAGES[task], stage.max_images))
    else:
        n = max(MIN_IMAGES[task], count)
    size = {"SceneTransition": 3, "Spot-the-Diff": 2}.get(task, max(4, n // 3 + 2))
    return generate(task, rng, make_pool(task, rng, size), n)


def draw_example(
    loaded: Any,
    rng: random.Random,
    stage: Stage,
    held_out: frozenset[Scene],
    count: int | None = None,
    task: str | None = None,
    tokens: int | None = None,
) -> Example:
    """A caption or question whose images are none of the evaluation or validation root's (`held_out`); redrawn
    otherwise."""
    while True:
        if stage.kind == "caption":
            scene = caption_scene(rng)
            ex = Example(IMAGE_TOKEN + "\n", (scene,), caption(scene) + END, "caption")
        else:
            item = draw_item(rng, stage, count, task, tokens)
            prompt, target = item_text(loaded, item)
            ex = Example(prompt, item.scenes, target, item.task, evidence=item.evidence)
            if stage.text and rng.random() < stage.text:
                ex = as_text(ex)
        if held_out.isdisjoint(ex.scenes):
            return ex


def as_text(ex: Example) -> Example:
    """The example with each `<image>` replaced by its image's caption (`Stage.text`)."""
    parts = ex.prompt.split(IMAGE_TOKEN)
    if len(parts) != len(ex.scenes) + 1:
        raise ValueError(f"{len(parts) - 1} image placeholders for {len(ex.scenes)} images")
    text = parts[0] + "".join(caption(s) + p for s, p in zip(ex.scenes, parts[1:], strict=True))
    return Example(text, ex.scenes, ex.target, ex.task, text=True)  # no images: no evidence to train through


def item_text(loaded: Any, item: Item) -> tuple[str, str]:
    """(prompt as evaluation renders it, target): MileBench's prompt code, then the chat template."""
    sample = Sample(
        dataset=item.task,
        sample_id=0,
        instruction=INSTRUCTIONS[item.task],
        context=item.context,
        images=list(range(len(item.scenes))),  # type: ignore[arg-type]  # truncation only counts them
        answer=item.answer,
        question_type="multi-choice",
        choices=list(item.choices),
    )
    prompt = build_prompt(sample, loaded.tokenizer, 10**9, TOKENS_PER_IMAGE)
    return chat_text(loaded, prompt.text), item.target + END


def make_batch(loaded: Any, examples: list[Example]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Left-padded inputs with the target appended, and how many trailing tokens each target has."""
    tok = loaded.tokenizer
    texts = [ex.prompt + ex.target for ex in examples]
    lens = [len(tok.encode(ex.target, add_special_tokens=False)) for ex in examples]
    images = [render(s) for ex in examples if not ex.text for s in ex.scenes]
    tok.padding_side = "left"
    enc = loaded.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    for i, (ex, k) in enumerate(zip(examples, lens, strict=True)):
        tail = tok.decode(enc["input_ids"][i, -k:])
        if tail != ex.target:  # the answer must tokenize the same inside the prompt as alone
            raise RuntimeError(f"target {ex.target!r} tokenizes differently in context: {tail!r}")
    return dict(enc), lens


@dataclass(frozen=True)
class Segment:
    """Columns [start, stop) of a batch's prefix, run in one forward: with the gradient or not, and the images
    (indices into the batch's `pixel_values`, row-major as the processor orders them) whose tokens lie in it."""

    start: int
    stop: int
    grad: bool
    images: tuple[int, ...]


def image_spans(ids: torch.Tensor, image_token_id: int, per_image: int) -> list[list[tuple[int, int]]]:
    """Per row, each image's token columns [start, stop), in order (adjacent images' runs split every `per_image`)."""
    rows = []
    for row in ids:
        is_img = (row == image_token_id).int()
        edges = torch.diff(is_img, prepend=is_img.new_zeros(1), append=is_img.new_zeros(1))
        starts, stops = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
        spans = []
        for a, b in zip(starts, stops, strict=True):
            if (b - a) % per_image:
                raise ValueError(f"an image run of {b - a} tokens is not a multiple of {per_image}")
            spans += [(c, c + per_image) for c in range(a, b, per_image)]
        rows.append(spans)
    return rows


def prefix_segments(
    spans: list[list[tuple[int, int]]], evidence: list[tuple[int, ...]] | None, stop: int
) -> list[Segment]:
    """The prefix [0, stop) cut into runs without and with the gradient: the evidence images' columns (1-based per
    row) get it, widened until no image of any row is cut (rows are padded differently), everything else not."""
    grad = torch.zeros(stop, dtype=torch.bool)
    for row, wanted in zip(spans, evidence or [()] * len(spans), strict=True):
        for j in wanted:
            if not 1 <= j <= len(row):
                raise ValueError(f"evidence image {j} of a row with {len(row)} images")
            grad[row[j - 1][0] : row[j - 1][1]] = True
    changed = evidence is not None
    while changed:  # a column range that cuts an image of another row takes the whole image
        changed = False
        for a, b in (sp for row in spans for sp in row):
            if grad[a:b].any() and not grad[a:b].all():
                grad[a:b], changed = True, True
    bounds = [0, *((grad[1:] != grad[:-1]).nonzero().flatten() + 1).tolist(), stop]
    offsets = [sum(len(r) for r in spans[:i]) for i in range(len(spans))]
    return [
        Segment(
            a,
            b,
            bool(grad[a]),
            tuple(
                o + j
                for row, o in zip(spans, offsets, strict=True)
                for j, sp in enumerate(row)
                if a <= sp[0] < b
            ),
        )
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def batch_loss(
    model: Any,
    enc: dict[str, torch.Tensor],
    lens: list[int],
    frozen_prefix: bool = False,
    evidence: list[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, list[bool]]:
    """Mean cross-entropy over answer tokens, and whether each answer was the argmax at every token.

    `frozen_prefix` (`Stage.frozen_prefix`): the tokens up to the last image run first without a gradient, into a
    cache, then the rest with one; the loss is the same, the gradient skips the images' keys and values. With
    `evidence` (per row, `Stage.evidence`) those images' tokens run with the gradient in between, and their keys and
    values go back into the cache with it (the gradient does not flow from one such run into a later one)."""
    keep = max(lens) + 1
    if evidence is not None and not frozen_prefix:
        raise ValueError("evidence images train through a frozen prefix: set frozen_prefix too")
    if frozen_prefix and "pixel_values" in enc:
        ids, mask, pixels = enc["input_ids"], enc["attention_mask"], enc["pixel_values"]
        image_id = model.config.image_token_id
        spans = image_spans(ids, image_id, int((ids == image_id).sum()) // pixels.shape[0])
        split = max(row[-1][1] for row in spans if row)
        if ids.shape[1] - split < keep:
            raise ValueError(f"{ids.shape[1] - split} tokens after the last image; the answer needs {keep}")
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        # image slots hold the placeholder's embedding; the model finds them by it and fills in each run's images
        embeds = model.get_input_embeddings()(ids)
        kept: list[tuple[int, int, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        for seg in prefix_segments(spans, evidence, split):
            with torch.set_grad_enabled(seg.grad):
                model(
                    inputs_embeds=embeds[:, seg.start : seg.stop],
                    attention_mask=mask[:, : seg.stop],
                    pixel_values=pixels[list(seg.images)] if seg.images else None,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_kwarg(): cache},
                )
            if seg.grad:
                rows = [
                    (ly.keys[:, :, seg.start : seg.stop], ly.values[:, :, seg.start : seg.stop])
                    for ly in cache.layers
                ]
                kept.append((seg.start, seg.stop, rows))
        # the no-grad runs after a grad run rebuilt the cache without its graph: put the grad runs back
        for i, layer in enumerate(cache.layers if kept else []):
            ks, vs, at = [], [], 0
            for a, b, rows in kept:
                ks += [layer.keys[:, :, at:a], rows[i][0]]
                vs += [layer.values[:, :, at:a], rows[i][1]]
                at = b
            layer.keys = torch.cat([*ks, layer.keys[:, :, at:]], dim=-2)
            layer.values = torch.cat([*vs, layer.values[:, :, at:]], dim=-2)
        out = model(
            ids[:, split:], attention_mask=mask, use_cache=True, logits_to_keep=keep, **{cache_kwarg(): cache}
        )
    else:
        out = model(**enc, logits_to_keep=keep)
    logits = out.logits[:, :-1]  # position t predicts token t+1
    ids = enc["input_ids"][:, -keep + 1 :]
    losses, right = [], []
    for i, k in enumerate(lens):
        lg, tg = logits[i, -k:], ids[i, -k:]
        losses.append(torch.nn.functional.cross_entropy(lg, tg, reduction="sum"))
        right.append(bool((lg.argmax(-1) == tg).all()))
    return torch.stack(losses).sum() / sum(lens), right


def accumulate(
    model: Any,
    loaded: Any,
    examples: list[Example],
    micro: int,
    device: str,
    bf16: bool = False,
    frozen_prefix: bool = False,
    evidence: bool = False,
) -> tuple[torch.Tensor, list[bool], int]:
    """Forward and backward the batch `micro` examples at a time, gradients summed as for the whole batch
    (each chunk's loss weighted by its share of answer tokens). The whole batch of 33-image items with adapters
    from layer 0 held ~20 GB of activations and was killed for memory on this 24 GB machine."""
    parts = [examples[i : i + micro] for i in range(0, len(examples), micro)]
    chunks = [make_batch(loaded, part) for part in parts]
    total = sum(sum(lens) for _, lens in chunks)
    loss_sum, right, tokens = torch.zeros(()), [], 0
    for part, (enc, lens) in zip(parts, chunks, strict=True):
        enc = {k: v.to(device) for k, v in enc.items()}
        wanted = [() if ex.text else ex.evidence for ex in part] if evidence else None
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16 or device != "cpu"):
            loss, ok = batch_loss(model, enc, lens, frozen_prefix, wanted)
        part = loss * (sum(lens) / total)
        part.backward()
        loss_sum += part.detach().float().cpu()
        right += ok
        tokens += int(enc["input_ids"].numel())
    return loss_sum, right, tokens


def set_trained(model: Any, state: dict[str, torch.Tensor], lora_scale: float | None = None) -> None:
    """Copy tower, projector and LoRA factors (as `trained_state` names them) into a model with adapters.

    A file whose adapters have a lower rank than the model's (`lora_scale`: the file's alpha / rank) fills the
    first components, B rescaled to the model's alpha / rank, the rest of B zero: the model computes what the
    file's did, and training goes on with more capacity (issue #12: does rank limit the needle?)."""
    named = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for k, v in state.items():
            name = k[len("lora.") :] if k.startswith("lora.") else k
            if name not in named:
                raise KeyError(f"{k} does not fit this model (is --lora-rank the same as the file's?)")
            dst = named[name]
            if k.startswith("lora.") and dst.shape != v.shape and lora_scale is not None:
                is_a = name.endswith(".a")  # a: [rank, in], b: [out, rank]
                d, other = (0, 1) if is_a else (1, 0)
                if v.shape[d] > dst.shape[d] or v.shape[other] != dst.shape[other]:
                    raise KeyError(f"{k} {tuple(v.shape)} does not fit the model's {tuple(dst.shape)}")
                r = v.shape[d]
                if is_a:
                    dst[:r].copy_(v)
                else:
                    scale = modules[name[: -len(".b")]].scale
                    dst.zero_()
                    dst[:, :r].copy_(v * (lora_scale / scale))
                continue
            dst.copy_(v)


def load_trained(model: Any, path: Path) -> int:
    """Initialise from an exported weights file; returns the step it was exported at."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tower = TowerConfig.from_metadata(meta)
        scale = tower.lora_alpha / tower.lora_rank if tower.lora_rank else None
        set_trained(model, {k: f.get_tensor(k) for k in f.keys()}, scale)
        return int(meta.get("step", 0))


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def stage_spans(history: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """The stages a run trained, as (name, first step, last step) in order, from the steps' own record: a route stage
    runs alone past its curriculum length, so the curriculum's boundaries would mark stages that never ran."""
    spans: list[tuple[str, int, int]] = []
    for h in history:
        name = h.get("stage")
        if name is None:
            continue
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], h["step"])
        else:
            spans.append((name, h["step"], h["step"]))
    return spans


def plot_losses(history: list[dict[str, Any]], path: Path, ylabel: str = "answer cross-entropy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    w = 25
    smooth = [
        sum(loss[max(0, i - w + 1) : i + 1]) / len(loss[max(0, i - w + 1) : i + 1]) for i in range(len(loss))
    ]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="loss")
    ax.plot(steps, smooth, lw=1.5, label=f"mean of {w}")
    spans = stage_spans(history)  # the x axis is the curriculum's step: say which stages the steps ran
    for _name, lo, _hi in spans[1:]:
        ax.axvline(lo - 0.5, color="grey", lw=0.5, ls="--")
    if spans:
        ax.set_title("stage " + ", ".join(f"{n} (steps {lo}-{hi})" for n, lo, hi in spans), fontsize=9)
    evals = [(h["step"], h["eval_exact_acc"]) for h in history if "eval_exact_acc" in h]
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals, strict=True), "o-", color="tab:green", ms=3, label="held-out exact")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("held-out exact-description accuracy")
        ax2.legend(loc="center right")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def run_checkpoint(run_dir: Path, stage: str | None) -> Path:
    """A run's checkpoint: the alignment stage keeps its own (`align.pt`), every LM stage `ckpt.pt`."""
    return run_dir / ("align.pt" if stage == "align" else "ckpt.pt")


def export(ckpt_path: Path, out: Path, dtype: torch.dtype | None = None) -> str:
    """Write the trained tensors of a checkpoint as one safetensors file; returns its SHA-256.

    An alignment checkpoint (OUT/align.pt) exports at curriculum step 0 (`--init` then starts the caption
    stage), with its own step count as `align_steps`."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    tower = TowerConfig.from_metadata(ck["tower"])
    extra = {"step": str(ck["step"]), "git_rev": ck.get("git_rev", "unknown"), "seed": str(ck.get("seed"))}
    if ck.get("kind") == "align":
        extra.update(step="0", align_steps=str(ck["step"]))
    elif "align_steps" in ck:
        extra["align_steps"] = str(ck["align_steps"])
    return save_trained(out, ck["trained"], tower, extra, dtype)


def trainable(model: Any, tower: bool = True) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the tower and projector (unless `tower` is False); returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for k, p in model.named_parameters() if tower and k.startswith(TRAINED_PREFIXES)]
    for p in params:
        p.requires_grad_(True)
    return params


def train_align(args: argparse.Namespace) -> None:
    """Stage 0: tower + projector regress onto the LM's embeddings of each image's description (no LM forward)."""
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tower = TowerConfig(lora_rank=0)
    loaded = build_untrained(tower, seed=args.seed)
    model, tok, proc = loaded.model, loaded.tokenizer, loaded.processor
    params = trainable(model)
    image_id = int(model.config.image_token_index)
    emb = model.get_input_embeddings().weight.detach()[:image_id].clone()  # SmolLM2's own rows
    classes = align.candidate_ids(tok)
    rest = torch.ones(image_id, dtype=torch.bool)
    rest[classes] = False
    others = rest.nonzero().squeeze(1)
    opt = torch.optim.AdamW(params, lr=args.align_lr, weight_decay=0.01)
    rng = random.Random(f"synthbench/{args.seed}/all/align")
    gen = torch.Generator().manual_seed(args.seed)
    step, history, wall = 0, [], 0.0
    ckpt = run_checkpoint(out, "align")
    if args.init is not None and not (args.resume and ckpt.exists()):
        load_trained(model, args.init)
        rng = random.Random(f"synthbench/{args.seed}/all/align/init")
        print(f"initialised from {args.init}; fresh optimizer and data stream")
    if args.resume and ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        set_trained(model, ck["trained"])
        opt.load_state_dict(ck["optimizer"])
        rng.setstate(ck["rng"])
        gen.set_state(ck["gen"])
        step, history, wall = ck["step"], ck["history"], ck["wall"]
        print(f"resumed at align step {step}")
    held_out = training_held_out()
    eval_scenes = align.held_out_scenes(args.seed, args.eval_images, held_out)
    total = args.align_steps
    t_start = time.time() - wall
    last_save = time.time()

    def evaluate() -> dict[str, Any]:
        model.eval()
        score = align.decode_score(model, proc, tok, eval_scenes, emb).as_dict()
        model.train()
        return score

    def checkpoint(score: dict[str, Any] | None) -> None:
        state = {
            "kind": "align",
            "trained": trained_state(model),
            "tower": tower.as_metadata(),
            "optimizer": opt.state_dict(),
            "rng": rng.getstate(),
            "gen": gen.get_state(),
            "step": step,
            "history": history,
            "wall": time.time() - t_start,
            "git_rev": git_rev(),
            "seed": args.seed,
        }
        save_atomic(state, ckpt)
        seen = sum(h["images"] for h in history)
        record = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "git_rev": git_rev(),
            "seed": args.seed,
            "threads": args.threads,
            "stage": "align",
            "batch": args.align_batch,
            "lr": args.align_lr,
            "tau": args.tau,
            "mse_weight": args.mse_weight,
            "negatives": args.negatives,
            "filler": align.FILLER,
            "steps": step,
            "images_seen": seen,
            "wall_seconds": round(time.time() - t_start, 1),
            "images_per_second": round(seen / max(1e-9, sum(h["seconds"] for h in history)), 1),
            "last_loss_mean50": sum(h["loss"] for h in history[-50:]) / max(1, len(history[-50:])),
            "held_out": score,
        }
        write_atomic(out / "align.json", json.dumps(record, indent=1))
        if history:
            plot_losses(history, out / "align_loss.png", ylabel="alignment loss (CE + MSE)")

    model.train()
    bar = tqdm(total=total, initial=step, dynamic_ncols=True)
    score = None
    while step < total:
        t0 = time.time()
        scenes = align.draw_scenes(rng, args.align_batch, held_out)
        targets = torch.tensor([align.description_ids(tok, s) for s in scenes])
        neg = others[torch.randperm(len(others), generator=gen)[: args.negatives]]
        lr = args.align_lr * min(1.0, (step + 1) / args.warmup)
        lr *= 0.55 + 0.45 * math.cos(math.pi * min(1.0, step / max(1, total)))  # cosine to 10 %
        for g in opt.param_groups:
            g["lr"] = lr
        tokens = align.image_tokens(model, align.pixel_values(proc, scenes))
        loss, stats = align.align_loss(
            tokens, targets, emb, torch.cat([classes, neg]), args.tau, args.mse_weight
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        h: dict[str, Any] = {
            "step": step,
            "loss": float(loss),
            **stats,
            "images": len(scenes),
            "seconds": time.time() - t0,
        }
        if step % args.eval_every == 0 or step == total:
            score = evaluate()
            h["eval_exact_acc"] = score["exact_acc"]
            h["eval_pos_acc"] = score["pos_acc"]
            tqdm.write(f"step {step}: held-out {json.dumps(score)}")
        history.append(h)
        bar.update(1)
        bar.set_postfix(
            loss=f"{float(loss):.3f}",
            mse=f"{stats['mse']:.3f}",
            acc=f"{stats['acc']:.2f}",
            img_s=f"{len(scenes) / h['seconds']:.0f}",
        )
        if time.time() - last_save > args.ckpt_minutes * 60 or step == total:
            checkpoint(score)
            last_save = time.time()
        if math.isnan(float(loss)):
            raise RuntimeError(f"loss is NaN at align step {step}")
    bar.close()
    checkpoint(score if score is not None else evaluate())


def read(args: argparse.Namespace) -> None:
    """Forward only: does the frozen LM read the image tokens? Few-shot copy, tower vs oracle vs no image."""
    from tqdm import tqdm

    from akvq.models.sources.synth_vlm import load_synth_vlm

    torch.set_num_threads(args.threads)
    if args.init is None:
        raise SystemExit("--read needs --init WEIGHTS")
    loaded = load_synth_vlm(args.init)
    model, tok, proc = loaded.model, loaded.tokenizer, loaded.processor
    scenes = align.held_out_scenes(args.seed, args.read, training_held_out())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for source in args.read_sources.split(","):
        with tqdm(total=len(scenes), desc=source, dynamic_ncols=True) as bar:
            r = align.read_check(model, proc, tok, scenes, source, progress=lambda _, b=bar: b.update(1))
        tqdm.write(json.dumps(r))
        results.append(r)
    record = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "git_rev": git_rev(),
        "weights": str(args.init),
        "seed": args.seed,
        "prompt": align.FEW_SHOT,
        "results": results,
    }
    write_atomic(out / "read.json", json.dumps(record, indent=1))


def train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tower = TowerConfig(lora_rank=args.lora_rank)
    loaded = build_untrained(tower, seed=args.seed)
    model = loaded.model.to(args.device)
    params = trainable(model, tower=not args.freeze_tower)
    targets = tuple(args.lora_targets.split(","))
    lora = (
        add_lora(model, tower.lora_rank, tower.lora_alpha, targets, args.lora_from) if tower.lora_rank else []
    )
    groups = [
        {"params": params, "lr": args.lr, "base_lr": args.lr},
        {"params": lora, "lr": args.lora_lr, "base_lr": args.lora_lr},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
    rng = random.Random(f"synthbench/{args.seed}/all/train")
    step, history, wall = 0, [], 0.0
    ckpt = run_checkpoint(out, args.stage)
    if args.init is not None and not (args.resume and ckpt.exists()):
        step = load_trained(model, args.init)
        rng = random.Random(f"synthbench/{args.seed}/all/train/from{step}")
        print(f"initialised from {args.init} (step {step}); fresh optimizer, data stream from{step}")
    if args.resume and ckpt.exists():
        ck = torch.load(ckpt, map_location=args.device, weights_only=False)
        set_trained(model, ck["trained"])
        opt.load_state_dict(ck["optimizer"])
        rng.setstate(ck["rng"])
        torch.set_rng_state(ck["torch_rng"].cpu())
        step, history, wall = ck["step"], ck["history"], ck["wall"]
        print(f"resumed at step {step}")
    if args.stage != "all" and not (args.resume and ckpt.exists()):
        step = stage_start(args.stage)
        print(f"starting the curriculum at stage {args.stage} (step {step})")
    held_out = training_held_out()
    model.train()
    route = run_route(args.stage, args.cells)
    total = last_step(args.stage, args.steps)
    first = stage_start(args.stage) if args.stage != "all" else 0
    last_save = time.time()
    t_start = time.time() - wall  # the run's training time over its sittings (its record's wall_seconds)
    t_sitting = time.time()  # --max-minutes is this sitting's: a resumed run gets its own minutes
    stopped = False
    bar = tqdm(total=total, initial=step, dynamic_ncols=True)

    def checkpoint() -> None:
        state = {
            "trained": trained_state(model),
            "tower": tower.as_metadata(),
            "optimizer": opt.state_dict(),
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "history": history,
            "wall": time.time() - t_start,
            "git_rev": git_rev(),
            "seed": args.seed,
        }
        save_atomic(state, ckpt)
        record = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "git_rev": git_rev(),
            "seed": args.seed,
            "threads": args.threads,
            "batch": args.batch,
            "device": args.device,
            "lr": args.lr,
            "lora_rank": tower.lora_rank,
            "lora_targets": list(targets),
            "lora_from_layer": args.lora_from,
            "freeze_tower": args.freeze_tower,
            "schedule": args.schedule,
            "steps": step,
            "stage": (route or stage_at(max(0, step - 1))).name,
            "stages": [s.__dict__ for s in STAGES],
            "tokens": list(route.tokens) if route is not None else None,
            "wall_seconds": round(time.time() - t_start, 1),
            "planned_steps": total,
            "stopped_by_max_minutes": stopped,
            "last_loss_mean50": sum(h["loss"] for h in history[-50:]) / max(1, len(history[-50:])),
            "last_exact_acc200": sum(h["acc"] for h in history[-200:]) / max(1, len(history[-200:])),
        }
        write_atomic(out / "run.json", json.dumps(record, indent=1))
        if history:
            plot_losses(history, out / "loss.png")

    while step < total:
        stage = route or stage_at(step)
        done = (step - first) / max(1, total - first)
        count = batch_count(rng, stage, done)
        budget = rng.choice(stage.tokens) if stage.tokens else None
        examples = [
            draw_example(loaded, rng, stage, held_out, count, t, budget)
            for t in batch_tasks(stage, args.batch)
        ]
        lr_scale = min(1.0, (step + 1) / args.warmup)
        if args.schedule == "cosine":  # over this run's steps, down to 10 %
            lr_scale *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done)))
        for (
            g
        ) in opt.param_groups:  # a frozen tower leaves only the LoRA group: set each group from its own base
            g["lr"] = g["base_lr"] * lr_scale
        opt.zero_grad(set_to_none=True)
        loss, right, tokens = accumulate(
            model,
            loaded,
            examples,
            args.micro_batch or len(examples),
            args.device,
            args.bf16,
            stage.frozen_prefix,
            stage.evidence,
        )
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        acc = sum(right) / len(right)
        history.append(
            {
                "step": step,
                "loss": float(loss),
                "acc": acc,
                "stage": stage.name,
                "tokens": tokens,
                "tasks": [ex.task for ex in examples],
                "images": [len(ex.scenes) for ex in examples],
                "text": [ex.text for ex in examples],
                "right": right,
            }
        )
        bar.update(1)
        bar.set_postfix(
            stage=stage.name,
            loss=f"{float(loss):.3f}",
            acc=f"{acc:.2f}",
            acc50=f"{sum(h['acc'] for h in history[-50:]) / len(history[-50:]):.2f}",
            tok=tokens // len(examples),
        )
        if time.time() - last_save > args.ckpt_minutes * 60 or step == total:
            checkpoint()
            last_save = time.time()
        if math.isnan(float(loss)):
            raise RuntimeError(f"loss is NaN at step {step}")
        if args.max_minutes and time.time() - t_sitting > args.max_minutes * 60 and step < total:
            stopped = True  # the schedule stays the planned run's: a rerun with --steps at this count differs
            bar.write(f"--max-minutes {args.max_minutes}: stopping at step {step} of {total}")
            break
    bar.close()
    checkpoint()


ALL_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass(frozen=True)
class Phase:
    """One run of this script in the recipe: its arguments, and the phase whose export it starts from."""

    name: str
    args: tuple[str, ...]
    init: str | None = None
    seed_offset: int = 0  # added to --seed: the hand-run route drew each later phase from its own stream


LORA = (
    "--freeze-tower",
    "--lora-rank",
    "16",
    "--lora-targets",
    ALL_TARGETS,
    "--schedule",
    "cosine",
    "--batch",
    "8",
)
# fmt: off
RECIPE: tuple[Phase, ...] = (
    Phase("align", ("--stage", "align", "--align-steps", "4300", "--align-lr", "6e-4", "--eval-every", "250")),
    Phase("tasks", ("--stage", "tasks", *LORA, "--lora-from", "4", "--lora-lr", "1e-3", "--warmup", "20"), "align"),
    Phase("needle", ("--stage", "needle", *LORA, "--steps", "480", "--micro-batch", "2", "--lora-from", "0",
                     "--lora-lr", "5e-4", "--warmup", "10"), "tasks"),
    Phase("balance", ("--stage", "balance", *LORA, "--steps", "360", "--micro-batch", "2", "--lora-from", "0",
                      "--lora-lr", "3e-4", "--warmup", "10", "--bf16"), "needle", seed_offset=5),
    Phase("lookup", ("--stage", "lookup", *LORA, "--steps", "200", "--micro-batch", "2", "--lora-from", "0",
                     "--lora-lr", "3e-4", "--warmup", "10", "--bf16"), "balance", seed_offset=7),
    Phase("pair", ("--stage", "pair", *LORA, "--steps", "200", "--micro-batch", "2", "--lora-from", "0",
                   "--lora-lr", "3e-4", "--warmup", "10", "--bf16"), "lookup", seed_offset=12),
    Phase("context", ("--stage", "context", *LORA, "--steps", "40", "--micro-batch", "2", "--lora-from", "0",
                      "--lora-lr", "2e-4", "--warmup", "5", "--bf16"), "pair", seed_offset=15),
    Phase("full", ("--stage", "full", "--cells", "4K,8K", *LORA, "--steps", "40", "--micro-batch", "1",
                   "--lora-from", "0", "--lora-lr", "2e-4", "--warmup", "5", "--bf16"), "context", seed_offset=17),
)
# fmt: on
"""The committed file's route as one command (results/vlm/HISTORY.md: "The second needle run", "A sixth
candidate", "A seventh candidate", "A ninth candidate", "A tenth candidate", "A thirteenth candidate"). The hand-run
route it replaces steered the alignment's learning rate by hand, trained the task stage in two runs under an older
prompt layout, and started `balance`, `pair` and `context` from the previous run's float16 file (here its float32
export); the committed file (full1) ran `full` from the first seven phases' float16 file, in four sittings."""
SMOKE = {
    "align": ("--align-steps", "2", "--align-batch", "4", "--eval-images", "4", "--eval-every", "1"),
    "lm": ("--steps", "1", "--batch", "2"),  # 2: `pair` asks its two tasks in every batch
    "cells": ("--cells", "1K"),  # `context`, `full`: the shortest cell (8K costs minutes a step on 2 cores)
}
"""`--recipe-smoke`: every phase one or two tiny steps (tests the chain, not the weights)."""


def phase_args(ph: Phase, device: str, bf16_ok: bool) -> tuple[str, ...]:
    """The phase's arguments, without `--bf16` on a CPU that would emulate it (the numbers then differ from the
    shipped route's by fp32 rounding; the phase's run.json records which ran)."""
    if device != "cpu" or bf16_ok:
        return ph.args
    return tuple(a for a in ph.args if a != "--bf16")


def phase_argv(ph: Phase, args: argparse.Namespace, bf16_ok: bool) -> list[str]:
    """The phase's command line after the script's path, as `run_recipe` runs it (`parse_args` accepts it)."""
    seed = args.seed + ph.seed_offset
    if seed in (EVAL_SEED, VAL_SEED):
        raise SystemExit(
            f"--seed {args.seed}: phase {ph.name} would draw from the evaluation or validation seed {seed}"
        )
    out, run_dir = Path(args.out), Path(args.out) / ph.name
    pa = phase_args(ph, args.device, bf16_ok)
    argv = ["--out", str(run_dir), "--seed", str(seed), "--threads", str(args.threads)]
    argv += ["--device", args.device, "--ckpt-minutes", str(args.ckpt_minutes), *pa]
    if ph.init is not None:
        argv += ["--init", str(out / f"{ph.init}.safetensors")]
    if run_checkpoint(run_dir, ph.name).exists():
        argv.append("--resume")
    if args.recipe_smoke:
        argv += SMOKE["align" if ph.name == "align" else "lm"]
        route = route_stage(pa[pa.index("--stage") + 1]) if "--stage" in pa else None
        if route is not None and route.tokens:  # a stage at the benchmark's lengths: its shortest cell
            argv += SMOKE["cells"]
    return argv


def recipe_record(out: Path, phases: tuple[Phase, ...], sha: str) -> dict[str, Any]:
    """The whole route in one record (OUT/recipe.json): each phase's own record (OUT/<phase>/run.json, align's
    align.json: command, git rev, seed, steps, wall time, last losses) and its export's SHA-256, the CPU it ran on
    and the final file's SHA-256, so a rerun of the recipe can be set beside the shipped file's route."""
    rows = []
    for ph in phases:
        run = out / ph.name / ("align.json" if ph.name == "align" else "run.json")
        rec = json.loads(run.read_text(encoding="utf-8")) if run.is_file() else {}
        export_file = out / f"{ph.name}.safetensors"
        rows.append(
            {
                "phase": ph.name,
                "init": ph.init,
                "export_sha256": sha256_of(export_file) if export_file.is_file() else None,
                **{
                    k: rec.get(k)
                    for k in ("command", "git_rev", "seed", "steps", "wall_seconds", "last_loss_mean50")
                },
            }
        )
    return {
        "final_sha256": sha,
        "wall_seconds": round(sum(r["wall_seconds"] or 0.0 for r in rows), 1),
        "cpu": cpu_model(),
        "native_bf16": native_bf16(),
        "phases": rows,
    }


def run_recipe(args: argparse.Namespace, phases: tuple[Phase, ...] = RECIPE) -> Path:
    """Run or finish every phase (`RECIPE`: the shipped route); returns OUT/synth-vlm.safetensors, the last phase
    in float16."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16_ok = native_bf16()
    if args.device == "cpu" and not bf16_ok:
        print(
            "recipe: no AMX-BF16/AVX512-BF16 on this CPU: phases run in fp32 (emulated bf16 is ~10x slower)"
        )
    for ph in phases:
        done = out / f"{ph.name}.safetensors"
        if done.exists():
            print(f"recipe: {ph.name} already exported ({done})", flush=True)
            continue
        argv = [sys.executable, str(Path(__file__).resolve()), *phase_argv(ph, args, bf16_ok)]
        print(f"recipe: {shlex.join(argv)}", flush=True)
        subprocess.run(argv, check=True)  # a fresh process per phase: its own threads, RNG and memory
        print(f"{done} sha256 {export(run_checkpoint(out / ph.name, ph.name), done)}", flush=True)
    final = out / "synth-vlm.safetensors"  # the shipped file: the last phase in float16 (~half the bytes)
    sha = export(run_checkpoint(out / phases[-1].name, phases[-1].name), final, torch.float16)
    record = recipe_record(out, phases, sha)
    write_atomic(out / "recipe.json", json.dumps(record, indent=1))
    print(
        f"recipe: {final} sha256 {sha} ({record['wall_seconds'] / 3600:.2f} h of training; {out / 'recipe.json'})"
    )
    print("recipe: copy it to assets/synth-vlm/ and its sha256 to configs/model/synth-vlm.yaml")
    return final


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything loads: a bad flag stops with one line (SystemExit)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run directory (ckpt.pt, run.json, loss.png)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (deterministic) or cuda (bf16 autocast, minutes)")
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast on CPU too (AMX); fp32 master weights and optimizer",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--micro-batch", type=int, default=0, help="backward this many items at a time (0 = the whole batch)"
    )
    ap.add_argument("--lr", type=float, default=5e-4, help="tower and projector")
    ap.add_argument("--lora-lr", type=float, default=2e-4)
    ap.add_argument("--lora-rank", type=int, default=8, help="0 = language model fully frozen")
    ap.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated projections")
    ap.add_argument("--lora-from", type=int, default=0, help="adapters only in decoder layers >= this")
    ap.add_argument("--freeze-tower", action="store_true", help="train only the LoRA adapters")
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument(
        "--steps",
        type=int,
        default=0,
        help="stop at this curriculum step (0 = all stages); with --stage NAME: this many steps from its start",
    )
    ap.add_argument(
        "--stage",
        default="all",
        choices=("all", "align", *(s.name for s in STAGES)),
        help="align = stage 0 (tower+projector onto the LM's embeddings); a curriculum stage = start there",
    )
    ap.add_argument(
        "--cells",
        default="",
        help=f"context/evidence/full: only these benchmark cells' lengths, comma-separated of {','.join(LEVELS)}",
    )
    ap.add_argument("--align-steps", type=int, default=3000)
    ap.add_argument("--align-batch", type=int, default=64)
    ap.add_argument("--align-lr", type=float, default=1e-3)
    ap.add_argument("--tau", type=float, default=1.0, help="align: logits are -squared distance / tau")
    ap.add_argument("--mse-weight", type=float, default=1.0, help="align: weight of the relative MSE term")
    ap.add_argument("--negatives", type=int, default=2048, help="align: random vocabulary negatives a step")
    ap.add_argument("--eval-images", type=int, default=500, help="align: held-out images for decode accuracy")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument(
        "--read", type=int, default=0, help="read check on N held-out images of --init, then exit"
    )
    ap.add_argument("--read-sources", default="tower,oracle,none")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop (checkpointed, recorded) once this sitting has trained this long (a job's time limit: a"
        " --resume gets its own minutes); 0 = run every step",
    )
    ap.add_argument(
        "--resume", action="store_true", help="continue OUT/ckpt.pt (optimizer and data stream too)"
    )
    ap.add_argument(
        "--init", type=Path, default=None, help="start from an exported weights file (and its step)"
    )
    ap.add_argument(
        "--export", type=Path, default=None, help="write OUT/ckpt.pt's trained tensors here and exit"
    )
    ap.add_argument("--export-dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--recipe", action="store_true", help="run every phase of RECIPE into OUT (one command)")
    ap.add_argument("--recipe-smoke", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seed in (EVAL_SEED, VAL_SEED):
        ap.error(
            f"--seed {args.seed} is the evaluation or validation seed ({EVAL_SEED}, {VAL_SEED}); pick another"
        )
    if args.init is not None and not args.init.is_file():  # before the language model loads
        ap.error(f"--init: {str(args.init)!r}: no such file")
    if (
        args.batch < 1
        or args.threads < 1
        or args.lora_rank < 0
        or args.micro_batch < 0
        or args.max_minutes < 0
    ):
        ap.error("--batch and --threads must be >= 1, --lora-rank, --micro-batch and --max-minutes >= 0")
    if args.device != "cpu" and not (args.device.split(":")[0] == "cuda" and torch.cuda.is_available()):
        ap.error(
            f"--device {args.device}: allowed: cpu, or cuda[:N] where torch sees a GPU (it sees {torch.cuda.device_count()})"
        )
    each = max((len(s.each) for s in STAGES if args.stage in ("all", s.name)), default=0)
    if args.batch < each:
        ap.error(f"--batch must be >= {each}: stage {args.stage!r} asks {each} tasks in every batch")
    try:
        run_route(args.stage, args.cells)
    except ValueError as e:
        ap.error(str(e))
    if args.bf16 and args.device == "cpu" and not native_bf16():
        print(
            "--bf16: no AMX-BF16/AVX512-BF16 on this CPU: bf16 autocast is emulated (~10x slower than fp32)"
        )
    return args


def main() -> None:
    args = parse_args()
    git_rev()  # cached now, as the code is loaded: an edit to the checkout during a long run is not the run's code
    if args.recipe:
        run_recipe(args)
        return
    if args.export is not None:
        ck = run_checkpoint(Path(args.out), args.stage)
        print(f"{args.export} sha256 {export(ck, args.export, getattr(torch, args.export_dtype))}")
        return
    if args.read:
        read(args)
    elif args.stage == "align":
        train_align(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
