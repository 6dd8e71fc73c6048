"""Stage 0 of synth-vlm's training: align the vision tokens with the language model's own word embeddings.

The tower and projector are trained so that the 16 tokens of an image *are* the input embeddings of a short
description of it, token by token: `caption(scene)` ("9451", "a red circle", "a blue scene") tokenized by
SmolLM2 (one token per digit), right-aligned and padded on the left with the single-space token `FILLER`
(id 216). So the frozen LM reads image `9451` as the text "            9451". Nothing runs the 135M
transformer in this stage (only its embedding matrix is used), so it is hundreds of times cheaper than the
LM-loss stages.

Why right-aligned spaces: with the exact target embeddings in place of the image (the "oracle"), the frozen
SmolLM2-135M-Instruct copied the description in a 3-shot prompt for 60/60 images with right-aligned spaces,
newlines or `<|endoftext|>` as filler, 55/60 with left-aligned spaces (see results/vlm/README.md).

Loss per image token: cross-entropy over a candidate vocabulary of the logits `-||x - e_v||^2 / tau` (every
token any description uses, plus random negatives from the whole vocabulary each step). SmolLM2's ten digit
embeddings lie close together (squared distances 1.0-3.3 vs ~12 between random tokens), so at tau = 1 their
logits differ little; tau = 0.1 was tried and learned slower on everything (held-out per-position accuracy
0.64 vs 0.91 after 250 steps), so tau stays 1. Plus `mse_weight` x
`||x - e_target||^2 / mean ||e||^2`, which pins the token to the embedding itself (its norm included), so the
LM sees that word. Decoding for the metrics is the nearest embedding (L2) over the whole vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from akvq.synth.bench import EVAL_SEED, caption, caption_scene
from akvq.synth.draw import COLOURS, SHAPES, Scene, render

FILLER = " "
"""The pad token of a description (SmolLM2 id 216), put before the description's tokens."""

SLOTS = 16
"""Tokens per image (synth-vlm: 64 px / 16 px patches)."""

FEW_SHOT = (
    "Text: 4821\nCopy: 4821\n\nText: a green square\nCopy: a green square\n\n"
    "Text: an orange scene\nCopy: an orange scene\n\nText: <image>\nCopy:"
)
"""The read check's prompt: three text examples of copying, then the image in place of the text."""


def filler_id(tok: Any) -> int:
    ids = tok.encode(FILLER, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"filler {FILLER!r} is {len(ids)} tokens for this tokenizer, not 1")
    return int(ids[0])


def description_ids(tok: Any, scene: Scene, slots: int = SLOTS) -> list[int]:
    """The `slots` token ids an image should become: its caption, right-aligned after `FILLER` tokens."""
    ids = tok.encode(caption(scene), add_special_tokens=False)
    if len(ids) > slots:
        raise ValueError(f"caption {caption(scene)!r} is {len(ids)} tokens, more than {slots}")
    return [filler_id(tok)] * (slots - len(ids)) + list(ids)


def all_captions() -> list[str]:
    """Every word a caption can use (digits, a/an, colours, shapes, scene), as sample captions."""
    words = ["0123456789"]
    words += [f"a {c} {k}" for c in COLOURS for k in (*SHAPES, "scene")]
    words += [f"an {c} {k}" for c in COLOURS for k in (*SHAPES, "scene")]
    return words


def candidate_ids(tok: Any) -> torch.Tensor:
    """Every token id a description can hold (the filler included): the classes the loss always scores."""
    ids = {filler_id(tok)}
    for text in all_captions():
        ids.update(tok.encode(text, add_special_tokens=False))
    return torch.tensor(sorted(ids))


def pixel_values(processor: Any, scenes: Sequence[Scene]) -> torch.Tensor:
    """The images as the model's processor prepares them (B, 3, 64, 64)."""
    out = processor.image_processor([render(s) for s in scenes], return_tensors="pt")["pixel_values"]
    return out if isinstance(out, torch.Tensor) else torch.as_tensor(out)


