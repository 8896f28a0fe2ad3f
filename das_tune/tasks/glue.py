"""GLUE text classification (SST-2, MNLI) from the GLUE TSV files.

``data_dir`` is the task's GLUE folder (``SST-2/``, ``MNLI/``) or the GLUE root that holds it. GLUE's
test labels are not public, so the splits are: train = ``train.tsv`` less a fixed random held-out
set of ``val_size`` rows, val = that held-out set, test = the dev file (MNLI: ``dev_matched.tsv``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.tasks.base import Batch, check_split
from das_tune.tasks.classification import SingleLabelTask
from das_tune.tasks.files import data_folder, read_tsv
from das_tune.tasks.heads import sentence_head


@dataclass
class TextExample:
    text: str
    label: int
    pair: str | None = None


class GlueTask(SingleLabelTask):
    folder_name: str
    test_file: str
    text_columns: tuple[str, ...]  # one sentence, or a sentence pair
    label_column: str
    labels: dict[str, int]  # the file's label text -> class
    tiny_defaults = {"val_size": 16}

    def __init__(
        self,
        data_dir: str | Path | None,
        val_size: int = 1000,
        seed: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ) -> None:
        if data_dir is not None and (Path(data_dir) / self.folder_name).is_dir():
            data_dir = Path(data_dir) / self.folder_name
        folder = data_folder(data_dir, f"GLUE {self.folder_name}", ["train.tsv", self.test_file])
        train = self._read(folder / "train.tsv")
        if not 0 < val_size < len(train):
            raise UserError(
                f"{folder / 'train.tsv'} has {len(train)} rows; "
                f"val_size={val_size} must leave some to train on"
            )
        held_out = set(random.Random(seed).sample(range(len(train)), val_size))
        self._splits = {
            "train": [e for i, e in enumerate(train) if i not in held_out],
            "val": [train[i] for i in sorted(held_out)],
            "test": self._read(folder / self.test_file),
        }
        self._limits = {"train": train_limit, "val": val_limit, "test": test_limit}

    def _read(self, path: Path) -> list[TextExample]:
        examples = []
        for line, row in enumerate(read_tsv(path, (*self.text_columns, self.label_column)), start=2):
            label = self.labels.get(row[self.label_column])
            if label is None:
                raise UserError(
                    f"{path} line {line}: unknown label {row[self.label_column]!r} in column "
                    f"{self.label_column!r}; expected one of {', '.join(self.labels)}"
                )
            texts = [row[c] for c in self.text_columns]
            examples.append(TextExample(texts[0], label, texts[1] if len(texts) > 1 else None))
        return examples

    def examples(self, split: str) -> Sequence[TextExample]:
        check_split(split)
        return self._splits[split][: self._limits[split]]

    def build_head(self, feature_dim: int) -> nn.Module:
        return sentence_head(feature_dim, len(self.labels))

    def collate(self, examples: Sequence[TextExample], backbone: SkippableBackbone) -> Batch:
        pairs = [e.pair for e in examples] if len(self.text_columns) > 1 else None
        return {
            "inputs": backbone.preprocess([e.text for e in examples], text_pairs=pairs),
            "targets": torch.tensor([e.label for e in examples]),
        }


class SST2Task(GlueTask):
    name = "sst2"
    folder_name = "SST-2"
    test_file = "dev.tsv"
    text_columns = ("sentence",)
    label_column = "label"
    labels = {"0": 0, "1": 1}


class MNLITask(GlueTask):
    name = "mnli"
    folder_name = "MNLI"
    test_file = "dev_matched.tsv"
    text_columns = ("sentence1", "sentence2")
    label_column = "gold_label"
    labels = {"contradiction": 0, "entailment": 1, "neutral": 2}
