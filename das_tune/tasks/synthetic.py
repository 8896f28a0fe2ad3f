"""Small synthetic datasets written in the real on-disk formats (ViLT ``.arrow`` tables, GLUE TSVs).

They let a whole pipeline run in seconds through the real readers (``tiny=True`` without a data
folder), and they are the tests' fixtures. Images are flat-coloured squares or circles, and every
answer, label or caption follows from the image or the words, so a tiny model can learn them.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")
VQA_ANSWERS = [*COLOURS, *SHAPES, "yes", "no"]
VERSION = 1  # bump when a writer changes, so cached tiny datasets are rewritten


def image_bytes(colour: str, shape: str, size: int = 32, fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_arrow(path: Path, columns: dict[str, pa.Array | list], schema: pa.Schema) -> None:
    """An Arrow IPC file, as ViLT's ``write_*.py`` tools write them."""
    table = pa.table(columns, schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _scenes(rng: random.Random, count: int) -> list[tuple[str, str]]:
    return [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(count)]


# -- VQAv2 (write_vqa.py) -------------------------------------------------------------------------
VQA_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("questions", pa.list_(pa.string())),
        ("answers", pa.list_(pa.list_(pa.string()))),
        ("answer_labels", pa.list_(pa.list_(pa.int64()))),
        ("answer_scores", pa.list_(pa.list_(pa.float64()))),
        ("image_id", pa.int64()),
        ("question_id", pa.list_(pa.int64())),
        ("split", pa.string()),
    ]
)


def _vqa_questions(colour: str, shape: str, rng: random.Random) -> list[tuple[str, list[str], list[float]]]:
    """(question, answers, VQA scores); a second, less agreed answer gives partial credit."""
    other = rng.choice([c for c in COLOURS if c != colour])
    asked = rng.choice(list(COLOURS))
    yes_no = "yes" if asked == colour else "no"
    return [
        ("what color is the shape?", [colour, other], [1.0, 0.3]),
        ("what shape is in the image?", [shape], [1.0]),
        (f"is the shape {asked}?", [yes_no], [0.9]),
    ]


