"""Samplers by name, and the subset a finished study chose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from das_tune.errors import UserError
from das_tune.samplers.das import DASSampler
from das_tune.spaces import SkipSpace

SAMPLER_ATTR = "das_tune:sampler"  # study system attr: {"name": ..., **options}, written at creation

SamplerFactory = Callable[..., BaseSampler]

SAMPLERS: dict[str, SamplerFactory] = {
    "das": lambda space, seed, **options: DASSampler(space, seed=seed, **options),
    "random": lambda space, seed, **options: optuna.samplers.RandomSampler(seed=seed, **options),
    "tpe": lambda space, seed, **options: optuna.samplers.TPESampler(seed=seed, **options),
    "cmaes": lambda space, seed, **options: optuna.samplers.CmaEsSampler(seed=seed, **options),
    "qmc": lambda space, seed, **options: optuna.samplers.QMCSampler(seed=seed, **options),
    "gp": lambda space, seed, **options: optuna.samplers.GPSampler(seed=seed, **options),
}


def make_sampler(name: str, space: SkipSpace, seed: int | None = None, **options: Any) -> BaseSampler:
    """A sampler by registry name ("das", "random", "tpe", "cmaes", "qmc", "gp")."""
    factory = SAMPLERS.get(name)
    if factory is None:
        raise UserError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    try:
        return factory(space, seed, **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler {name!r}: bad options {options}: {err}") from None


def chosen_skip(study: optuna.Study, space: SkipSpace, sampler: BaseSampler | None = None) -> frozenset[str]:
    """The subset ``study`` chose, whatever sampler ran it.

    DAS: the layers with the largest gates (its policy, replayed from the trials). Any other sampler:
    the subset of the best trial. The sampler is ``sampler``, else the study's own, else the one
    das-tune recorded in the study's system attributes when it created the study.
    """
    sampler = sampler or recorded_sampler(study, space) or study.sampler
    if isinstance(sampler, DASSampler):
        return sampler.chosen(study)
    best = _best_trial_with_subset(study, space)
    if best is None:
        raise UserError(f"study {study.study_name!r} has no completed trial with a skip subset of space {space.label}")
    return space.decode(best.params)


def recorded_sampler(study: optuna.Study, space: SkipSpace) -> BaseSampler | None:
    if isinstance(study.sampler, DASSampler):
        return study.sampler
    recorded = study._storage.get_study_system_attrs(study._study_id).get(SAMPLER_ATTR)
    if not recorded or recorded.get("name") != "das":
        return None
    options = {k: v for k, v in recorded.items() if k != "name"}
    return DASSampler(space, **options)


def _best_trial_with_subset(study: optuna.Study, space: SkipSpace) -> optuna.trial.FrozenTrial | None:
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if space.subset_of(t) is not None
    ]
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


__all__ = ["DASSampler", "SAMPLERS", "SAMPLER_ATTR", "chosen_skip", "make_sampler"]
