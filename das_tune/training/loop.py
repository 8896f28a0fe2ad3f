"""Training pieces shared by the search loops and the final retrain."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from das_tune.backbones.base import SkippableBackbone
from das_tune.spec.study import OptimSpec
from das_tune.tasks.base import Batch, Task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cuda_rng_state() -> list[torch.Tensor] | None:
    """Every visible CUDA device's generator (a GPU draws its dropout masks there), for a
    checkpoint beside torch's CPU generator; None without CUDA."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def set_cuda_rng_state(state: list[torch.Tensor] | None) -> None:
    """Restore :func:`cuda_rng_state`; nothing for a checkpoint written without CUDA, or without CUDA here."""
    if state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state)


@dataclass(frozen=True)
class ParamGroup:
    """One AdamW parameter group: its parameters' names, lr multiplier and weight decay."""

    names: tuple[str, ...]
    lr_multiplier: float
    weight_decay: float


def parameter_groups(model: SkippableBackbone, optim: OptimSpec) -> list[ParamGroup]:
    """The reference's groups (METER ``meter_utils.set_schedule``): the task head at
    ``head_lr_multiplier`` × lr, the backbone's cross-modal modules at ``cross_modal_lr_multiplier``
    × lr, the rest at lr; no weight decay on biases and LayerNorm weights."""
    head = _param_ids(model.task_head)
    cross_modal = _param_ids(*model.cross_modal_modules())
    no_decay = _param_ids(*(m for m in model.modules() if isinstance(m, nn.LayerNorm)))
    groups: dict[tuple[float, float], list[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = id(param)
        multiplier = optim.head_lr_multiplier if key in head else optim.cross_modal_lr_multiplier if key in cross_modal else 1.0
        decay = 0.0 if key in no_decay or name.endswith("bias") else optim.weight_decay
        groups.setdefault((multiplier, decay), []).append(name)
    return [ParamGroup(tuple(names), multiplier, decay) for (multiplier, decay), names in groups.items()]


def _param_ids(*modules: nn.Module | None) -> set[int]:
    return {id(p) for m in modules if m is not None for p in m.parameters()}


def make_optimizer(model: SkippableBackbone, optim: OptimSpec, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW (0.9, 0.98) over :func:`parameter_groups`, with a linear warm-up over ``warmup_ratio``
    of the ``total_steps`` optimizer steps and a linear decay to 0."""
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [params[n] for n in g.names], "lr": optim.lr * g.lr_multiplier, "weight_decay": g.weight_decay}
            for g in parameter_groups(model, optim)
        ],
        betas=(0.9, 0.98),
    )
    warmup = max(1, int(total_steps * optim.warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, LambdaLR(optimizer, factor)


class Trainer:
    """AdamW over micro-batches with gradient accumulation.

    Every micro-batch's loss is divided by the size of its accumulation window and back-propagated;
    the optimizer steps when a window of ``accumulate`` micro-batches ends (the last window of an epoch
    may be shorter), so a window's update is that of one batch of all its examples. Micro-batches are
    indexed within an epoch of ``steps_per_epoch``.
    """

    def __init__(self, model: SkippableBackbone, optim: OptimSpec, steps_per_epoch: int, epochs: int) -> None:
        self.model, self.accumulate, self.steps_per_epoch = model, optim.accumulate, steps_per_epoch
        windows = -(-steps_per_epoch // optim.accumulate)
        self.optimizer, self.scheduler = make_optimizer(model, optim, windows * epochs)

    def window_size(self, step: int) -> int:
        start = step - step % self.accumulate
        return min(self.accumulate, self.steps_per_epoch - start)

    def ends_window(self, step: int) -> bool:
        return (step + 1) % self.accumulate == 0 or step + 1 == self.steps_per_epoch

    def backward(self, task: Task, batch: Batch, step: int) -> float:
        """Forward and backward of micro-batch ``step`` (train mode); returns its loss."""
        self.model.train()
        loss = task.loss(self.model, batch)
        (loss / self.window_size(step)).backward()
        return loss.item()

    def step_if_window_ends(self, step: int) -> None:
        if self.ends_window(step):
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def train(self, task: Task, batch: Batch, step: int) -> float:
        loss = self.backward(task, batch, step)
        self.step_if_window_ends(step)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler and the gradients accumulated so far (a window may be open)."""
        grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "grads": grads}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.load_grads(state.get("grads", {}))

    def load_grads(self, grads: dict[str, torch.Tensor]) -> None:
        """An open accumulation window's gradients, as ``state_dict`` saved them."""
        for name, param in self.model.named_parameters():
            grad = grads.get(name)
            param.grad = None if grad is None else grad.to(param.device)


def epoch_batches(
    task: Task, model: SkippableBackbone, batch_size: int, *, seed: int, epoch: int, max_steps: int | None
) -> Iterator[Batch]:
    """One epoch of shuffled training batches; the order depends only on (seed, epoch)."""
    loader = task.loader("train", model, batch_size, shuffle=True, seed=seed * 1000 + epoch)
    return itertools.islice(iter(loader), max_steps)


def steps_per_epoch(task: Task, batch_size: int, max_steps: int | None) -> int:
    steps = -(-len(task.examples("train")) // batch_size)
    return min(steps, max_steps) if max_steps else steps


@torch.no_grad()
def observe(model: SkippableBackbone, task: Task, batch: Batch, skipped: frozenset[str], mode: str = "eval") -> float:
    """The loss of one subnet of the supernet on one batch, without gradients, in ``mode``
    ("train": dropout on, as the reference scores inside its training step)."""
    model.train(mode == "train")
    model.set_skipped(skipped)
    return task.loss(model, batch).item()


@torch.no_grad()
def evaluate(model: SkippableBackbone, task: Task, split: str, batch_size: int) -> dict[str, float]:
    model.eval()
    return task.evaluate(model, iter(task.loader(split, model, batch_size)))
