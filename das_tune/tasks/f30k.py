"""Flickr30K image-text retrieval (Karpathy split) with an image-text matching head.

Data: the ``f30k_caption_karpathy_{train,val,test}.arrow`` files of ViLT's ``write_f30k_karpathy.py``
(one row per image, ``caption`` holds its five captions). An example is one (image, caption) pair.

Training, as METER's ``itm`` + ``irtr`` objectives: each image is scored against its caption and
``negatives`` captions of other images by ``rank_output``; the loss is the ranking cross-entropy that
puts the true caption first (``irtr``) plus ``itm_weight`` × the ITM cross-entropy of the true pair and
the first negative (balanced, as the reference's; its negative is another caption from the same
forward, where the reference draws another image in a second forward). The reference sums both for
METER (``itm_weight`` 1) and, as its ViLT drops loss weights below 1, only ``irtr`` for ViLT (0).
Evaluation scores every image against every caption of the evaluated examples with ``rank_output``
and reports IR/TR Recall@1/5/10.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from das_tune.backbones.base import SkippableBackbone, evaluating
from das_tune.errors import UserError
from das_tune.tasks import metrics
from das_tune.tasks.base import Batch, Task, check_split, model_device, move_to
from das_tune.tasks.files import LazySequence, data_folder, decode_image, entry_keys, read_arrow
from das_tune.tasks.heads import MATCH, RetrievalHead

FILES = {split: f"f30k_caption_karpathy_{split}" for split in ("train", "val", "test")}
COLUMNS = ("image", "caption", "image_id")


def retrieval_loss(itm_logits: torch.Tensor, scores: torch.Tensor, itm_weight: float = 1.0) -> torch.Tensor:
    """The ``irtr`` ranking loss of ``scores`` ``[images, 1 + negatives]`` (the true caption in column 0)
    plus ``itm_weight`` × the ITM cross-entropy of ``itm_logits`` ``[images, 1 + negatives, 2]`` on each
    image's true pair ("match") and first negative ("no match")."""
    first = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
    ranking = F.cross_entropy(scores, first)
    if itm_weight == 0:
        return ranking
    pairs = itm_logits[:, :2].reshape(-1, 2)
    labels = torch.tensor([MATCH, 1 - MATCH], device=scores.device).repeat(len(scores))
    return ranking + itm_weight * F.cross_entropy(pairs, labels)


@dataclass
class CaptionExample:
    caption: str
    image: Image.Image
    image_row: int  # the image's row in its split's file
    split: str
    index: int  # the caption's position in its split


class F30KTask(Task):
    name = "f30k"
    metric = "ir_r1"
    tiny_defaults = {"negatives": 3}

    def __init__(
        self,
        data_dir: str | Path | None,
        negatives: int = 15,
        itm_weight: float = 1.0,
        seed: int = 0,
        score_chunk: int = 64,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
    ) -> None:
        folder = data_folder(data_dir, "Flickr30K", [f"{n}.arrow" for n in FILES.values()])
        self._tables, self._keys, self._captions = {}, {}, {}
        for split, name in FILES.items():
            table = read_arrow(folder / f"{name}.arrow", COLUMNS)
            if table.num_rows < 2:
                raise UserError(f"{folder / name}.arrow holds {table.num_rows} image(s); expected at least 2")
            self._tables[split] = table
            self._keys[split] = entry_keys(table, "caption")
            self._captions[split] = pc.list_flatten(table["caption"]).to_pylist()
        if negatives < 1:
            raise UserError(f"f30k: negatives must be at least 1, got {negatives}")
        self.negatives = negatives
        self.itm_weight = itm_weight
        self.score_chunk = score_chunk
        self._train_rng = random.Random(seed)
        self._limits = {"train": train_limit, "val": val_limit, "test": test_limit}

    def examples(self, split: str) -> Sequence[CaptionExample]:
        check_split(split)
        positions = range(len(self._captions[split]))
        return LazySequence(positions, lambda i: self._example(split, i))[: self._limits[split]]

    def _example(self, split: str, index: int) -> CaptionExample:
        row = int(self._keys[split][index][0])
        return CaptionExample(
            caption=self._captions[split][index],
            image=decode_image(self._tables[split]["image"][row].as_py()),
            image_row=row,
            split=split,
            index=index,
        )

    def _negative_captions(self, example: CaptionExample) -> list[str]:
        """Captions of other images; fixed per example outside training, so evaluation repeats."""
        rng = self._train_rng if example.split == "train" else random.Random(example.index)
        keys, captions = self._keys[example.split], self._captions[example.split]
        picked: list[str] = []
        while len(picked) < self.negatives:
            j = rng.randrange(len(captions))
            if keys[j][0] != example.image_row:
                picked.append(captions[j])
        return picked

    def build_head(self, feature_dim: int, pretrained_itm: dict[str, torch.Tensor] | None = None) -> nn.Module:
        return RetrievalHead(feature_dim, pretrained_itm)

    def attach(self, backbone: SkippableBackbone) -> None:
        """The head, from the backbone's pre-trained ITM head when it has one (METER's checkpoint)."""
        backbone.task_head = self.build_head(backbone.feature_dim, getattr(backbone, "pretrained_itm", None))

    def collate(self, examples: Sequence[CaptionExample], backbone: SkippableBackbone) -> Batch:
        """Rows grouped per example: its true caption first, then its negatives."""
        group = self.negatives + 1
        texts = [text for e in examples for text in [e.caption, *self._negative_captions(e)]]
        images = [e.image for e in examples for _ in range(group)]
        matches = torch.zeros(len(examples), group, dtype=torch.long)
        matches[:, 0] = 1
        return {
            "inputs": backbone.preprocess(texts, images=images),
            "targets": matches.flatten(),
            "captions": [e.caption for e in examples],
            "images": [e.image for e in examples],
            "image_rows": [e.image_row for e in examples],
        }

    def loss(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        return self._loss(model, move_to(batch, model_device(model)))

    def _loss(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        features, group = model.features(**batch["inputs"]), self.negatives + 1
        scores = model.task_head(features).view(-1, group)
        itm = model.task_head.itm(features).view(-1, group, 2)
        return retrieval_loss(itm, scores, self.itm_weight)

    def evaluate(self, model: SkippableBackbone, batches: Iterator[Batch]) -> dict[str, float]:
        loss_sum, captions, text_image, images = 0.0, [], [], {}
        with evaluating(model):
            for batch in batches:
                batch = move_to(batch, model_device(model))
                loss_sum += self._loss(model, batch).item() * len(batch["captions"])
                for caption, image, row in zip(batch["captions"], batch["images"], batch["image_rows"]):
                    if row not in images:
                        images[row] = (len(images), image)  # (column in the score matrix, image)
                    captions.append(caption)
                    text_image.append(images[row][0])
            if not captions:
                raise ValueError(f"task {self.name!r}: nothing to evaluate")
            scores = self.score_matrix(model, [image for _, image in images.values()], captions)
        recalls = metrics.retrieval_recalls(scores, torch.tensor(text_image))
        return {**recalls, "loss": loss_sum / len(captions)}

    def score_matrix(self, model: SkippableBackbone, images: list, captions: list[str]) -> torch.Tensor:
        """``[images, captions]`` retrieval scores (``rank_output``) of every pair."""
        rows = []
        for image in images:
            row = []
            for start in range(0, len(captions), self.score_chunk):
                chunk = captions[start : start + self.score_chunk]
                inputs = move_to(model.preprocess(chunk, images=[image] * len(chunk)), model_device(model))
                row.append(model(**inputs).float().cpu())
            rows.append(torch.cat(row))
        return torch.stack(rows)
