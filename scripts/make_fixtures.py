"""Build small offline datasets in the exact real formats, so the whole evaluation path runs without a hub.

    python scripts/make_fixtures.py OUT_DIR

writes
- OUT_DIR/milebench/<Dataset>/<Dataset>.json + images/: a MileBench root (official layout) with the 12 datasets
  `task=milebench` runs (the paper's; all multi-choice, hand-written for SceneTransition and WebQA, two
  generated colour questions each for the other ten) plus Spot-the-Diff (open-ended, ROUGE-L) and
  TextNeedleInAHaystack (needle, whole-word match; one long sample that truncation must cut);
- OUT_DIR/mmmu/validation.parquet: MMMU-format rows (id, question, options as a string, answer,
  question_type, image_1..image_7 as datasets Image columns, ...);
- OUT_DIR/lmms_tasks/akvq_mmmu_fixture.yaml: an lmms-eval task for that parquet (`dataset_path: parquet`), to
  pass as `--include_path OUT_DIR/lmms_tasks`; it includes akvq/tasks/lmms_tasks/_mmmu_format_yaml;
- OUT_DIR/colours/validation.parquet and OUT_DIR/lmms_tasks/akvq_mc_fixture.yaml: a log-likelihood
  (`output_type: multiple_choice`, metric `acc`) task on the same kind of pictures, with its
  `doc_to_visual` in OUT_DIR/lmms_tasks/akvq_fixture_utils.py.

Images are generated with PIL (solid colours and a few shapes), deterministic; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
MMMU_TEMPLATE = REPO / "akvq" / "tasks" / "lmms_tasks" / "_mmmu_format_yaml"
FIXTURE_TASK = "akvq_mmmu_fixture"

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}


def picture(colour: str, shapes: int = 0, size: int = 64) -> Image.Image:
    """A solid image with `shapes` white squares in a row: enough variety for different vision tokens."""
    im = Image.new("RGB", (size, size), COLOURS[colour])
    draw = ImageDraw.Draw(im)
    for i in range(shapes):
        x = 4 + i * 14
        draw.rectangle([x, 24, x + 10, 34], fill=COLOURS["white" if colour != "white" else "black"])
    return im


def _write_dataset(
    root: Path, name: str, question_type: str, instructions: list[str], items: list[dict[str, Any]]
) -> None:
    """One MileBench dataset folder; each item carries `images` as (colour, shapes) pairs to render."""
    folder = root / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = []
    for sid, item in enumerate(items, start=1):
        paths = []
        for k, (colour, shapes) in enumerate(item["images"], start=1):
            rel = f"{sid}/{name}_{sid}_{k}.jpg"
            (folder / "images" / str(sid)).mkdir(parents=True, exist_ok=True)
            picture(colour, shapes).save(folder / "images" / rel, quality=90)
            paths.append(rel)
        instance: dict[str, Any] = {"context": item["context"], "images_path": paths}
        if "choices" in item:
            instance["choice_list"] = item["choices"]
        data.append(
            {
                "sample_id": sid,
                "task_instruction_id": item.get("instruction", 0),
                "task_instance": instance,
                "response": item["answer"],
                "image_quantity_level": "Few" if len(paths) <= 5 else "Medium",
            }
        )
    meta = {
        "dataset": name,
        "split": "test",
        "num_sample": len(data),
        "task_instruction": instructions,
        "question_type": question_type,
    }
    with open(folder / f"{name}.json", "w", encoding="utf-8") as f:
        json.dump({"meta_data": meta, "data": data}, f, indent=2)


def make_milebench(root: Path) -> None:
    _write_dataset(
        root,
        "SceneTransition",
        "multi-choice",
        ["Watch the frames of a video and answer the question about how the scene changes."],
        [
            {
                "context": "Frames: {image#1}{image#2}{image#3} Question: What is the scene transition in the video?",
                "images": [("red", 0), ("red", 1), ("blue", 0)],
                "choices": ["From red to blue.", "From blue to red.", "From green to yellow.", "No change."],
                "answer": "From red to blue.",
            },
            {
                "context": "{image#1}{image#2} Question: What is the scene transition in the video?",
                "images": [("green", 2), ("yellow", 2)],
                "choices": [
                    "From yellow to green.",
                    "From green to yellow.",
                    "From red to blue.",
                    "No change.",
                ],
                "answer": "From green to yellow.",
            },
            {
                "context": "The video: {image#1} {image#2} {image#3} {image#4} What changes between the frames?",
                "images": [("black", 1), ("black", 2), ("white", 0), ("white", 3)],
                "choices": [
                    "From white to black.",
                    "No change.",
                    "From black to white.",
                    "From red to green.",
                ],
                "answer": "From black to white.",
            },
        ],
    )
    _write_dataset(
        root,
        "WebQA",
        "multi-choice",
        ["Answer the question using the web page images and their captions."],
        [
            {
                "context": "Caption: a red flag {image#1} Caption: a blue flag {image#2} Which flag is red?",
                "images": [("red", 0), ("blue", 0)],
                "choices": ["The first flag", "The second flag"],
                "answer": "The first flag",
            },
            {
                "context": "Caption: three boxes {image#1} How many boxes are shown?",
                "images": [("green", 3)],
                "choices": ["One", "Two", "Three", "Four"],
                "answer": "Three",
            },
        ],
    )
    _write_dataset(
        root,
        "Spot-the-Diff",
        "open-ended",
        ["Describe the difference between the two images in one sentence."],
        [
            {
                "context": "{image#1}{image#2}",
                "images": [("blue", 1), ("blue", 2)],
                "answer": "A second white square was added on the right.",
            },
            {
                "context": "Image A: {image#1} Image B: {image#2} What is different?",
                "images": [("yellow", 0), ("red", 0)],
                "answer": "The yellow background became red.",
            },
        ],
    )
    filler = " ".join(f"The grass is green and the sky is blue on day {i}." for i in range(60))
    _write_dataset(
        root,
        "TextNeedleInAHaystack",
        "open-ended",
        ["Read the document and images, then answer with the secret word only."],
        [
            {
                "context": f"{{image#1}} {filler} The secret word is mango. {filler} {{image#2}} "
                "What is the secret word?",
                "images": [("green", 0), ("blue", 0)],
                "answer": "mango",
            },
            {
                "context": "{image#1} The secret word is kiwi. {image#2} What is the secret word?",
                "images": [("white", 1), ("black", 1)],
                "answer": "kiwi",
            },
        ],
    )


# The paper's other ten datasets (akvq.tasks.milebench.PAPER_TASKS), each with its own instruction.
GENERATED = {
    "TQA": "Read the textbook figures and answer the question.",
    "DocVQA": "Read the document pages and answer the question.",
    "ActionLocalization": "Watch the frames and find when the action happens.",
    "ActionPrediction": "Watch the frames and predict what happens next.",
    "ActionSequence": "Watch the frames and tell the order of the actions.",
    "ObjectExistence": "Watch the frames and say whether the object appears.",
    "CounterfactualInference": "Watch the frames and answer what would happen otherwise.",
    "SlideVQA": "Read the slides and answer the question.",
    "OCR-VQA": "Read the book covers and answer the question.",
    "MultiModalQA": "Use the images and the text to answer the question.",
}


def colour_items(offset: int) -> list[dict[str, Any]]:
    """Two multi-choice samples about the colour of the last image; `offset` varies them between datasets."""
    names = list(COLOURS)
    items = []
    for k, n_images in enumerate((2, 3)):
        colours = [names[(offset + k + j) % len(names)] for j in range(n_images)]
        answer = colours[-1].capitalize()
        choices = (
            [c.capitalize() for c in names[:4]] if answer.lower() in names[:4] else [answer, "Red", "Green"]
        )
        slots = " ".join(f"{{image#{j + 1}}}" for j in range(n_images))
        items.append(
            {
                "context": f"{slots} Question: What colour fills the last image?",
                "images": [(c, j) for j, c in enumerate(colours)],
                "choices": choices,
                "answer": answer,
            }
        )
    return items


def make_generated(root: Path) -> None:
    for i, (name, instruction) in enumerate(GENERATED.items()):
        _write_dataset(root, name, "multi-choice", [instruction], colour_items(i))


def mmmu_rows() -> list[dict[str, Any]]:
    """MMMU validation rows (the hub dataset's columns); images go to image_1..image_7 (None when unused)."""
    rows = [
        {
            "id": "validation_Art_1",
            "question": "<image 1> What colour fills this picture?",
            "options": str(["red", "green", "blue", "yellow"]),
            "answer": "A",
            "question_type": "multiple-choice",
            "images": [picture("red")],
            "subfield": "Painting",
        },
        {
            "id": "validation_Art_2",
            "question": "Which of the two pictures, <image 1> or <image 2>, is blue?",
            "options": str(["the first", "the second"]),
            "answer": "B",
            "question_type": "multiple-choice",
            "images": [picture("yellow"), picture("blue")],
            "subfield": "Painting",
        },
        {
            "id": "validation_Math_1",
            "question": "How many white squares are in <image 1>?",
            "options": str([]),
            "answer": "3",
            "question_type": "open",
            "images": [picture("black", 3)],
            "subfield": "Counting",
        },
        {
            "id": "validation_Math_2",
            "question": "<image 1> How many white squares are drawn?",
            "options": str(["1", "2", "3", "4"]),
            "answer": "B",
            "question_type": "multiple-choice",
            "images": [picture("green", 2)],
            "subfield": "Counting",
        },
    ]
    out = []
    for r in rows:
        images = r.pop("images")
        row = {
            **r,
            "explanation": "",
            "img_type": str(["Diagrams"]),
            "topic_difficulty": "Easy",
        }
        for k in range(1, 8):
            row[f"image_{k}"] = images[k - 1] if k <= len(images) else None
        out.append(row)
    return out


def make_mmmu(out: Path) -> Path:
    """Write the rows with `datasets` so the parquet carries the Image feature (decoded to PIL on load)."""
    import datasets

    rows = mmmu_rows()
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in rows[0] if not k.startswith("image_")},
            **{f"image_{k}": datasets.Image() for k in range(1, 8)},
        }
    )
    ds = datasets.Dataset.from_list(rows, features=features)
    path = out / "mmmu" / "validation.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def make_lmms_task(out: Path) -> Path:
    """The include_path YAML: the repo's MMMU-format template plus this fixture's parquet."""
    folder = out / "lmms_tasks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{FIXTURE_TASK}.yaml"
    path.write_text(
        f"# Generated by scripts/make_fixtures.py: MMMU-format fixture task (offline parquet).\n"
        f"include: {MMMU_TEMPLATE}\n"
        f"task: {FIXTURE_TASK}\n"
        f"dataset_path: parquet\n"
        f"dataset_kwargs:\n"
        f"  data_files:\n"
        f"    validation: ../mmmu/validation.parquet\n"
    )
    return path


