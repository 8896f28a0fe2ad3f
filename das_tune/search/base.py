"""What every search executor gets: one :class:`SearchRun`, built once by the runner (or the bench)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from das_tune.backbones.flops import CostModel
from das_tune.progress import Reporter
from das_tune.samplers import SkipPolicy
from das_tune.spec.study import StudySpec
from das_tune.training.components import Components

STEPS_ATTR = "steps_trained"  # a trial's user attr: the steps it trained before it ended (all, or until a scheduler stopped it)


@dataclass
class SearchRun:
    """A study's search, ready to run: the spec and its components, the opened study, the
    sampler's skip policy (the only view of the sampler an executor has) and the cost model."""

    spec: StudySpec
    parts: Components
    study: optuna.Study
    policy: SkipPolicy
    costs: CostModel
    reporter: Reporter
    warmup_checkpoint: Path | None = None  # a warm-up shared by several searches (the bench's)

    def objectives(self, loss: float, skipped: frozenset[str]) -> float | list[float]:
        """What a trial of ``skipped`` is told: its observed loss, and with a range of num_skip (a
        two-objective study) its additional GMACs too."""
        if not self.parts.space.is_range:
            return loss
        return [loss, self.costs.cost(skipped).additional_gmacs]

    def record(self, trial: optuna.Trial, skipped: frozenset[str], phase: str) -> None:
        """The user attributes every observation trial carries (the dashboard shows them)."""
        attrs = {**self.costs.cost(skipped).trial_attrs(), "round": self.policy.round_of(trial.number), "phase": phase}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


Executor = Callable[[SearchRun], None]
