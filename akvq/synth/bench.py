"""SynthBench: four multi-choice, multi-image tasks written as a MileBench root, plus single-image drills.

Each task folder carries an official MileBench name so `akvq.tasks.milebench` loads, truncates and scores it
unchanged:

| folder | category | question |
|---|---|---|
| SceneTransition | temporal | the background changes colour once; from which colour to which? (order matters) |
| Spot-the-Diff | semantic | all images show the same shape and colour but one; which image differs? |
| ImageNeedleInAHaystack | needle | which image shows the 4-digit number N? (the three wrong options differ from N in one digit) |
| ObjectExistence | attribute | what object is in image k? (options share the colour or the shape) |

Context length is set by the number of images: each task has cells `1K`, `2K`, `4K`, `8K` (the
`image_quantity_level` of a sample) whose image counts make about that many prompt tokens at
`TOKENS_PER_IMAGE`. Images are drawn from a per-task pool of scenes, so a root holds thousands of files rather
than hundreds of thousands. Random streams are derived from (seed, task, purpose), so a benchmark root and
the training stream never share draws, and one seed always gives the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from akvq.synth.draw import BLACK, COLOURS, SHAPES, SIZE, WHITE, Scene, Shape, render

EVAL_SEED = 2026
"""The standard evaluation seed (what `task=synthbench` generates when no root is given)."""
VAL_SEED = 4242
"""The validation root's seed: candidates are chosen on it and reported on `EVAL_SEED`, so a choice among files
does not tune to the evaluation set (results/vlm/HISTORY.md, "A second evaluation set")."""

TOKENS_PER_IMAGE = 16
"""What one image costs in synth-vlm's prompt (64 px / 16 px patches); sets the images per cell."""

LEVELS: dict[str, int] = {"1K": 1024, "2K": 2048, "4K": 4096, "8K": 7800}
"""Cell name -> target prompt tokens (8K stays under SmolLM2's 8192 positions with room for the answer)."""

SAMPLES_PER_CELL = 100
_QUESTION_TOKENS = 130  # instruction + question + choice list, measured with SmolLM2's tokenizer
_LABEL_TOKENS = 7  # "Image : " + " ()" + newline; the label's digits come twice on top (`images_for`)
_FRAME_TOKENS = 1  # the newline the prompt builder puts between adjacent images


@dataclass(frozen=True)
class Item:
    """One question: `context` holds `{image#i}` slots for `scenes` in order; `answer` is one of `choices`."""

    task: str
    context: str
    scenes: tuple[Scene, ...]
    choices: tuple[str, ...]
    answer: str
    level: str = ""
    evidence: tuple[int, ...] = ()
    """The images (1-based) a reader must look at to choose among the options: the frames either side of the
    change, the option images, the asked-about image. Not written to the root; training gives these images'
    tokens the gradient at long contexts (scripts/train_vlm.py, `Stage.evidence`)."""

    @property
    def target(self) -> str:
        """The answer as synth-vlm is trained to say it: the option's text (`12`, `a red circle`).

        Not the letter: SmolLM2-135M cannot bind option letters (4/20 zero-shot on one-image drills, and 1,000
        training items left all tasks at chance) but picks the right option text (18/20 by log-probability).
        MileBench's scorer matches an option's text, and image-number options are prefix-free, so the text alone
        is unambiguous."""
        return self.answer


def _light(rng: random.Random) -> tuple[int, int, int]:
    v = rng.randint(225, 250)
    return (v, v, v)


def _labelled(n: int) -> str:
    """Each image between its label and the label again: "Image 3: <image> (3)". The label after the image lets a
    question about an image's content ("which image shows 9598?") be answered by copying what follows the
    match, which the 135M LM does; with the label only before the image, 1,000 training items left such
    questions at chance while questions about a named image ("what is in Image 3?") reached 0.9."""
    return "".join(f"Image {i}: {{image#{i}}} ({i})\n" for i in range(1, n + 1))


