"""VQAv2 as METER/ViLT train it: answer classification with soft (VQA-score) targets.

Data: the ``vqav2_*.arrow`` files of ViLT's ``write_vqa.py`` (one row per image; list columns with one
entry per question). The labelled test2015 answers live on the evaluation server only, so the splits
follow ViLT's train+val recipe: train = ``vqav2_train`` + ``vqav2_trainable_val``; the 1,000 held-out
``vqav2_rest_val`` images are split in two halves of whole images, val (first) and test (second).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.tasks import metrics
from das_tune.tasks.base import Batch, check_split
from das_tune.tasks.classification import ClassificationTask
from das_tune.tasks.files import (
    LazySequence,
    data_folder,
    decode_image,
    entry_keys,
    read_arrow,
    read_arrows,
)
from das_tune.tasks.heads import mlp_head

TRAIN_FILES = ("vqav2_train", "vqav2_trainable_val")
HELD_OUT_FILE = "vqav2_rest_val"
COLUMNS = ("image", "questions", "answers", "answer_labels", "answer_scores", "question_id")


@dataclass
class VQAExample:
    question: str
    image: Image.Image
    labels: list[int]
    scores: list[float]
    question_id: int


class VQAv2Task(ClassificationTask):
    name = "vqav2"
    metric = "vqa_score"

    def __init__(
        self,
        data_dir: str | Path | None,
        num_answers: int | None = None,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ) -> None:
        names = (*TRAIN_FILES, HELD_OUT_FILE)
        folder = data_folder(data_dir, "VQAv2", [f"{n}.arrow" for n in names])
        files = {n: read_arrow(folder / f"{n}.arrow", COLUMNS) for n in names}
        self.answer_ids = answer_vocabulary({folder / f"{n}.arrow": t for n, t in files.items()})
        self.num_answers = vocabulary_size(self.answer_ids, num_answers, folder)
        held_out = files[HELD_OUT_FILE]
        half = held_out.num_rows // 2
        self._tables = {
            "train": read_arrows(folder, TRAIN_FILES, COLUMNS),
            "val": held_out.slice(0, half),
            "test": held_out.slice(half),
        }
        self._limits = {"train": train_limit, "val": val_limit, "test": test_limit}

    def examples(self, split: str) -> Sequence[VQAExample]:
        check_split(split)
        table = self._tables[split]
        examples = LazySequence(entry_keys(table, "questions"), lambda key: _example(table, *key))
        return examples[: self._limits[split]]

    def build_head(self, feature_dim: int) -> nn.Module:
        return mlp_head(feature_dim, feature_dim, self.num_answers)

    def collate(self, examples: Sequence[VQAExample], backbone: SkippableBackbone) -> Batch:
        inputs = backbone.preprocess([e.question for e in examples], images=[e.image for e in examples])
        targets = torch.zeros(len(examples), self.num_answers)
        for row, example in enumerate(examples):
            targets[row, example.labels] = torch.tensor(example.scores, dtype=torch.float)
        return {"inputs": inputs, "targets": targets}

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # The reference scales the mean BCE by the number of answers (ban-vqa's convention).
        return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]

    def scores(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return metrics.vqa_score(logits, targets)


def _example(table: pa.Table, row: int, index: int) -> VQAExample:
    def cell(column: str):
        return table[column][int(row)][int(index)].as_py()

    return VQAExample(
        question=cell("questions"),
        image=decode_image(table["image"][int(row)].as_py()),
        labels=cell("answer_labels"),
        scores=cell("answer_scores"),
        question_id=cell("question_id"),
    )


def answer_vocabulary(tables: dict[Path, pa.Table]) -> dict[str, int]:
    """answer -> label, as the files' ``answers`` / ``answer_labels`` pair them (ViLT's ``answer2id``)."""
    vocabulary: dict[str, int] = {}
    for path, table in tables.items():
        check_list_lengths(path, table)
        for answer, label in answer_pairs(table):
            if vocabulary.setdefault(answer, label) != label:
                raise UserError(
                    f"{path}: answer {answer!r} has label {label}, but {vocabulary[answer]} elsewhere; "
                    "expected one label per answer across the vqav2_*.arrow files"
                )
    if not vocabulary:
        raise UserError(f"{', '.join(map(str, tables))}: no answers found; expected labelled VQAv2 files")
    return vocabulary


def check_list_lengths(path: Path, table: pa.Table) -> None:
    """One entry per question in each list column; one score per label and answer."""
    questions = pc.list_value_length(table["questions"])
    for column in ("answers", "answer_labels", "answer_scores", "question_id"):
        if not pc.all(pc.equal(pc.list_value_length(table[column]), questions)).as_py():
            raise UserError(f"{path}: column {column!r} does not hold one entry per question")
    labels = pc.list_value_length(pc.list_flatten(table["answer_labels"]))
    for column in ("answers", "answer_scores"):
        if not pc.all(pc.equal(pc.list_value_length(pc.list_flatten(table[column])), labels)).as_py():
            raise UserError(f"{path}: column {column!r} does not hold one entry per answer label")


def answer_pairs(table: pa.Table) -> list[tuple[str, int]]:
    flat = pa.table(
        {
            "answer": pc.list_flatten(pc.list_flatten(table["answers"])),
            "label": pc.list_flatten(pc.list_flatten(table["answer_labels"])),
        }
    )
    unique = flat.group_by(["answer", "label"]).aggregate([])
    return list(zip(unique["answer"].to_pylist(), unique["label"].to_pylist(), strict=True))


def vocabulary_size(answer_ids: dict[str, int], num_answers: int | None, folder: Path) -> int:
    largest = max(answer_ids.values())
    if min(answer_ids.values()) < 0 or (num_answers is not None and largest >= num_answers):
        raise UserError(
            f"{folder}: answer labels run from {min(answer_ids.values())} to {largest}; expected labels "
            f"0..{(num_answers or largest + 1) - 1} (num_answers={num_answers})"
        )
    return num_answers or largest + 1
