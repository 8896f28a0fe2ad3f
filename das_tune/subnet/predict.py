"""A task's natural inputs (a question and an image, a sentence, a premise and a hypothesis, ...), how
they reach a model, and what comes back: labels with scores.

    rows = [{"question": "what shape is it?", "image": "shape.png"}]
    logits = TASK_INPUTS["easyvqa"].logits(backbone, rows)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError, shorten
from das_tune.tasks.base import Task, model_device, move_to
from das_tune.tasks.prompted import MNLIPromptTask, SST2PromptTask
from das_tune.tasks.scienceqa import LETTERS, Problem, choice_batch, choice_logits


class LabelScore(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    """The best label, its score (a probability) and the ``top`` labels with theirs, best first."""

    label: str
    score: float
    top: list[LabelScore]


def _ordered(labels: Mapping[str, int], size: int | None = None) -> list[str]:
    """Label names in class order from a ``{name: class}`` vocabulary; unnamed classes get their number."""
    names = {index: name for name, index in labels.items()}
    return [names.get(i, str(i)) for i in range(size or len(names))]


@dataclass(frozen=True)
class TaskInputs:
    """The inputs of one task: text fields (a second one is the pair's sentence), image fields, and
    how logits become scores."""

    texts: tuple[str, ...]
    images: tuple[str, ...]
    labels: Callable[[Task], list[str]]  # class names, read from a built task
    multi_label: bool = False  # independent sigmoid scores (VQAv2's soft targets), else a softmax
    pass_per_image: bool = False  # NLVR2: one pass per image, pooled features concatenated

    @property
    def fields(self) -> tuple[str, ...]:
        return self.texts + self.images

    def check(self, task: str, row: Mapping[str, Any]) -> None:
        wanted = ", ".join(self.fields)
        unknown = sorted(set(row) - set(self.fields))
        if unknown:
            raise UserError(f"task {task!r} takes {wanted}; {', '.join(unknown)} is not one of its inputs")
        missing = [field for field in self.fields if row.get(field) is None]
        if missing:
            raise UserError(f"task {task!r} needs {wanted}; missing {', '.join(missing)}")
        for field in self.texts:
            _check_text(field, row[field])
        for field in self.images:
            _check_image(field, row[field])

    def logits(self, model: SkippableBackbone, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        texts = [str(row[self.texts[0]]) for row in rows]
        pairs = [str(row[self.texts[1]]) for row in rows] if len(self.texts) > 1 else None
        images = [[read_image(row[field]) for row in rows] for field in self.images]
        device = model_device(model)
        if self.pass_per_image:
            pooled = [model.features(**move_to(model.preprocess(texts, images=batch), device)) for batch in images]
            return model.task_head(torch.cat(pooled, dim=-1))
        inputs = model.preprocess(texts, images=images[0] if images else None, text_pairs=pairs)
        return model(**move_to(inputs, device))

    def predictions(self, logits: torch.Tensor, labels: Sequence[str], top: int) -> list[Prediction]:
        scores = logits.float().sigmoid() if self.multi_label else logits.float().softmax(dim=-1)
        values, indices = scores.topk(min(top, scores.shape[-1]), dim=-1)
        results = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            best = [LabelScore(label=labels[i], score=v) for v, i in zip(row_values, row_indices)]
            results.append(Prediction(label=best[0].label, score=best[0].score, top=best))
        return results


@dataclass(frozen=True)
class ChoiceInputs(TaskInputs):
    """Multiple choice (ScienceQA): ``question``, ``choices`` (a list of texts) and an optional ``context``;
    each choice is scored by the answer's likelihood and the label is the chosen choice's letter."""

    def check(self, task: str, row: Mapping[str, Any]) -> None:
        unknown = sorted(set(row) - set(self.fields))
        if unknown:
            raise UserError(f"task {task!r} takes {', '.join(self.fields)}; {', '.join(unknown)} is not one of its inputs")
        choices = row.get("choices")
        if row.get("question") is None or not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise UserError(f"task {task!r} needs a question and choices: a list of 2-{len(LETTERS)} answers")
        _check_text("question", row["question"])
        for choice in choices:
            _check_text("choices", choice)
        if row.get("context") is not None:
            _check_text("context", row["context"])

    def logits(self, model: SkippableBackbone, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        problems = [
            Problem("", str(row["question"]), tuple(str(c) for c in row["choices"]), 0, str(row.get("context") or ""))
            for row in rows
        ]
        batch = choice_batch([(p.prompt(), p.answers()) for p in problems], [0] * len(problems), model)
        return choice_logits(model, move_to(batch, model_device(model)))

    def predictions(self, logits: torch.Tensor, labels: Sequence[str], top: int) -> list[Prediction]:
        counts = (logits > torch.finfo(logits.dtype).min).sum(-1).tolist()  # a row's own choices, not the padding
        return [
            p.model_copy(update={"top": [t for t in p.top if labels.index(t.label) < n]})
            for p, n in zip(super().predictions(logits, labels, top), counts)
        ]


@dataclass(frozen=True)
class PromptInputs(TaskInputs):
    """Classification through a decoder's LM head: the fields go into the task's prompt ``template``."""

    template: str = "{text}"

    def logits(self, model: SkippableBackbone, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        pair = self.texts[1] if len(self.texts) > 1 else None
        prompts = [self.template.format(text=row[self.texts[0]], pair=row[pair] if pair else None) for row in rows]
        return model(**move_to(model.preprocess(prompts), model_device(model)))


MAX_TEXT = 10_000  # characters: far beyond what any tokenizer here keeps; more is a mistake, not an input


def _check_text(field: str, value: Any) -> None:
    if not isinstance(value, str):
        raise UserError(f"field {field!r}: expected text, got {type(value).__name__} {shorten(repr(value))}")
    if not value.strip():
        raise UserError(f"field {field!r}: expected text, got {'an empty' if not value else 'a blank'} string")
    if len(value) > MAX_TEXT:
        raise UserError(f"field {field!r}: {len(value):,} characters; expected at most {MAX_TEXT:,}")


def _check_image(field: str, value: Any) -> None:
    """A path to an existing file (read later, by ``read_image``), or an image already in memory (the Python API)."""
    from PIL import Image

    if isinstance(value, str | Path):
        _check_image_file(Path(value).expanduser(), field)
    elif not isinstance(value, Image.Image | np.ndarray):
        raise UserError(f"field {field!r}: expected the path of an image file, got {type(value).__name__} {shorten(repr(value))}")


def _check_image_file(path: Path, field: str) -> None:
    """An image file Pillow can read, of a size that can be decoded: its header only is read."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{field} {shorten(str(path))}: no such file")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
    except Image.DecompressionBombError as error:  # Pillow refuses twice its limit itself
        raise UserError(f"{field} {path}: too large to decode ({error})") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{field} {path}: not an image file that Pillow can read ({error})") from None
    if width * height > Image.MAX_IMAGE_PIXELS:
        raise UserError(f"{field} {path}: {width}×{height} pixels, too large to decode; expected at most {Image.MAX_IMAGE_PIXELS:,}")