def write_vqav2(folder: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    image_id = question_id = 0
    for name, split, images in (
        ("vqav2_train", "train", 16),
        ("vqav2_trainable_val", "val", 4),
        ("vqav2_rest_val", "val", 8),
    ):
        rows: dict[str, list] = {field: [] for field in VQA_SCHEMA.names}
        for colour, shape in _scenes(rng, images):
            qas = _vqa_questions(colour, shape, rng)
            rows["image"].append(image_bytes(colour, shape))
            rows["questions"].append([q for q, _, _ in qas])
            rows["answers"].append([a for _, a, _ in qas])
            rows["answer_labels"].append([[VQA_ANSWERS.index(x) for x in a] for _, a, _ in qas])
            rows["answer_scores"].append([s for _, _, s in qas])
            rows["image_id"].append(image_id)
            rows["question_id"].append(list(range(question_id, question_id + len(qas))))
            rows["split"].append(split)
            image_id, question_id = image_id + 1, question_id + len(qas)
        write_arrow(folder / f"{name}.arrow", rows, VQA_SCHEMA)


# -- NLVR2 (write_nlvr2.py) -----------------------------------------------------------------------
NLVR2_SCHEMA = pa.schema(
    [
        ("image_0", pa.binary()),
        ("image_1", pa.binary()),
        ("questions", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
        ("identifier", pa.string()),
    ]
)


def write_nlvr2(folder: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = (("nlvr2_train", "train", 24), ("nlvr2_dev", "dev", 8), ("nlvr2_test1", "test1", 8))
    for name, split, pairs in files:
        rows: dict[str, list] = {field: [] for field in NLVR2_SCHEMA.names}
        for i in range(pairs):
            (left, left_shape), (right, right_shape) = _scenes(rng, 2)
            asked = rng.choice(list(COLOURS))
            rows["image_0"].append(image_bytes(left, left_shape))
            rows["image_1"].append(image_bytes(right, right_shape))
            rows["questions"].append([f"the left image is {asked}.", "both images show the same color."])
            rows["answers"].append([str(asked == left), str(left == right)])
            rows["identifier"].append(f"{split}-{i}-0")
        write_arrow(folder / f"{name}.arrow", rows, NLVR2_SCHEMA)


# -- Flickr30K Karpathy (write_f30k_karpathy.py) --------------------------------------------------
F30K_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("caption", pa.list_(pa.string())),
        ("image_id", pa.string()),
        ("split", pa.string()),
    ]
)
CAPTIONS = (
    "a {c} {s}.",
    "a {s} painted {c}.",
    "one {c} {s} on white.",
    "there is a {c} {s} here.",
    "the picture shows a {s} that is {c}.",
)


def write_f30k(folder: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    number = 1000
    for split, images in (("train", 12), ("val", 4), ("test", 6)):
        rows: dict[str, list] = {field: [] for field in F30K_SCHEMA.names}
        for colour, shape in _scenes(rng, images):
            rows["image"].append(image_bytes(colour, shape, fmt="JPEG"))
            rows["caption"].append([t.format(c=colour, s=shape) for t in CAPTIONS])
            rows["image_id"].append(f"{number}.jpg")
            rows["split"].append(split)
            number += 1
        write_arrow(folder / f"f30k_caption_karpathy_{split}.arrow", rows, F30K_SCHEMA)


# -- GLUE TSVs ------------------------------------------------------------------------------------
POSITIVE = ("great", "wonderful", "moving", "funny", "brilliant")
NEGATIVE = ("dull", "awful", "boring", "clumsy", "tedious")
MNLI_HEADER = (
    "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
    "sentence2_parse sentence1 sentence2 label1 gold_label"
).split()


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(header), *("\t".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_sst2(folder: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.tsv", 96), ("dev.tsv", 24)):
        rows = []
        for _ in range(count):
            label = rng.randrange(2)
            word = rng.choice(POSITIVE if label else NEGATIVE)
            rows.append([f"a {word} film , and a {rng.choice(('long', 'short'))} one .", str(label)])
        write_tsv(folder / name, ["sentence", "label"], rows)


def write_mnli(folder: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    hypotheses = {
        "entailment": "a {s} is {c} .",
        "contradiction": "no {s} is {c} .",
        "neutral": "a {s} is {c} and large .",
    }
    for name, count in (("train.tsv", 96), ("dev_matched.tsv", 24)):
        rows = []
        for i in range(count):
            (colour, shape), label = _scenes(rng, 1)[0], rng.choice(list(hypotheses))
            premise = f"there is a {colour} {shape} on the table ."
            hypothesis = hypotheses[label].format(s=shape, c=colour)
            rows.append([str(i), str(i), f"{i}e", "fiction", premise, hypothesis, premise, hypothesis,
                         premise, hypothesis, label, label])
        write_tsv(folder / name, MNLI_HEADER, rows)


# -- ScienceQA (problems.json, pid_splits.json), text problems ----------------------------------------
THINGS = ("ball", "box", "cup", "kite")


def write_scienceqa(folder: Path, seed: int = 0) -> None:
    """Text problems whose answer is in the context: "The ball is red." → "What colour is the ball?"."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    problems, splits = {}, {}
    for split, count in (("train", 64), ("val", 16), ("test", 16)):
        splits[split] = []
        for _ in range(count):
            thing, colour = rng.choice(THINGS), rng.choice(list(COLOURS))
            choices = rng.sample([c for c in COLOURS if c != colour], rng.randint(1, 3)) + [colour]
            rng.shuffle(choices)
            pid = str(len(problems) + 1)
            problems[pid] = {
                "question": f"What colour is the {thing}?", "choices": choices, "answer": choices.index(colour),
                "hint": f"The {thing} is {colour}.", "image": None, "split": split, "subject": "language science",
            }
            splits[split].append(pid)
    (folder / "problems.json").write_text(json.dumps(problems, indent=1))
    (folder / "pid_splits.json").write_text(json.dumps(splits))


WRITERS: dict[str, Callable[[Path], None]] = {
    "vqav2": write_vqav2,
    "nlvr2": write_nlvr2,
    "f30k": write_f30k,
    "sst2": write_sst2,
    "mnli": write_mnli,
    "sst2_lm": write_sst2,
    "mnli_lm": write_mnli,
    "scienceqa": write_scienceqa,
}


def tiny_data_dir(task: str) -> Path:
    """The cached synthetic dataset of ``task``, written on first use.

    Written to a private folder and renamed into place, so concurrent processes (Ray trials) never
    read a half-written dataset.
    """
    root = Path(tempfile.gettempdir()) / "das-tune-tiny-data"
    folder = root / f"{task}-v{VERSION}"
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".{task}-"))
    WRITERS[task](scratch)
    try:
        os.rename(scratch, folder)
    except OSError:  # another process got there first
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
