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

    def target_groups(self) -> dict[str, list[int]]:
        """Named groups of target classes whose metric :meth:`evaluate` also reports, as
        ``"<metric>[<group>]"`` (easy-VQA: its yes/no, shape and colour answers); none by default."""
        return {}

    def loss(self, model: SkippableBackbone, batch: Batch) -> torch.Tensor:
        batch = move_to(batch, model_device(model))
        return self.criterion(self.logits(model, batch), batch["targets"])

    def evaluate(self, model: SkippableBackbone, batches: Iterator[Batch]) -> dict[str, float]:
        groups = {name: torch.tensor(classes) for name, classes in self.target_groups().items()}
        loss_sum, score_sum, count = 0.0, 0.0, 0
        group_sums = dict.fromkeys(groups, 0.0)
        group_counts = dict.fromkeys(groups, 0)
        with evaluating(model):
            for batch in batches:
                batch = move_to(batch, model_device(model))
                logits, targets = self.logits(model, batch), batch["targets"]
                scores = self.scores(logits, targets)
                loss_sum += self.criterion(logits, targets).item() * len(targets)
                score_sum += scores.sum().item()
                count += len(targets)
                if groups:
                    on_cpu, targets_on_cpu = scores.cpu(), targets.cpu()  # once per batch, not per group
                for name, classes in groups.items():
                    member = torch.isin(targets_on_cpu, classes)
                    group_sums[name] += on_cpu[member].sum().item()
                    group_counts[name] += int(member.sum())
        if count == 0:
            raise ValueError(f"task {self.name!r}: nothing to evaluate")
        by_group = {f"{self.metric}[{name}]": group_sums[name] / n for name, n in group_counts.items() if n}
        return {self.metric: score_sum / count, "loss": loss_sum / count, **by_group}


class SingleLabelTask(ClassificationTask):
    """Integer targets, cross-entropy, accuracy."""

    metric = "accuracy"

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def scores(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return metrics.accuracy(logits, targets)
