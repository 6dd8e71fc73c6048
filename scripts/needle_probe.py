"""Why synth-vlm fails SynthBench's needle: forward-only probes of a weights file (fp16, no cache quant).

    python scripts/needle_probe.py [--threads 2] [--items 20] [--images 8 33] [--text] [--weights FILE]

Three question forms over the same kind of haystack (numbered 4-digit-number images, `Image 3: <image> (3)`):
- `current`: the benchmark's needle, "which image shows N?", the three wrong options showing numbers one digit
  away from N;
- `random-distractors`: the same question, but N's near misses are not in the haystack (any image matching N
  in one digit is chance);
- `reversed`: "which number is shown in Image k?", options N's family (`bench.number_at`, the training drill
  `NumberAt`; before commit f9ca7e8 the probe asked it under the needle's instruction, from its own copy).
`--text` gives each image as its caption instead ("Image 3: 9451 (3)", `train_vlm.as_text`): the same questions
with nothing to see, so a miss there is the language model's, not the tower's.
Items come from their own random streams (`diag/<form>/<images>`), not the evaluation seed. Greedy answers,
exact match with the option text. Prints one line per (images, form).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_vlm  # noqa: E402

from akvq.models.sources.synth_vlm import DEFAULT_WEIGHTS, load_synth_vlm  # noqa: E402
from akvq.synth import bench  # noqa: E402
from akvq.synth.draw import render  # noqa: E402

TASK = "ImageNeedleInAHaystack"


def _haystack(rng: random.Random, pool: Any, family: list[Any], n: int) -> list[Any]:
    others = [g for g in pool if g is not family]
    return [rng.choice(rng.choice(others)) for _ in range(n)]


def random_distractors(rng: random.Random, pool: Any, n: int) -> bench.Item:
    family = pool[rng.randrange(len(pool))]
    scenes = _haystack(rng, pool, family, n)
    q = rng.randint(1, n)
    scenes[q - 1] = family[0]
    choices, answer = bench._label_choices(rng, n, q)
    context = bench._labelled(n) + f"Question: Which image shows the number {family[0].text}?"
    return bench.Item(TASK, context, tuple(scenes), tuple(choices), answer)


FORMS = {"current": bench.image_needle, "random-distractors": random_distractors, "reversed": bench.number_at}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--images", type=int, nargs="+", default=[8, 33])
    ap.add_argument("--text", action="store_true", help="captions in place of the images")
    ap.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="a weights file (default: committed)"
    )
    args = ap.parse_args()
    if not args.weights.is_file():
        ap.error(f"--weights: {str(args.weights)!r}: no such file")
    torch.set_num_threads(args.threads)
    loaded = load_synth_vlm(args.weights)
    model, tok = loaded.model, loaded.tokenizer
    for n in args.images:
        for name, form in FORMS.items():
            rng = random.Random(f"diag/{name}/{n}")
            pool = bench.make_pool(TASK, rng, 160)
            right, wrong, t0 = 0, [], time.time()
            for _ in range(args.items):
                item = form(rng, pool, n)
                prompt, _ = train_vlm.item_text(loaded, item)
                if args.text:
                    text = train_vlm.as_text(train_vlm.Example(prompt, item.scenes, "", TASK)).prompt
                    enc = loaded.processor(text=[text], images=None, return_tensors="pt")
                else:
                    enc = loaded.processor(
                        text=[prompt], images=[render(s) for s in item.scenes], return_tensors="pt"
                    )
                with torch.inference_mode():
                    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
                said = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
                right += said == item.answer
                if said != item.answer and len(wrong) < 3:
                    wrong.append(f"said {said!r}, answer {item.answer!r}, options {list(item.choices)}")
            print(
                f"images={n:3d} {name:18s} {right}/{args.items}  ({time.time() - t0:.0f} s)  wrong: "
                + "; ".join(wrong),
                flush=True,
            )


if __name__ == "__main__":
    main()