MC_TASK = "akvq_mc_fixture"


def make_multiple_choice(out: Path) -> Path:
    """A multiple-choice (log-likelihood) task: which colour fills the picture; the label is the choice index."""
    import datasets

    names = ["red", "green", "blue", "yellow"]
    rows = [
        {"question": "What colour fills this picture?", "choices": names, "label": i, "image": picture(c, i)}
        for i, c in enumerate(names)
    ]
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "label": datasets.Value("int64"),
            "image": datasets.Image(),
        }
    )
    parquet = out / "colours" / "validation.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
    folder = out / "lmms_tasks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "akvq_fixture_utils.py").write_text(
        '"""Generated by scripts/make_fixtures.py: the visuals of the multiple-choice fixture task."""\n\n\n'
        "def doc_to_visual(doc):\n"
        '    return [doc["image"].convert("RGB")]\n'
    )
    path = folder / f"{MC_TASK}.yaml"
    path.write_text(
        "# Generated by scripts/make_fixtures.py: a log-likelihood (multiple_choice) fixture task (offline parquet).\n"
        f"task: {MC_TASK}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        "    validation: ../colours/validation.parquet\n"
        "test_split: validation\n"
        "output_type: multiple_choice\n"
        "doc_to_visual: !function akvq_fixture_utils.doc_to_visual\n"
        'doc_to_text: "{{question}}\\nAnswer:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 0.0\n"
    )
    return path


def make_all(out: Path) -> dict[str, Path]:
    """Build every fixture under `out`; returns where each part is."""
    out = Path(out)
    make_milebench(out / "milebench")
    make_generated(out / "milebench")
    parquet = make_mmmu(out)
    task = make_lmms_task(out)
    make_multiple_choice(out)
    return {"milebench_root": out / "milebench", "mmmu_parquet": parquet, "include_path": task.parent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for k, v in make_all(args.out_dir).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
