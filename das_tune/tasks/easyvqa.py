"""easy-VQA: real (synthetic-scene) images and questions from the offline ``easy-vqa`` package.

13 answers, one per question: cross-entropy and accuracy. Splits are fixed: val is a seeded random set
of ``val_images`` whole images of the package's train set (no image is in both train and val), train
is the rest, test is the package's test set. Each split's questions are shuffled once (seeded), so a
limit keeps a mix of images and question types; only the images a split uses are decoded, once, and
kept in memory (64x64 RGB).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import easy_vqa
import torch
from PIL import Image
from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.tasks.base import Batch, check_split
from das_tune.tasks.classification import SingleLabelTask
from das_tune.tasks.heads import mlp_head


@dataclass
class QAExample:
    question: str
    image: Image.Image
    label: int
    image_id: int


class EasyVQATask(SingleLabelTask):
    name = "easyvqa"
    tiny_defaults = {"train_limit": 64, "val_limit": 32, "test_limit": 32}

    def __init__(
        self,
        data_dir: str | Path | None = None,
        val_images: int = 400,
        seed: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ) -> None:
        if data_dir is not None:
            raise UserError(
                f"easyvqa reads the installed easy-vqa package; expected no data_dir, got {data_dir}"
            )
        self.answers = easy_vqa.get_answers()
        train_paths, test_paths = easy_vqa.get_train_image_paths(), easy_vqa.get_test_image_paths()
        if not 0 < val_images < len(train_paths):
            raise UserError(f"easyvqa: val_images={val_images}; expected 1..{len(train_paths) - 1}")
        held_out = set(random.Random(seed).sample(sorted(train_paths), val_images))
        train_rows = list(zip(*easy_vqa.get_train_questions(), strict=True))
        rows = {
            "train": [r for r in train_rows if r[2] not in held_out],
            "val": [r for r in train_rows if r[2] in held_out],
            "test": list(zip(*easy_vqa.get_test_questions(), strict=True)),
        }
        limits = {"train": train_limit, "val": val_limit, "test": test_limit}
        paths = {"train": train_paths, "val": train_paths, "test": test_paths}
        self._splits = {}
        for split, split_rows in rows.items():
            random.Random(seed).shuffle(split_rows)
            self._splits[split] = self._examples(split_rows[: limits[split]], paths[split])

    def _examples(self, rows: list[tuple[str, str, int]], paths: dict[int, str]) -> list[QAExample]:
        label = {answer: i for i, answer in enumerate(self.answers)}
        images = {image_id: _load(paths[image_id]) for image_id in sorted({r[2] for r in rows})}
        return [QAExample(q, images[image_id], label[answer], image_id) for q, answer, image_id in rows]

    def examples(self, split: str) -> Sequence[QAExample]:
        check_split(split)
        return self._splits[split]

    def target_groups(self) -> dict[str, list[int]]:
        # Yes/no questions (about 70 % of each split) ask whether the image holds a shape or colour: a subnet
        # can answer every shape and colour question and sit for epochs on a plateau of these.
        kind = {"yes": "yes/no", "no": "yes/no", "circle": "shape", "rectangle": "shape", "triangle": "shape"}
        groups: dict[str, list[int]] = {"yes/no": [], "shape": [], "colour": []}
        for label, answer in enumerate(self.answers):
            groups[kind.get(answer, "colour")].append(label)
        return groups

    def build_head(self, feature_dim: int) -> nn.Module:
        return mlp_head(feature_dim, feature_dim, len(self.answers))

    def collate(self, examples: Sequence[QAExample], backbone: SkippableBackbone) -> Batch:
        return {
            "inputs": backbone.preprocess([e.question for e in examples], images=[e.image for e in examples]),
            "targets": torch.tensor([e.label for e in examples]),
        }


def _load(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