def _label_choices(
    rng: random.Random, n: int, answer: int, others: list[int] | None = None
) -> tuple[list[str], str]:
    """Image-number options: the answer plus three other images (given, or random), in ascending order.

    Random ones are drawn prefix-free (`prefix_free`), so an answer given as the bare number is scored right."""
    pool = [i for i in range(1, n + 1) if i != answer]
    wrong = others if others is not None else rng.sample(pool, min(3, len(pool)))
    while others is None and not prefix_free([answer, *wrong]):
        wrong = rng.sample(pool, min(3, len(pool)))
    labels = sorted([answer, *wrong])
    return [str(i) for i in labels], str(answer)


def _options(choices: list[str]) -> tuple[int, ...]:
    """The images that image-number options name."""
    return tuple(int(c) for c in choices)


def prefix_free(labels: list[int]) -> bool:
    """No label's digits start another's (3 and 31): MileBench's scorer finds the first option text inside the
    prediction, so with options 3 and 31 the bare answer "31" would score as 3."""
    texts = [str(i) for i in labels]
    return not any(a != b and b.startswith(a) for a in texts for b in texts)


def _shuffled(rng: random.Random, right: str, wrong: list[str]) -> list[str]:
    options = [right, *wrong]
    rng.shuffle(options)
    return options


# --------------------------------------------------------------------------------------------------- pools


def _object_scene(rng: random.Random, kind: str, colour: str) -> Scene:
    r = rng.randint(9, 16)
    x, y = rng.randint(r + 2, SIZE - r - 3), rng.randint(r + 2, SIZE - r - 3)
    return Scene(_light(rng), (Shape(kind, COLOURS[colour], x, y, r),))


def _frame_scene(rng: random.Random, colour: str) -> Scene:
    shapes = []
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(4, 9)
        shapes.append(
            Shape(
                rng.choice(SHAPES),
                rng.choice((WHITE, BLACK)),
                rng.randint(r, SIZE - r),
                rng.randint(r, SIZE - r),
                r,
            )
        )
    return Scene(COLOURS[colour], tuple(shapes))


def _number_family(rng: random.Random) -> list[str]:
    """A 4-digit number and three near misses, each differing from it in one (different) digit."""
    base = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(3)]
    family = ["".join(map(str, base))]
    for pos in rng.sample(range(4), 3):
        d = list(base)
        d[pos] = rng.choice([v for v in range(1 if pos == 0 else 0, 10) if v != base[pos]])
        family.append("".join(map(str, d)))
    return family


def _number_scene(rng: random.Random, number: str) -> Scene:
    return Scene(
        _light(rng), text=number, text_colour=BLACK, text_xy=(rng.randint(3, 11), rng.randint(14, 30))
    )