TASK_INPUTS: dict[str, TaskInputs] = {
    "easyvqa": TaskInputs(("question",), ("image",), labels=lambda task: list(task.answers)),
    "vqav2": TaskInputs(
        ("question",), ("image",), multi_label=True, labels=lambda task: _ordered(task.answer_ids, task.num_answers)
    ),
    "sst2": TaskInputs(("sentence",), (), labels=lambda task: ["negative", "positive"]),
    "mnli": TaskInputs(("premise", "hypothesis"), (), labels=lambda task: _ordered(task.labels)),
    "nlvr2": TaskInputs(("sentence",), ("image", "image2"), pass_per_image=True, labels=lambda task: ["False", "True"]),
    "f30k": TaskInputs(("caption",), ("image",), labels=lambda task: ["no match", "match"]),
    "sst2_lm": PromptInputs(("sentence",), (), labels=lambda task: list(task.words), template=SST2PromptTask.template),
    "mnli_lm": PromptInputs(
        ("premise", "hypothesis"), (), labels=lambda task: _ordered(task.labels), template=MNLIPromptTask.template
    ),
    "scienceqa": ChoiceInputs(("question", "choices", "context"), (), labels=lambda task: list(LETTERS)),
}


def task_inputs(task: str) -> TaskInputs:
    if task not in TASK_INPUTS:
        raise UserError(f"task {task!r} has no prediction inputs; expected one of {', '.join(TASK_INPUTS)}")
    return TASK_INPUTS[task]


def read_image(image: Any):
    """A PIL image from a path (or an image or array as it is)."""
    if not isinstance(image, str | Path):
        return image
    from PIL import Image, UnidentifiedImageError

    path = Path(image).expanduser()
    if not path.is_file():
        raise UserError(f"image {path}: no such file")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"image {path}: not an image file that Pillow can read ({error})") from None
