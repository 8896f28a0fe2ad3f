"""ScienceQA multiple choice (the text part, as LaVIN is evaluated on it), scored by each answer's likelihood.

``data_dir`` holds ScienceQA's ``problems.json`` (``{id: {question, choices, answer, hint, image, split,
…}}``; ``answer`` is the index of the right choice, ``hint`` the context) and optionally
``pid_splits.json`` (``{"train": [ids], "val": [...], "test": [...]}``; without it each problem's
``split`` field decides). A problem with an ``image`` needs a vision encoder, which the decoder backbones
do not have: such data is refused in one line unless ``text_only: true`` keeps only the text problems.

Each choice is scored by a decoder backbone as the mean log-probability of its answer tokens
``(B) choice`` after the prompt (context, question, the lettered options, ``Answer:``); the loss is the
cross-entropy over a problem's choice scores and the metric is accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.tasks.base import Batch, check_split
from das_tune.tasks.classification import SingleLabelTask
from das_tune.tasks.files import data_folder

LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    context: str = ""
    image: str | None = None

    def prompt(self) -> str:
        options = " ".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(self.choices))
        context = f"Context: {self.context}\n" if self.context else ""
        return f"{context}Question: {self.question}\nOptions: {options}\nAnswer:"

    def answers(self) -> list[str]:
        return [f"({LETTERS[i]}) {choice}" for i, choice in enumerate(self.choices)]


def read_problems(folder: Path) -> dict[str, list[Problem]]:
    """The problems of ``problems.json`` by split (``pid_splits.json`` if present, else each one's ``split``)."""
    path = folder / "problems.json"
    try:
        raw = json.loads(path.read_text())
        splits = json.loads((folder / "pid_splits.json").read_text()) if (folder / "pid_splits.json").is_file() else None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not readable as JSON ({error})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected an object of problems by id")
    problems = {pid: _problem(path, pid, entry) for pid, entry in raw.items()}
    if splits is None:
        splits = {}
        for pid, entry in raw.items():
            splits.setdefault(entry.get("split"), []).append(pid)
    unknown = sorted(str(pid) for ids in splits.values() for pid in ids if pid not in problems)
    if unknown:
        raise UserError(f"{folder / 'pid_splits.json'}: ids not in problems.json, e.g. {unknown[0]}")
    return {split: [problems[pid] for pid in splits.get(split, [])] for split in ("train", "val", "test")}


def _problem(path: Path, pid: str, entry: object) -> Problem:
    try:
        choices = tuple(str(c) for c in entry["choices"])
        answer = int(entry["answer"])
        problem = Problem(str(pid), str(entry["question"]), choices, answer, str(entry.get("hint") or ""), entry.get("image"))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: problem {pid}: expected question, choices (a list) and answer (an index)") from None
    if not 2 <= len(choices) <= len(LETTERS) or not 0 <= answer < len(choices):
        raise UserError(f"{path}: problem {pid}: expected 2-{len(LETTERS)} choices and an answer index among them")
    return problem


class ScienceQATask(SingleLabelTask):
    name = "scienceqa"
    tiny_defaults = {"train_limit": 48, "val_limit": 16, "test_limit": 16}

    def __init__(
        self, data_dir: str | Path | None, text_only: bool = False, train_limit: int | None = None,
        val_limit: int | None = None, test_limit: int | None = None,
    ) -> None:
        folder = data_folder(data_dir, "ScienceQA", ["problems.json"])
        self.source = folder / "problems.json"
        splits = read_problems(folder)
        if text_only:
            splits = {split: [p for p in problems if not p.image] for split, problems in splits.items()}
        self._splits = splits
        self._limits = {"train": train_limit, "val": val_limit, "test": test_limit}

    def examples(self, split: str) -> Sequence[Problem]:
        check_split(split)
        return self._splits[split][: self._limits[split]]

    def build_head(self, feature_dim: int) -> torch.nn.Module:
        return torch.nn.Sequential()  # the answers are scored by the backbone's own LM head

    def attach(self, backbone: SkippableBackbone) -> None:
        if not hasattr(backbone, "continuation_log_likelihood"):
            raise UserError(f"task {self.name!r} scores answers with a language model's head; use a decoder backbone")
        with_image = [p.id for split in ("train", "val", "test") for p in self.examples(split) if p.image]
        if with_image:
            raise UserError(
                f"{self.source}: {len(with_image)} problems have an image (e.g. {with_image[0]}) and this backbone has no "
                "vision encoder configured; set task.options.text_only=true to keep only the text problems"
            )
        super().attach(backbone)

    def collate(self, examples: Sequence[Problem], backbone: SkippableBackbone) -> Batch:
        return choice_batch([(p.prompt(), p.answers()) for p in examples], [p.answer for p in examples], backbone)

    def logits(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        return choice_logits(model, batch)


def choice_batch(questions: list[tuple[str, list[str]]], answers: list[int], backbone: SkippableBackbone) -> Batch:
    """One row per (question, choice): ``owner`` is the question's place in the batch, ``slot`` the choice's."""
    prompts, continuations, owner, slot = [], [], [], []
    for i, (prompt, choices) in enumerate(questions):
        for j, choice in enumerate(choices):
            prompts.append(prompt)
            continuations.append(choice)
            owner.append(i)
            slot.append(j)
    return {
        "inputs": backbone.preprocess_continuations(prompts, continuations),
        "owner": torch.tensor(owner), "slot": torch.tensor(slot), "targets": torch.tensor(answers),
    }


def choice_logits(model: SkippableBackbone, batch: Batch) -> torch.Tensor:
    """``[questions, most choices]`` of answer log-likelihoods; missing choices at the dtype's minimum."""
    scores = model.continuation_log_likelihood(**batch["inputs"])
    owner, slot = batch["owner"], batch["slot"]
    logits = torch.full((len(batch["targets"]), int(slot.max()) + 1), torch.finfo(scores.dtype).min, device=scores.device)
    return logits.index_put((owner, slot), scores)