def make_pool(task: str, rng: random.Random, size: int) -> Any:
    """The scenes a task draws from: `size` per key (colour, shape+colour) or `size` number families."""
    if task == "SceneTransition":
        return {c: [_frame_scene(rng, c) for _ in range(size)] for c in COLOURS}
    if task == "Spot-the-Diff":
        return {(k, c): [_object_scene(rng, k, c) for _ in range(size)] for k in SHAPES for c in COLOURS}
    if task in ("ImageNeedleInAHaystack", "ReadNumber", "NumberAt"):
        return [[_number_scene(rng, n) for n in _number_family(rng)] for _ in range(size)]
    if task in ("ObjectExistence", "NameObject"):
        return [_object_scene(rng, rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(size)]
    raise ValueError(f"unknown SynthBench task {task!r}; known: {', '.join(TASKS + DRILLS)}")


# --------------------------------------------------------------------------------------------------- items


def scene_transition(rng: random.Random, pool: Any, n: int) -> Item:
    a, b, c = rng.sample(list(COLOURS), 3)
    k = rng.randint(max(1, n // 4), max(1, (3 * n) // 4))
    k = min(k, n - 1)
    scenes = [rng.choice(pool[a]) for _ in range(k)] + [rng.choice(pool[b]) for _ in range(n - k)]
    right = f"From {a} to {b}."
    wrong = [f"From {b} to {a}.", f"From {a} to {c}.", f"From {c} to {b}."]
    context = "Frames: " + "".join(f"{{image#{i}}}" for i in range(1, n + 1))
    context += "\nQuestion: What is the scene transition in the video?"
    choices = tuple(_shuffled(rng, right, wrong))
    return Item("SceneTransition", context, tuple(scenes), choices, right, evidence=(k, k + 1))


def spot_the_diff(rng: random.Random, pool: Any, n: int) -> Item:
    kind = rng.choice(SHAPES)
    colour, odd = rng.sample(list(COLOURS), 2)
    pos = rng.randint(1, n)
    scenes = [rng.choice(pool[(kind, odd if i == pos else colour)]) for i in range(1, n + 1)]
    choices, answer = _label_choices(rng, n, pos)
    context = _labelled(n) + "Question: All images but one show the same colour. Which image is different?"
    return Item("Spot-the-Diff", context, tuple(scenes), tuple(choices), answer, evidence=_options(choices))


def image_needle(rng: random.Random, pool: Any, n: int) -> Item:
    f = rng.randrange(len(pool))
    family = pool[f]
    spots = rng.sample(range(1, n + 1), 4)
    while not prefix_free(spots):
        spots = rng.sample(range(1, n + 1), 4)
    member = 0  # the family's base: every wrong option is exactly one digit away from the asked number
    others = [g for g in range(len(pool)) if g != f]
    scenes: list[Scene] = [rng.choice(pool[rng.choice(others)]) for _ in range(n)]
    for m, spot in enumerate(spots):
        scenes[spot - 1] = family[m]
    choices, answer = _label_choices(rng, n, spots[member], [s for i, s in enumerate(spots) if i != member])
    number = family[member].text
    context = _labelled(n) + f"Question: Which image shows the number {number}?"
    return Item(
        "ImageNeedleInAHaystack", context, tuple(scenes), tuple(choices), answer, evidence=_options(choices)
    )


def _describe(scene: Scene) -> tuple[str, str]:
    s = scene.shapes[0]
    colour = next(name for name, rgb in COLOURS.items() if rgb == s.colour)
    return colour, s.kind


def _object_name(colour: str, kind: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {kind}"


def _object_options(rng: random.Random, colour: str, kind: str) -> tuple[list[str], str]:
    """The true object and three look-alikes: same colour other shape, same shape other colour, and one more."""
    other_c = rng.choice([c for c in COLOURS if c != colour])
    other_k = rng.choice([k for k in SHAPES if k != kind])
    wrong = {(colour, other_k), (other_c, kind)}
    while len(wrong) < 3:
        cand = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if cand != (colour, kind):
            wrong.add(cand)
    right = _object_name(colour, kind)
    return _shuffled(rng, right, [_object_name(c, k) for c, k in sorted(wrong)]), right


def object_existence(rng: random.Random, pool: Any, n: int) -> Item:
    scenes = [rng.choice(pool) for _ in range(n)]
    q = rng.randint(1, n)
    choices, right = _object_options(rng, *_describe(scenes[q - 1]))
    context = _labelled(n) + f"Question: What object is shown in Image {q}?"
    return Item("ObjectExistence", context, tuple(scenes), tuple(choices), right, evidence=(q,))


def read_number(rng: random.Random, pool: Any, n: int) -> Item:
    """Drill (training only): one image, which of four near-identical numbers does it show?"""
    family = rng.choice(pool)
    m = rng.randrange(4)
    choices = _shuffled(rng, str(family[m].text), [str(s.text) for i, s in enumerate(family) if i != m])
    return Item(
        "ReadNumber",
        "{image#1}\nQuestion: Which number is shown in the image?",
        (family[m],),
        tuple(choices),
        str(family[m].text),
    )


def number_at(rng: random.Random, pool: Any, n: int) -> Item:
    """Drill (training only): the needle reversed, "which number is shown in Image k?" among `n` numbers.

    The needle's misses are the language model's number-to-index lookup over many labelled images
    (scripts/needle_probe.py); this asks the same binding the other way round."""
    f = rng.randrange(len(pool))
    others = [g for g in range(len(pool)) if g != f]
    scenes: list[Scene] = [rng.choice(pool[rng.choice(others)]) for _ in range(n)]
    q, m = rng.randint(1, n), rng.randrange(4)
    scenes[q - 1] = pool[f][m]
    right = str(pool[f][m].text)
    choices = _shuffled(rng, right, [str(s.text) for i, s in enumerate(pool[f]) if i != m])
    context = _labelled(n) + f"Question: Which number is shown in Image {q}?"
    return Item("NumberAt", context, tuple(scenes), tuple(choices), right)


def name_object(rng: random.Random, pool: Any, n: int) -> Item:
    """Drill (training only): one image, what object is it?"""
    scene = rng.choice(pool)
    choices, right = _object_options(rng, *_describe(scene))
    return Item(
        "NameObject",
        "{image#1}\nQuestion: What object is shown in the image?",
        (scene,),
        tuple(choices),
        right,
    )


def caption(scene: Scene) -> str:
    """What one image shows, in words (training's alignment stage): the number, the object, or the scene colour."""
    if scene.text is not None:
        return scene.text
    if len(scene.shapes) == 1 and scene.shapes[0].colour in COLOURS.values():
        return _object_name(*_describe(scene))
    colour = next((name for name, rgb in COLOURS.items() if rgb == scene.background), None)
    if colour is None:
        raise ValueError(f"no caption for {scene}")
    return _object_name(colour, "scene")


def caption_scene(rng: random.Random, weights: tuple[float, float, float] | None = None) -> Scene:
    """A random image of any kind the benchmark uses (number, object, video frame), for captioning.

    `weights` (number, object, frame) skews the kinds; None draws them uniformly (the caption stage's stream)."""
    kind = rng.randrange(3) if weights is None else rng.choices(range(3), weights=weights)[0]
    if kind == 0:
        return _number_scene(rng, rng.choice(_number_family(rng)))
    if kind == 1:
        return _object_scene(rng, rng.choice(SHAPES), rng.choice(list(COLOURS)))
    return _frame_scene(rng, rng.choice(list(COLOURS)))


Generator = Callable[[random.Random, Any, int], Item]
GENERATORS: dict[str, Generator] = {
    "SceneTransition": scene_transition,
    "Spot-the-Diff": spot_the_diff,
    "ImageNeedleInAHaystack": image_needle,
    "ObjectExistence": object_existence,
    "ReadNumber": read_number,
    "NameObject": name_object,
    "NumberAt": number_at,
}
TASKS: tuple[str, ...] = ("SceneTransition", "Spot-the-Diff", "ImageNeedleInAHaystack", "ObjectExistence")
"""The benchmark's tasks (MileBench folder names), in report order."""
DRILLS: tuple[str, ...] = ("ReadNumber", "NameObject", "NumberAt")
"""Training-only tasks: single-image reading and naming, and the needle reversed (`number_at`)."""
MIN_IMAGES = {"SceneTransition": 2, "Spot-the-Diff": 4, "ImageNeedleInAHaystack": 4, "ObjectExistence": 1,
              "ReadNumber": 1, "NameObject": 1, "NumberAt": 4}  # fmt: skip

INSTRUCTIONS: dict[str, str] = {
    "SceneTransition": "Watch the frames of a video in order and answer the question about how the scene changes.",
    "Spot-the-Diff": "Look at the numbered images and find the one that does not match the others.",
    "ImageNeedleInAHaystack": "Look at the numbered images and find the one that shows the given number.",
    "ObjectExistence": "Look at the numbered images and answer the question about one of them.",
    "ReadNumber": "Read the number in the image.",
    "NameObject": "Name the object in the image.",
    "NumberAt": "Look at the numbered images and answer the question about one of them.",
}


def rng_for(seed: int, task: str, purpose: str) -> random.Random:
    """An independent stream per (seed, task, purpose): `bench` and `train` never share draws."""
    return random.Random(f"synthbench/{seed}/{task}/{purpose}")


def images_for(task: str, tokens: int, tokens_per_image: int = TOKENS_PER_IMAGE) -> int:
    """How many images make a prompt of about `tokens` tokens for `task`."""
    if task == "SceneTransition":
        return max(MIN_IMAGES[task], (tokens - _QUESTION_TOKENS) // (tokens_per_image + _FRAME_TOKENS))
    used, n = _QUESTION_TOKENS, 0
    while True:  # a label costs 7 tokens plus its digits twice ("Image 12: <image> (12)\n")
        cost = tokens_per_image + _LABEL_TOKENS + 2 * len(str(n + 1))
        if used + cost > tokens:
            return max(MIN_IMAGES[task], n)
        used, n = used + cost, n + 1


def generate(task: str, rng: random.Random, pool: Any, n: int, level: str = "") -> Item:
    if task not in GENERATORS:
        raise ValueError(f"unknown SynthBench task {task!r}; known: {', '.join(GENERATORS)}")
    if n < MIN_IMAGES[task]:
        raise ValueError(f"{task} needs at least {MIN_IMAGES[task]} images, got {n}")
    item = GENERATORS[task](rng, pool, n)
    return replace(item, level=level)


# --------------------------------------------------------------------------------------------------- writing

POOL_SIZES = {
    "SceneTransition": 40,
    "Spot-the-Diff": 12,
    "ImageNeedleInAHaystack": 160,
    "ObjectExistence": 600,
}
"""Scenes per pool key (number families for the needle): enough that an 8K prompt rarely repeats an image."""


def bench_items(
    task: str, seed: int, samples: int = SAMPLES_PER_CELL, levels: dict[str, int] | None = None
) -> list[Item]:
    """A task's evaluation items, `samples` per cell, cells interleaved (1K, 2K, 4K, 8K, 1K, ...).

    Interleaving makes MileBench's "first `limit` samples" take `limit / cells` from every cell.
    """
    rng = rng_for(seed, task, "bench")
    pool = make_pool(task, rng, POOL_SIZES[task])
    cells = [(level, images_for(task, tokens)) for level, tokens in (levels or LEVELS).items()]
    return [generate(task, rng, pool, n, level) for _ in range(samples) for level, n in cells]


def bench_scenes(
    seed: int = EVAL_SEED,
    samples: int = SAMPLES_PER_CELL,
    levels: dict[str, int] | None = None,
    tasks: tuple[str, ...] = TASKS,
) -> frozenset[Scene]:
    """Every image of a benchmark root (without rendering): training rejects items that draw one of these."""
    return frozenset(s for t in tasks for item in bench_items(t, seed, samples, levels) for s in item.scenes)


def training_held_out() -> frozenset[Scene]:
    """Every image training must never draw: the standard evaluation root's and the validation root's."""
    return bench_scenes(EVAL_SEED) | bench_scenes(VAL_SEED)


def write_task(root: Path, task: str, items: list[Item]) -> int:
    """`<root>/<task>/<task>.json` + `images/` in MileBench's schema; returns the number of image files."""
    folder = root / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    files: dict[Scene, str] = {}
    data = []
    for sid, item in enumerate(items, start=1):
        paths = []
        for scene in item.scenes:
            if scene not in files:
                files[scene] = f"{len(files):05d}.png"
                render(scene).save(folder / "images" / files[scene], optimize=False)
            paths.append(files[scene])
        data.append(
            {
                "sample_id": sid,
                "task_instruction_id": 0,
                "task_instance": {
                    "context": item.context,
                    "images_path": paths,
                    "choice_list": list(item.choices),
                },
                "response": item.answer,
                "image_quantity_level": item.level,
            }
        )
    meta = {
        "dataset": task,
        "split": "test",
        "num_sample": len(data),
        "task_instruction": [INSTRUCTIONS[task]],
        "question_type": "multi-choice",
        "generator": "akvq.synth.bench",
    }
    with open(folder / f"{task}.json", "w", encoding="utf-8") as f:
        json.dump({"meta_data": meta, "data": data}, f, indent=1)
    return len(files)


def write_root(
    root: Path,
    seed: int,
    samples: int = SAMPLES_PER_CELL,
    tasks: tuple[str, ...] = TASKS,
    levels: dict[str, int] | None = None,
) -> dict[str, int]:
    """A whole SynthBench root; returns image files written per task. A `SYNTHBENCH` stamp records the seed."""
    root.mkdir(parents=True, exist_ok=True)
    counts = {t: write_task(root, t, bench_items(t, seed, samples, levels)) for t in tasks}
    stamp = {"seed": seed, "samples_per_cell": samples, "levels": levels or LEVELS, "tasks": list(tasks)}
    (root / "SYNTHBENCH.json").write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    return counts
