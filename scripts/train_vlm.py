"""Train synth-vlm's vision tower, projector and LoRA adapters on procedurally generated SynthBench items.

    nice -n 19 python scripts/train_vlm.py --out runs/synth-vlm [--seed 0] [--threads 2] [--resume]
    python scripts/train_vlm.py --out runs/synth-vlm --export assets/synth-vlm/synth-vlm.safetensors

SmolLM2-135M-Instruct stays frozen (LoRA on q/v when `--lora-rank` > 0); the loss is on the answer tokens
only (`B. 12<|im_end|>`). Prompts are built by the MileBench prompt code exactly as evaluation builds them,
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from akvq.models.sources.synth_vlm import (  # noqa: E402
    IMAGE_TOKEN,
    TOKENS_PER_IMAGE,
    TRAINED_PREFIXES,
    TowerConfig,
    add_lora,
    build_untrained,
    save_trained,
    trained_state,
)
from akvq.paths import atomic_open  # noqa: E402
from akvq.records import git_rev  # noqa: E402
from akvq.synth.bench import (  # noqa: E402
    EVAL_SEED,
    INSTRUCTIONS,
    MIN_IMAGES,
    TASKS,
    Item,
    bench_scenes,
    caption,
    caption_scene,
    generate,
    make_pool,
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


STAGES: tuple[Stage, ...] = (
    Stage("caption", 1500, "caption"),
    Stage("drills", 500, "qa", ("ReadNumber", "NameObject", "ObjectExistence"), 2),
    Stage("few", 1000, "qa", ("ReadNumber", "NameObject", *TASKS), 6),
    Stage("more", 1500, "qa", TASKS, 12),
    Stage("many", 1500, "qa", TASKS, 24),
)
"""The curriculum: captions, single-image questions on short sequences, then more images per prompt."""


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt text with `<image>` placeholders, its scenes, and the supervised answer."""

    prompt: str
    scenes: tuple[Scene, ...]
    target: str
    task: str


def stage_at(step: int) -> Stage:
    done = 0
    for s in STAGES:
        done += s.steps
        if step < done:
            return s
    return STAGES[-1]


