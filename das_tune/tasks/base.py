"""The contract every downstream task keeps.

A task owns its data (fixed train / val / test splits read from the real on-disk formats), its head,
its loss and its metric. It knows nothing of which layers exist: it talks to a model only through the
backbone contract (``preprocess``, ``features``, ``task_head``, ``forward``).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from das_tune.backbones.base import SkippableBackbone

# {"inputs": {...tensors for the backbone...}, "targets": tensor, ...}; a task may add keys (NLVR2's
# second pass, F30K's raw captions for the score matrix). Tensors may sit on the CPU: ``loss`` and
# ``evaluate`` move them to the model's device.
Batch = dict[str, Any]

SPLITS = ("train", "val", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def move_to(data: Any, device: torch.device) -> Any:
    """``data`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(data, torch.Tensor):
        return data.to(device)
    if isinstance(data, dict):
        return {k: move_to(v, device) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(move_to(v, device) for v in data)
    return data


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def metric_by_group(metrics: Mapping[str, float], metric: str) -> dict[str, float]:
    """``{"yes/no": 0.84, …}`` from an evaluation's ``metric[group]`` entries (empty for a task without groups)."""
    prefix = f"{metric}["
    return {key[len(prefix) : -1]: value for key, value in metrics.items() if key.startswith(prefix) and key.endswith("]")}

class Task(ABC):
    """One downstream task. ``metric`` names the headline figure of :meth:`evaluate` (higher is better)."""

    name: str
    metric: str
    metric_max = 1.0  # the headline metric's ceiling: a retrain whose val metric reaches it cannot pick a better epoch
    tiny_defaults: dict[str, Any] = {}  # options that ``build_task(..., tiny=True)`` applies

    @abstractmethod
    def examples(self, split: str) -> Sequence[Any]:
        """The raw examples of ``split`` ("train", "val" or "test"), in a fixed order."""

    @abstractmethod
    def build_head(self, feature_dim: int) -> nn.Module:
        """A fresh head for pooled features of width ``feature_dim``."""

    def attach(self, backbone: SkippableBackbone) -> None:
        """Give ``backbone`` this task's fresh head (and whatever else the task needs of it)."""
        backbone.task_head = self.build_head(backbone.feature_dim)

    @abstractmethod
    def collate(self, examples: Sequence[Any], backbone: SkippableBackbone) -> Batch:
        """Turn raw examples into a batch through the backbone's own processor."""

    @abstractmethod
    def loss(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        """The training loss of ``model`` (backbone with this task's head) on ``batch``."""

    @abstractmethod
    def evaluate(self, model: SkippableBackbone, batches: Iterator[Batch]) -> dict[str, float]:
        """Metrics over ``batches``; contains ``self.metric`` and ``"loss"``."""

    def loader(
        self,
        split: str,
        backbone: SkippableBackbone,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
    ) -> DataLoader:
        data = self.examples(split)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=lambda items: self.collate(items, backbone),
        )

    def observation_batches(
        self, backbone: SkippableBackbone, batch_size: int, num_batches: int = 4, split: str = "val"
    ) -> Iterator[Batch]:
        """A deterministic, endless stream of the first ``num_batches`` batches of ``split``, cycled,
        for redundancy observations (``num_batches=1``: the reference's one fixed batch)."""
        fixed = list(itertools.islice(iter(self.loader(split, backbone, batch_size)), num_batches))
        if not fixed:
            raise ValueError(f"task {self.name!r}: the {split} split is empty")
        return itertools.cycle(fixed)