def image_tokens(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The projected image tokens (B, 16, d): what `get_image_features` returns, without the list and
    hidden-state bookkeeping (last encoder layer, CLS dropped, then the projector)."""
    hidden = model.model.vision_tower(pixels).last_hidden_state[:, 1:]
    return model.model.multi_modal_projector(hidden)


def align_loss(
    tokens: torch.Tensor,
    targets: torch.Tensor,
    emb: torch.Tensor,
    classes: torch.Tensor,
    tau: float = 1.0,
    mse_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over `classes` (which must hold every target) of `-||x - e||^2 / tau`, plus the relative MSE.

    `tokens` (B, S, d), `targets` (B, S) token ids, `emb` (V, d) the frozen input embeddings.
    """
    x = tokens.reshape(-1, tokens.shape[-1]).float()
    t = targets.reshape(-1)
    e = emb[classes].float()
    logits = -(x.pow(2).sum(-1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(-1)) / tau
    lookup = torch.full((int(emb.shape[0]),), -1, dtype=torch.long)
    lookup[classes] = torch.arange(len(classes))
    cls = lookup[t]
    if bool((cls < 0).any()):
        raise ValueError("a target id is not among the loss's classes")
    ce = torch.nn.functional.cross_entropy(logits, cls)
    scale = emb.float().pow(2).sum(-1).mean()
    mse = (x - emb[t].float()).pow(2).sum(-1).mean() / scale
    loss = ce + mse_weight * mse
    right = logits.argmax(-1) == cls
    exact = right.view(targets.shape).all(-1).float().mean()
    return loss, {
        "ce": float(ce.detach()),
        "mse": float(mse.detach()),
        "pos_acc": float(right.float().mean()),
        "acc": float(exact),
    }


def nearest_ids(tokens: torch.Tensor, emb: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The id of the nearest (L2) row of `emb` for every token (B, S, d) -> (B, S)."""
    x = tokens.reshape(-1, tokens.shape[-1]).float()
    e = emb.float()
    en = e.pow(2).sum(-1)
    best = torch.full((x.shape[0],), float("inf"))
    arg = torch.zeros(x.shape[0], dtype=torch.long)
    for lo in range(0, e.shape[0], chunk):
        d = en[lo : lo + chunk] - 2 * x @ e[lo : lo + chunk].t()
        v, i = d.min(-1)
        better = v < best
        best = torch.where(better, v, best)
        arg = torch.where(better, i + lo, arg)
    return arg.view(tokens.shape[:-1])


def scene_kind(scene: Scene) -> str:
    """ "number", "object" or "frame" (a SceneTransition frame), as `caption` tells them apart."""
    if scene.text is not None:
        return "number"
    return "frame" if caption(scene).endswith(" scene") else "object"


@dataclass(frozen=True)
class DecodeScore:
    """Nearest-embedding decoding of held-out images: per position, whole description, per image kind."""

    images: int
    pos_acc: float
    exact: int
    by_kind: dict[str, tuple[int, int]]  # kind -> (exact, images)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "pos_acc": round(self.pos_acc, 4),
            "exact": self.exact,
            "exact_acc": round(self.exact / max(1, self.images), 4),
            "by_kind": {k: {"exact": a, "images": n} for k, (a, n) in self.by_kind.items()},
        }


@torch.no_grad()
def decode_score(
    model: Any, processor: Any, tok: Any, scenes: Sequence[Scene], emb: torch.Tensor, batch: int = 64
) -> DecodeScore:
    """How many images' tokens decode (nearest embedding over the whole vocabulary) to their description."""
    pos, n_pos, exact = 0, 0, 0
    kinds: dict[str, list[int]] = {}
    for lo in range(0, len(scenes), batch):
        part = scenes[lo : lo + batch]
        got = nearest_ids(image_tokens(model, pixel_values(processor, part)), emb)
        want = torch.tensor([description_ids(tok, s) for s in part])
        hit = got == want
        pos += int(hit.sum())
        n_pos += hit.numel()
        for s, row in zip(part, hit.all(-1).tolist(), strict=True):
            k = kinds.setdefault(scene_kind(s), [0, 0])
            k[0] += int(row)
            k[1] += 1
            exact += int(row)
    return DecodeScore(
        len(scenes), pos / max(1, n_pos), exact, {k: (a, n) for k, (a, n) in sorted(kinds.items())}
    )


def held_out_scenes(seed: int, n: int, held_out: Iterable[Scene] = ()) -> list[Scene]:
    """`n` fresh caption images from the align-eval stream of `seed` (never the train stream), none of `held_out`."""
    if seed == EVAL_SEED:
        raise ValueError(f"seed {EVAL_SEED} is the evaluation seed")
    skip = frozenset(held_out)
    rng = random.Random(f"synthbench/{seed}/all/align-eval")
    out: list[Scene] = []
    while len(out) < n:
        s = caption_scene(rng)
        if s not in skip:
            out.append(s)
    return out


KIND_WEIGHTS = (2.0, 1.0, 1.0)
"""Training mix of numbers, objects and frames: numbers (4 digits to read) are the slowest to learn."""


def draw_scenes(
    rng: random.Random, n: int, held_out: frozenset[Scene], weights: tuple[float, float, float] = KIND_WEIGHTS
) -> list[Scene]:
    """`n` training images (any kind the benchmark uses), redrawn when one is an evaluation image."""
    out: list[Scene] = []
    while len(out) < n:
        s = caption_scene(rng, weights)
        if s not in held_out:
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------------- LM read


@torch.no_grad()
def greedy(model: Any, embeds: torch.Tensor, max_new: int, stop: set[int]) -> list[int]:
    """Greedy continuation of one sequence of input embeddings (1, T, d) with the LLaVA's language model."""
    out = model.model.language_model(inputs_embeds=embeds, use_cache=True)
    past = out.past_key_values
    nxt = int(model.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
    ids: list[int] = []
    while len(ids) < max_new and nxt not in stop:
        ids.append(nxt)
        e = model.get_input_embeddings()(torch.tensor([[nxt]]))
        out = model.model.language_model(inputs_embeds=e, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = int(model.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
    return ids


def prompt_embeds(model: Any, tok: Any, template: str, image: torch.Tensor) -> torch.Tensor:
    """`template` with its one `<image>` replaced by the 16 image tokens `image` (16, d) -> (1, T, d)."""
    pre, post = template.split("<image>")
    emb = model.get_input_embeddings()
    a = emb(torch.tensor([tok.encode(pre, add_special_tokens=False)]))
    b = emb(torch.tensor([tok.encode(post, add_special_tokens=False)])) if post else a[:, :0]
    return torch.cat([a, image[None].to(a.dtype), b], dim=1)


@torch.no_grad()
def read_check(
    model: Any,
    processor: Any,
    tok: Any,
    scenes: Sequence[Scene],
    source: str = "tower",
    template: str = FEW_SHOT,
    stop_text: str = "\n",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Does the LM read the image? Greedy answer after `template` must equal the caption (after strip);
    teacher-forced: ` caption` must be the argmax at every token. `source` "tower" feeds the image tokens,
    "oracle" the exact embeddings of the description (the ceiling), "none" the filler only (the floor)."""
    emb = model.get_input_embeddings().weight
    stop = {int(i) for i in tok.encode(stop_text, add_special_tokens=False)} | {
        int(tok.convert_tokens_to_ids("<|im_end|>")),
        int(tok.eos_token_id),
    }
    greedy_ok, forced_ok, examples = 0, 0, []
    kinds: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        cap = caption(s)
        if source == "tower":
            image = image_tokens(model, pixel_values(processor, [s]))[0]
        elif source == "oracle":
            image = emb[torch.tensor(description_ids(tok, s))]
        else:
            image = emb[torch.full((SLOTS,), filler_id(tok))]
        x = prompt_embeds(model, tok, template, image)
        got = tok.decode(greedy(model, x, 8, stop)).strip()
        ok_g = got == cap
        ok_f = False
        space = [filler_id(tok)]
        # the answer as " a blue scene", " " + "a blue scene" or " " + " a blue scene" (greedy output is
        # compared after strip(); after the image's run of spaces the LM often writes a bare " " first)
        for ans in (
            tok.encode(f" {cap}", add_special_tokens=False),
            space + tok.encode(cap, add_special_tokens=False),
            space + tok.encode(f" {cap}", add_special_tokens=False),
        ):
            full = torch.cat([x, emb[torch.tensor(ans)][None]], dim=1)
            logits = model.lm_head(model.model.language_model(inputs_embeds=full).last_hidden_state)
            pred = logits[0, x.shape[1] - 1 : -1].argmax(-1)
            ok_f = ok_f or bool((pred == torch.tensor(ans)).all())
        greedy_ok += ok_g
        forced_ok += ok_f
        k = kinds.setdefault(scene_kind(s), [0, 0, 0])
        k[0] += ok_g
        k[1] += ok_f
        k[2] += 1
        if len(examples) < 6:
            examples.append({"caption": cap, "greedy": got})
        if progress is not None:
            progress(i + 1)
    return {
        "source": source,
        "images": len(scenes),
        "greedy_exact": greedy_ok,
        "forced_exact": forced_ok,
        "by_kind": {k: {"greedy": g, "forced": f, "images": n} for k, (g, f, n) in sorted(kinds.items())},
        "examples": examples,
    }
