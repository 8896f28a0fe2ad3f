"""The weight-sharing supernet in training, and the warm-up every executor and the bench share.

One optimizer and learning-rate schedule span the warm-up and the search epochs; the trainable state,
the optimizer, the position in the data and the random generators are checkpointed together, so an
interrupted warm-up or search resumes exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from das_tune.artifacts.run_folder import (
    CHECKPOINT,
    CHECKPOINT_KEYS,
    WARMUP_CHECKPOINT,
    checkpoint_workers,
    checkpoint_workers_message,
    load_checkpoint,
    write_checkpoint,
)
from das_tune.errors import RunFailure, UserError
from das_tune.progress import Reporter
from das_tune.spec.study import StudySpec
from das_tune.tasks.base import Batch
from das_tune.training import loop
from das_tune.training.components import Components


@dataclass
class Position:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    rounds: int = 0
    finished: bool = False


class Supernet:
    """The supernet of ``parts`` training under ``spec.search``, checkpointed in ``spec.run_dir``."""

    def __init__(self, spec: StudySpec, parts: Components) -> None:
        self.search, self.model, self.task = spec.search, parts.model, parts.task
        self.seed, self.run_dir, self.name = spec.seed, spec.run_dir, spec.resolved_study_name
        self.workers = 1  # the processes that train it together (data-parallel ranks)
        self.steps_per_epoch = loop.steps_per_epoch(self.task, self.search.batch_size, self.search.max_steps_per_epoch)
        epochs = self.search.warmup_epochs + self.search.search_epochs
        self.trainer = loop.Trainer(self.model, self.search, self.steps_per_epoch, epochs)
        self.rng = np.random.default_rng(self.seed)
        self.position = Position()
        self.extra_state: Callable[[], dict[str, Any]] = dict  # what an executor checkpoints with the supernet
        self.restored_extra: dict[str, Any] = {}

    @property
    def warmed_up(self) -> bool:
        return self.position.epoch >= self.search.warmup_epochs

    def train_epoch(self, epoch: int, draw: Callable[[], frozenset[str]], after_step: Callable[[float], None]) -> None:
        """One epoch (the rest of it, when resuming): each micro-batch trains the subnet ``draw()`` gives;
        the optimizer steps once per window of ``accumulate`` micro-batches, then ``after_step`` runs."""
        pos = self.position
        batches = loop.epoch_batches(
            self.task, self.model, self.search.batch_size, seed=self.seed, epoch=epoch, max_steps=self.search.max_steps_per_epoch
        )
        for step, batch in enumerate(batches):
            if step < pos.step_in_epoch:  # resuming: these batches were trained before the stop
                continue
            self.model.set_skipped(draw())
            loss = self.train_step(batch, step)
            if not math.isfinite(loss):
                raise RunFailure(
                    f"the search diverged: training loss {loss} at epoch {epoch + 1}, step {step + 1} "
                    f"(search.lr = {self.search.lr:g}); lower search.lr and run again with --fresh"
                )
            pos.step_in_epoch, pos.global_step = step + 1, pos.global_step + 1
            after_step(loss)
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        self.save()
        if pos.epoch == self.search.warmup_epochs:
            self.save(WARMUP_CHECKPOINT)

    def train_step(self, batch: Batch, step: int) -> float:
        """Micro-batch ``step`` of the epoch on the current subnet (data-parallel ranks split it)."""
        return self.trainer.train(self.task, batch, step)

    # -- checkpoint -------------------------------------------------------------------------------
    def save(self, filename: str = CHECKPOINT) -> None:
        write_checkpoint(self.run_dir / filename, self.state())

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds: the training state, the position, the generators, the executor's extra."""
        return {
            "position": asdict(self.position),
            "model": self.model.trainable_state_dict(),
            "trainer": self.trainer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": loop.cuda_rng_state(),
            "study_name": self.name,
            **self.extra_state(),
        }

    def restore(self, fallback: Path | None = None) -> bool:
        """Continue this study's own checkpoint, else start from ``fallback`` (a shared warm-up) if given.
        Returns whether the own checkpoint was restored."""
        own = self.run_dir / CHECKPOINT
        state = load_checkpoint(own) if own.exists() else None
        restored_own = state is not None and state["study_name"] == self.name
        if not restored_own:
            if fallback is None:
                return False
            state = load_checkpoint(fallback)
        self.restored_extra = {k: v for k, v in state.items() if k not in CHECKPOINT_KEYS} if restored_own else {}
        self.model.load_state_dict(state["model"], strict=False)
        self.trainer.load_state_dict(state["trainer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        loop.set_cuda_rng_state(state.get("cuda_rng"))
        self.position = Position(**state["position"])
        written = checkpoint_workers(state)
        if restored_own and not self.position.finished and written != self.workers:  # `run` refuses it before writing
            raise UserError(checkpoint_workers_message(own, written, self.workers))
        return restored_own


def warm_up(spec: StudySpec, parts: Components, reporter: Reporter, net: Supernet | None = None) -> Path | None:
    """Train the supernet for the warm-up epochs (random subnets, ``search.warmup_draw``) and return its checkpoint,
    ``run_dir/warmup_state.pt``: done once, reused when present, resumed when interrupted. None when
    the study has no warm-up epochs. ``net``: the supernet to train (default: one in this process)."""
    epochs = spec.search.warmup_epochs
    path = spec.run_dir / WARMUP_CHECKPOINT
    if epochs == 0 or path.exists():
        return path if epochs else None
    net = net or Supernet(spec, parts)
    if net.restore() and not net.warmed_up:
        reporter.log(f"resuming the warm-up at epoch {net.position.epoch + 1}, step {net.position.step_in_epoch}")
    draw = _balanced_draw(net, parts) if spec.search.warmup_draw == "balanced" else _uniform_draw(net, parts)
    for epoch in range(net.position.epoch, epochs):
        reporter.phase(f"warm-up {epoch + 1}/{epochs + spec.search.search_epochs}", net.steps_per_epoch)
        net.train_epoch(epoch, draw, lambda loss: reporter.advance(loss))
    return path


def _uniform_draw(net: Supernet, parts: Components) -> Callable[[], frozenset[str]]:
    return lambda: parts.space.random_subset(net.rng)


def _balanced_draw(net: Supernet, parts: Components) -> Callable[[], frozenset[str]]:
    """The balanced subsets by global step: the same on every data-parallel rank and after a resume."""
    subsets, drawn = parts.space.balanced_subsets(net.seed), []

    def draw() -> frozenset[str]:
        while len(drawn) <= net.position.global_step:
            drawn.append(next(subsets))
        return drawn[net.position.global_step]

    return draw
