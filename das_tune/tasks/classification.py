"""The shared shape of the classification tasks (VQA, NLVR2, GLUE, easy-VQA).

Their batches are ``{"inputs": ..., "targets": ...}``; they differ in how logits are computed (one or
two passes), the loss and the per-example metric.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from das_tune.backbones.base import SkippableBackbone, evaluating
from das_tune.tasks import metrics
from das_tune.tasks.base import Batch, Task, model_device, move_to


class ClassificationTask(Task):
    def logits(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        return model(**batch["inputs"])

    @abstractmethod
    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch."""

    @abstractmethod
    def scores(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The metric of each example of a batch."""

    def loss(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        batch = move_to(batch, model_device(model))
        return self.criterion(self.logits(model, batch), batch["targets"])

    def evaluate(self, model: SkippableBackbone, batches: Iterator[Batch]) -> dict[str, float]:
        loss_sum, score_sum, count = 0.0, 0.0, 0
        with evaluating(model):
            for batch in batches:
                batch = move_to(batch, model_device(model))
                logits, targets = self.logits(model, batch), batch["targets"]
                loss_sum += self.criterion(logits, targets).item() * len(targets)
                score_sum += self.scores(logits, targets).sum().item()
                count += len(targets)
        if count == 0:
            raise ValueError(f"task {self.name!r}: nothing to evaluate")
        return {self.metric: score_sum / count, "loss": loss_sum / count}


class SingleLabelTask(ClassificationTask):
    """Integer targets, cross-entropy, accuracy."""

    metric = "accuracy"

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def scores(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return metrics.accuracy(logits, targets)