def draw_item(rng: random.Random, stage: Stage) -> Item:
    """One question: a task of the stage with a random image count in [task minimum, stage maximum]."""
    task = rng.choice(stage.tasks)
    n = rng.randint(MIN_IMAGES[task], max(MIN_IMAGES[task], stage.max_images))
    size = {"SceneTransition": 3, "Spot-the-Diff": 2}.get(task, max(4, n // 3 + 2))
    return generate(task, rng, make_pool(task, rng, size), n)


def draw_example(loaded: Any, rng: random.Random, stage: Stage, held_out: frozenset[Scene]) -> Example:
    """A caption or question whose images are none of the evaluation root's (`held_out`); redrawn otherwise."""
    while True:
        if stage.kind == "caption":
            scene = caption_scene(rng)
            ex = Example(IMAGE_TOKEN + "\n", (scene,), caption(scene) + END, "caption")
        else:
            item = draw_item(rng, stage)
            prompt, target = item_text(loaded, item)
            ex = Example(prompt, item.scenes, target, item.task)
        if held_out.isdisjoint(ex.scenes):
            return ex


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
    images = [render(s) for ex in examples for s in ex.scenes]
    tok.padding_side = "left"
    enc = loaded.processor(text=texts, images=images, padding=True, return_tensors="pt")
    for i, (ex, k) in enumerate(zip(examples, lens, strict=True)):
        tail = tok.decode(enc["input_ids"][i, -k:])
        if tail != ex.target:  # the answer must tokenize the same inside the prompt as alone
            raise RuntimeError(f"target {ex.target!r} tokenizes differently in context: {tail!r}")
    return dict(enc), lens


def batch_loss(model: Any, enc: dict[str, torch.Tensor], lens: list[int]) -> tuple[torch.Tensor, list[bool]]:
    """Mean cross-entropy over answer tokens, and whether each answer was the argmax at every token."""
    keep = max(lens) + 1
    out = model(**enc, logits_to_keep=keep)
    logits = out.logits[:, :-1]  # position t predicts token t+1
    ids = enc["input_ids"][:, -keep + 1 :]
    losses, right = [], []
    for i, k in enumerate(lens):
        lg, tg = logits[i, -k:], ids[i, -k:]
        losses.append(torch.nn.functional.cross_entropy(lg, tg, reduction="sum"))
        right.append(bool((lg.argmax(-1) == tg).all()))
    return torch.stack(losses).sum() / sum(lens), right


def set_trained(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy tower, projector and LoRA factors (as `trained_state` names them) into a model with adapters."""
    named = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    with torch.no_grad():
        for k, v in state.items():
            name = k[len("lora.") :] if k.startswith("lora.") else k
            if name not in named:
                raise KeyError(f"{k} does not fit this model (is --lora-rank the same as the file's?)")
            named[name].copy_(v)


def load_trained(model: Any, path: Path) -> int:
    """Initialise from an exported weights file; returns the step it was exported at."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        set_trained(model, {k: f.get_tensor(k) for k in f.keys()})
        return int((f.metadata() or {}).get("step", 0))


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
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
    edge = 0
    for s in STAGES:
        edge += s.steps
        if edge <= (steps[-1] if steps else 0):
            ax.axvline(edge, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("answer cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def export(ckpt_path: Path, out: Path) -> str:
    """Write the trained tensors of a checkpoint as one safetensors file; returns its SHA-256."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    tower = TowerConfig.from_metadata(ck["tower"])
    extra = {"step": str(ck["step"]), "git_rev": ck.get("git_rev", "unknown"), "seed": str(ck.get("seed"))}
    return save_trained(out, ck["trained"], tower, extra)


def train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tower = TowerConfig(lora_rank=args.lora_rank)
    loaded = build_untrained(tower, seed=args.seed)
    model = loaded.model.to(args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for k, p in model.named_parameters() if k.startswith(TRAINED_PREFIXES)]
    for p in params:
        p.requires_grad_(True)
    lora = add_lora(model, tower.lora_rank, tower.lora_alpha) if tower.lora_rank > 0 else []
    groups = [{"params": params, "lr": args.lr}, {"params": lora, "lr": args.lora_lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
    rng = random.Random(f"synthbench/{args.seed}/all/train")
    step, history, wall = 0, [], 0.0
    ckpt = out / "ckpt.pt"
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
    held_out = bench_scenes(EVAL_SEED)
    model.train()
    total = args.steps or sum(s.steps for s in STAGES)
    last_save = time.time()
    t_start = time.time() - wall
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
            "steps": step,
            "stage": stage_at(max(0, step - 1)).name,
            "stages": [s.__dict__ for s in STAGES],
            "wall_seconds": round(time.time() - t_start, 1),
            "last_loss_mean50": sum(h["loss"] for h in history[-50:]) / max(1, len(history[-50:])),
            "last_exact_acc200": sum(h["acc"] for h in history[-200:]) / max(1, len(history[-200:])),
        }
        (out / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        if history:
            plot_losses(history, out / "loss.png")

    while step < total:
        stage = stage_at(step)
        examples = [draw_example(loaded, rng, stage, held_out) for _ in range(args.batch)]
        enc, lens = make_batch(loaded, examples)
        enc = {k: v.to(args.device) for k, v in enc.items()}
        lr_scale = min(1.0, (step + 1) / args.warmup)
        for g, base in zip(opt.param_groups, (args.lr, args.lora_lr), strict=False):
            g["lr"] = base * lr_scale
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.device != "cpu"):
            loss, right = batch_loss(model, enc, lens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
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
                "tokens": int(enc["input_ids"].numel()),
                "tasks": [ex.task for ex in examples],
                "right": right,
            }
        )
        bar.update(1)
        bar.set_postfix(
            stage=stage.name, loss=f"{float(loss):.3f}", acc=f"{acc:.2f}", tok=enc["input_ids"].shape[1]
        )
        if time.time() - last_save > args.ckpt_minutes * 60 or step == total:
            checkpoint()
            last_save = time.time()
        if math.isnan(float(loss)):
            raise RuntimeError(f"loss is NaN at step {step}")
    bar.close()
    checkpoint()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run directory (ckpt.pt, run.json, loss.png)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (deterministic) or cuda (bf16 autocast, minutes)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4, help="tower and projector")
    ap.add_argument("--lora-lr", type=float, default=2e-4)
    ap.add_argument("--lora-rank", type=int, default=8, help="0 = language model fully frozen")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0 = all stages)")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument(
        "--resume", action="store_true", help="continue OUT/ckpt.pt (optimizer and data stream too)"
    )
    ap.add_argument(
        "--init", type=Path, default=None, help="start from an exported weights file (and its step)"
    )
    ap.add_argument(
        "--export", type=Path, default=None, help="write OUT/ckpt.pt's trained tensors here and exit"
    )
    args = ap.parse_args()
    if args.seed == EVAL_SEED:
        ap.error(f"--seed {EVAL_SEED} is the evaluation seed; pick another")
    if args.batch < 1 or args.threads < 1 or args.lora_rank < 0:
        ap.error("--batch and --threads must be >= 1, --lora-rank >= 0")
    if args.export is not None:
        print(f"{args.export} sha256 {export(Path(args.out) / 'ckpt.pt', args.export)}")
        return
    train(args)


if __name__ == "__main__":
    main()
