"""The one-shot (weight-sharing supernet) search, the paper's procedure.

Warm-up epochs train uniformly random subnets. Search epochs train, at every step, a subnet drawn
from the sampler's current policy (DAS: ∝ its skip probabilities; any other sampler: uniform), and
every ``observe_every`` steps run a redundancy observation: one round of ``round_size`` Optuna trials,
each a subset proposed by the sampler, scored without gradients on one observation batch and told.

Resume is exact: a search killed at any point and run again ends with the same trials (numbers,
subsets, values) and the same choice as one never interrupted. The supernet's trainable state, the
optimizer, the random generators, the position in the data and the policy are checkpointed
(atomically) after every observation round and at every epoch's end; a resumed search replays the
training steps since then, which are deterministic, and round ``r`` is always trials
``r·K … r·K+K-1``: trials of the round that were told before the stop are kept as they are, one
left RUNNING by the dead process is scored and told now (its subset is the one it had, or the one
its seeded draw gives again), and the missing ones are asked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from das_tune import atomic, training
from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import RunFailure, UserError
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
        total = self.steps_per_epoch * (search.warmup_epochs + search.search_epochs)
        self.optimizer, self.scheduler = training.make_optimizer(model, search, total)
        self.rng = np.random.default_rng(seed)
        self.position = Position()
        self.observations: Iterator[Batch] = task.observation_batches(model, search.batch_size, search.observation_batches)
        self.probabilities = self._policy()
        self._first_round = True

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
        if not self.position.finished:  # a finished search's checkpoint is left as it is
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
            loss = training.train_step(self.model, self.task, batch, self.optimizer, self.scheduler)
            if not math.isfinite(loss):
                raise RunFailure(
                    f"the search diverged: training loss {loss} at epoch {epoch + 1}, step {step + 1} "
                    f"(search.lr = {self.search.lr:g}); lower search.lr and run again with --fresh"
                )
            pos.step_in_epoch, pos.global_step = step + 1, pos.global_step + 1
            if not warmup and pos.global_step % self.search.observe_every == 0:
                self._observation_round()
                self._save()
            self.reporter.advance(loss, None if warmup else self.probabilities)
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        self._save()
        if pos.epoch == self.search.warmup_epochs:
            self._save(WARMUP_CHECKPOINT)

    def _observation_round(self) -> None:
        """Score round ``r``'s trials ``r·K … r·K+K-1`` and tell them: kept if told before a stop,
        finished if a dead process left one RUNNING, asked if missing."""
        batch = next(self.observations)
        k, r = self.search.round_size, self.position.rounds
        earlier = {}
        if self._first_round:  # only a new process can find trials of its round already there
            earlier = {t.number: t for t in self.study.get_trials(deepcopy=False) if r * k <= t.number < (r + 1) * k}
            self._first_round = False
        for number in range(r * k, (r + 1) * k):
            old = earlier.get(number)
            if old is not None and old.state.is_finished():
                continue
            trial = optuna.Trial(self.study, old._trial_id) if old is not None else self.study.ask()
            if trial.number != number:
                raise UserError(
                    f"study {self.study.study_name!r} has trials this search did not ask (trial {trial.number} where "
                    f"round {r} expects {number}); pass --fresh, or --set study_name=NEW"
                )
            skipped = self.space.suggest(trial)
            for key, value in {**self.trial_attrs(skipped), "round": r, "phase": "search"}.items():
                trial.set_user_attr(key, value)
            value = training.observe(self.model, self.task, batch, skipped)
            if not math.isfinite(value):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise RunFailure(
                    f"the search diverged: observed loss {value} in round {r} (search.lr = {self.search.lr:g}); "
                    "lower search.lr and run again with --fresh"
                )
            self.study.tell(trial, value)
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
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "probabilities": self.probabilities,  # the policy the next steps train with (not the study's:
            "study_name": self.study.study_name,  # it may already hold the next round, told before a stop)
        }
        atomic.write_with(self.run_dir / filename, lambda tmp: torch.save(state, tmp))

    def _restore(self) -> None:
        """Continue this study's own search, else start from a shared warm-up checkpoint if given."""
        own = self.run_dir / CHECKPOINT
        state = load_checkpoint(own) if own.exists() else None
        ours = state is not None and state["study_name"] == self.study.study_name
        if not ours:
            if self.warmup_checkpoint is None:
                return
            state = load_checkpoint(self.warmup_checkpoint)
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.position = Position(**state["position"])
        self.probabilities = (ours and state.get("probabilities")) or self._policy()  # older checkpoints: none
        for _ in range(self.position.rounds % self.search.observation_batches):
            next(self.observations)
        if not self.position.finished:
            self.reporter.log(f"resuming the search at epoch {self.position.epoch + 1}, step {self.position.step_in_epoch}")

    @property
    def finished(self) -> bool:
        return self.position.finished


_CHECKPOINT_KEYS = {"position", "model", "optimizer", "scheduler", "rng", "torch_rng", "study_name"}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A search checkpoint, or a one-line error naming the file if it is truncated or not one."""
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as err:
        raise UserError(f"{path}: not a readable search checkpoint ({type(err).__name__}); remove it or pass --fresh") from None
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= set(state):
        raise UserError(f"{path}: not a das-tune search checkpoint; remove it or pass --fresh")
    return state
