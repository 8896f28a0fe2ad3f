"""NLVR2: is a sentence true of a pair of images? Binary accuracy, METER's two-pass head.

Data: the ``nlvr2_*.arrow`` files of ViLT's ``write_nlvr2.py`` (one row per image pair; ``questions``
and ``answers`` hold each sentence and its "True"/"False" label). Splits: train = ``nlvr2_train``,
val = ``nlvr2_dev``, test = ``nlvr2_test1``.

Each example runs through the backbone twice, once per image, the left image typed 1 and the right
typed 2 (a third, trainable row of the token-type table, initialised from row 1, as the reference);
the two pooled features are concatenated and classified (batch keys ``inputs`` for the left image,
``inputs_right`` for the right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.tasks.base import Batch, check_split
from das_tune.tasks.classification import SingleLabelTask
from das_tune.tasks.files import LazySequence, data_folder, decode_image, entry_keys, read_arrow
from das_tune.tasks.heads import mlp_head

FILES = {"train": "nlvr2_train", "val": "nlvr2_dev", "test": "nlvr2_test1"}
COLUMNS = ("image_0", "image_1", "questions", "answers", "identifier")
LABELS = {"False": 0, "True": 1}


@dataclass
class NLVR2Example:
    sentence: str
    left: Image.Image
    right: Image.Image
    label: int
    identifier: str


class NLVR2Task(SingleLabelTask):
    name = "nlvr2"

    def __init__(
        self,
        data_dir: str | Path | None,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ) -> None:
        folder = data_folder(data_dir, "NLVR2", [f"{n}.arrow" for n in FILES.values()])
        self._tables = {}
        for split, name in FILES.items():
            path = folder / f"{name}.arrow"
            self._tables[split] = check_answers(path, read_arrow(path, COLUMNS))
        self._limits = {"train": train_limit, "val": val_limit, "test": test_limit}

    def examples(self, split: str) -> Sequence[NLVR2Example]:
        check_split(split)
        table = self._tables[split]
        examples = LazySequence(entry_keys(table, "questions"), lambda key: _example(table, *key))
        return examples[: self._limits[split]]

    def build_head(self, feature_dim: int) -> nn.Module:
        return mlp_head(2 * feature_dim, feature_dim, 2)

    def attach(self, backbone: SkippableBackbone) -> None:
        backbone.use_image_token_types(2)
        super().attach(backbone)

    def collate(self, examples: Sequence[NLVR2Example], backbone: SkippableBackbone) -> Batch:
        sentences = [e.sentence for e in examples]
        return {
            "inputs": backbone.preprocess(sentences, images=[e.left for e in examples]),
            "inputs_right": backbone.preprocess(sentences, images=[e.right for e in examples]),
            "targets": torch.tensor([e.label for e in examples]),
        }

    def logits(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        left = model.features(**batch["inputs"], image_token_type=1)
        pooled = torch.cat([left, model.features(**batch["inputs_right"], image_token_type=2)], -1)
        return model.task_head(pooled)


def check_answers(path: Path, table: pa.Table) -> pa.Table:
    lengths = pc.list_value_length(table["questions"])
    if not pc.all(pc.equal(pc.list_value_length(table["answers"]), lengths)).as_py():
        raise UserError(f"{path}: column 'answers' does not hold one label per sentence of 'questions'")
    unknown = set(pc.unique(pc.list_flatten(table["answers"])).to_pylist()) - set(LABELS)
    if unknown:
        raise UserError(f"{path}: unknown answer label(s) {sorted(unknown)}; expected 'True' or 'False'")
    return table


def _example(table: pa.Table, row: int, index: int) -> NLVR2Example:
    row, index = int(row), int(index)
    return NLVR2Example(
        sentence=table["questions"][row][index].as_py(),
        left=decode_image(table["image_0"][row].as_py()),
        right=decode_image(table["image_1"][row].as_py()),
        label=LABELS[table["answers"][row][index].as_py()],
        identifier=table["identifier"][row].as_py(),
    )
