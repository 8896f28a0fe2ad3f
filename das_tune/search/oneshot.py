"""The one-shot (weight-sharing supernet) search, the paper's procedure.

Warm-up epochs train uniformly random subnets. Search epochs train, on every micro-batch, a subnet
drawn from the sampler's current policy (DAS: ∝ its skip probabilities; any other sampler: uniform),
and every ``observe_every`` micro-batches (the reference's ``das_turn``) run a redundancy observation:
one round of ``round_size`` Optuna trials, each a subset proposed by the sampler, scored without
gradients on one observation batch (as ``search.observation`` declares) and told. The optimizer steps
once every ``accumulate`` micro-batches; an observation due at a window's end comes before its step,
as in the reference, where it runs inside the training forward.

The supernet's trainable state, the optimizer and the position in the data are checkpointed after
every observation round, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from das_tune import training
from das_tune.backbones.base import SkippableBackbone
from das_tune.progress import Reporter
from das_tune.samplers import chosen_skip
from das_tune.samplers.das import DASSampler, draw_subset
from das_tune.spaces import SkipSpace
from das_tune.study import SearchSpec
from das_tune.tasks.base import Batch, Task

CHECKPOINT = "search_state.pt"
WARMUP_CHECKPOINT = "warmup_state.pt"  # the supernet after the warm-up: shareable by other searches
TrialAttrs = Callable[[frozenset[str]], dict[str, Any]]


@dataclass
class Position:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    rounds: int = 0
    finished: bool = False


class OneShotSearch:
    def __init__(
        self,
        *,
        search: SearchSpec,
        space: SkipSpace,
        model: SkippableBackbone,
        task: Task,
        study: optuna.Study,
        seed: int,
        run_dir: Path,
        trial_attrs: TrialAttrs,
        reporter: Reporter,
        warmup_checkpoint: Path | None = None,
    ) -> None:
        self.search, self.space, self.model, self.task, self.study = search, space, model, task, study
        self.seed, self.run_dir, self.trial_attrs, self.reporter = seed, run_dir, trial_attrs, reporter
        self.warmup_checkpoint = warmup_checkpoint
        self.steps_per_epoch = training.steps_per_epoch(task, search.batch_size, search.max_steps_per_epoch)
        self.trainer = training.Trainer(model, search, self.steps_per_epoch, search.warmup_epochs + search.search_epochs)
        self.rng = np.random.default_rng(seed)
        self.position = Position()
        self.observations: Iterator[Batch] = task.observation_batches(
            model, search.batch_size, search.observation_batch_count, split=search.observation.split
        )
        self.probabilities = self._policy()

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        self._restore()
        epochs = self.search.warmup_epochs + self.search.search_epochs
        for epoch in range(self.position.epoch, epochs):
            warmup = epoch < self.search.warmup_epochs
            self.reporter.phase(f"{'warm-up' if warmup else 'search'} {epoch + 1}/{epochs}", self.steps_per_epoch)
            self._run_epoch(epoch, warmup)
            if not warmup:
                self.reporter.log(f"epoch {epoch + 1}: current choice {self.space.ordered(self._current_choice())}")
        self.position.finished = True
        self._save()

    def warm_up(self) -> Path:
        """Run (or finish) only the warm-up epochs; returns the shareable warm-up checkpoint."""
        self._restore()
        for epoch in range(self.position.epoch, self.search.warmup_epochs):
            self.reporter.phase(f"warm-up {epoch + 1}/{self.search.warmup_epochs}", self.steps_per_epoch)
            self._run_epoch(epoch, warmup=True)
        return self.run_dir / WARMUP_CHECKPOINT

    def _run_epoch(self, epoch: int, warmup: bool) -> None:
        pos = self.position
        batches = training.epoch_batches(
            self.task, self.model, self.search.batch_size, seed=self.seed, epoch=epoch, max_steps=self.search.max_steps_per_epoch
        )
        for step, batch in enumerate(batches):
            if step < pos.step_in_epoch:  # resuming: these batches were trained before the stop
                continue
            subset = self._uniform() if warmup else draw_subset(self.space, self.probabilities, self.rng)
            self.model.set_skipped(subset)
            loss = self.trainer.backward(self.task, batch, step)
            observe = not warmup and (pos.global_step + 1) % self.search.observe_every == 0
            if observe:
                self._observation_round()
            self.trainer.step_if_window_ends(step)
            pos.step_in_epoch, pos.global_step = step + 1, pos.global_step + 1
            if observe:
                self._save()
            self.reporter.advance(loss, None if warmup else self.probabilities)
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        self._save()
        if pos.epoch == self.search.warmup_epochs:
            self._save(WARMUP_CHECKPOINT)

    def _observation_round(self) -> None:
        """Ask trials until the sampler's round is full, score each subnet, tell."""
        batch = next(self.observations)
        while True:
            trial = self.study.ask()
            skipped = self.space.suggest(trial)
            for key, value in {**self.trial_attrs(skipped), "round": self.position.rounds, "phase": "search"}.items():
                trial.set_user_attr(key, value)
            self.study.tell(trial, training.observe(self.model, self.task, batch, skipped, self.search.observation.mode))
            if (trial.number + 1) % self.search.round_size == 0:
                break
        self.position.rounds += 1
        self.probabilities = self._policy()

    # -- policy -----------------------------------------------------------------------------------
    def _policy(self) -> dict[str, float]:
        sampler = self.study.sampler
        if isinstance(sampler, DASSampler):
            return sampler.probabilities(self.study)
        return dict.fromkeys(self.space.candidates, 1.0)

    def _uniform(self) -> frozenset[str]:
        return frozenset(self.rng.choice(self.space.candidates, size=self.space.num_skip, replace=False).tolist())

    def _current_choice(self) -> frozenset[str]:
        return chosen_skip(self.study, self.space)

    # -- checkpoint -------------------------------------------------------------------------------
    def _save(self, filename: str = CHECKPOINT) -> None:
        state = {
            "position": asdict(self.position),
            "model": self.model.trainable_state_dict(),
            "trainer": self.trainer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "study_name": self.study.study_name,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f"{filename}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir / filename)

    def _restore(self) -> None:
        """Continue this study's own search, else start from a shared warm-up checkpoint if given."""
        own = self.run_dir / CHECKPOINT
        state = torch.load(own, weights_only=False) if own.exists() else None
        if state is None or state["study_name"] != self.study.study_name:
            if self.warmup_checkpoint is None:
                return
            state = torch.load(self.warmup_checkpoint, weights_only=False)
        self.model.load_state_dict(state["model"], strict=False)
        self.trainer.load_state_dict(state["trainer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.position = Position(**state["position"])
        self.probabilities = self._policy()
        for _ in range(self.position.rounds % self.search.observation_batch_count):
            next(self.observations)
        if not self.position.finished:
            self.reporter.log(f"resuming the search at epoch {self.position.epoch + 1}, step {self.position.step_in_epoch}")

    @property
    def finished(self) -> bool:
        return self.position.finished


def search_finished(run_dir: Path, study_name: str) -> bool:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return False
    state = torch.load(path, weights_only=False)
    return state["study_name"] == study_name and state["position"]["finished"]
