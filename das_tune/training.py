"""Training pieces shared by the search loops and the final retrain."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from das_tune.backbones.base import SkippableBackbone
from das_tune.study import OptimSpec
from das_tune.tasks.base import Batch, Task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: SkippableBackbone, optim: OptimSpec, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW (0.9, 0.98) over the trainable parameters, the head at ``head_lr_multiplier`` × lr,
    with a linear warm-up over ``warmup_ratio`` of the steps and a linear decay to 0."""
    head = {id(p) for p in model.task_head.parameters()} if model.task_head is not None else set()
    trainable = model.trainable_parameters()
    groups = [
        {"params": [p for p in trainable if id(p) not in head], "lr": optim.lr},
        {"params": [p for p in trainable if id(p) in head], "lr": optim.lr * optim.head_lr_multiplier},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], betas=(0.9, 0.98), weight_decay=optim.weight_decay
    )
    warmup = max(1, int(total_steps * optim.warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, LambdaLR(optimizer, factor)


def epoch_batches(task: Task, model: SkippableBackbone, batch_size: int, *, seed: int, epoch: int, max_steps: int | None) -> Iterator[Batch]:
    """One epoch of shuffled training batches; the order depends only on (seed, epoch)."""
    loader = task.loader("train", model, batch_size, shuffle=True, seed=seed * 1000 + epoch)
    return itertools.islice(iter(loader), max_steps)


def steps_per_epoch(task: Task, batch_size: int, max_steps: int | None) -> int:
    steps = -(-len(task.examples("train")) // batch_size)
    return min(steps, max_steps) if max_steps else steps


def train_step(model: SkippableBackbone, task: Task, batch: Batch, optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> float:
    model.train()
    loss = task.loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


@torch.no_grad()
def observe(model: SkippableBackbone, task: Task, batch: Batch, skipped: frozenset[str]) -> float:
    """The loss of one subnet of the supernet on one batch, without gradients."""
    model.eval()
    model.set_skipped(skipped)
    return task.loss(model, batch).item()


@torch.no_grad()
def evaluate(model: SkippableBackbone, task: Task, split: str, batch_size: int) -> dict[str, float]:
    model.eval()
    return task.evaluate(model, iter(task.loader(split, model, batch_size)))
