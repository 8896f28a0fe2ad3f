"""Samplers by name, and the skip policy of a study (how the loops see its sampler)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from das_tune.errors import UserError
from das_tune.samplers.das import DASSampler
from das_tune.samplers.policy import SkipPolicy, skip_policy
from das_tune.spec.spaces import SkipSpace

SAMPLER_ATTR = "das_tune:sampler"  # study system attr: {"name": ..., **options}, written at creation

SamplerFactory = Callable[..., BaseSampler]

SAMPLERS: dict[str, SamplerFactory] = {
    "das": lambda space, seed, **options: DASSampler(space, seed=seed, **options),
    "random": lambda space, seed, **options: optuna.samplers.RandomSampler(seed=seed, **options),
    "tpe": lambda space, seed, **options: optuna.samplers.TPESampler(seed=seed, **options),
    "cmaes": lambda space, seed, **options: optuna.samplers.CmaEsSampler(seed=seed, **options),
    "qmc": lambda space, seed, **options: optuna.samplers.QMCSampler(seed=seed, **options),
    "gp": lambda space, seed, **options: optuna.samplers.GPSampler(seed=seed, **options),
    "nsga2": lambda space, seed, **options: optuna.samplers.NSGAIISampler(seed=seed, **options),
}

# Samplers that cannot run a two-objective study (a range of num_skip: observed loss, additional
# GMACs). On such a study "tpe" is Optuna's multi-objective TPE (MOTPE).
SINGLE_OBJECTIVE = frozenset({"cmaes"})


# Samplers whose trials come in rounds: they take the study's round size (search.round_size, its only
# home) as their ``round_size`` option.
ROUND_BASED = frozenset({"das"})


def sampler_record(name: str, seed: int | None, options: dict[str, Any], round_size: int) -> dict[str, Any]:
    """How a study samples, as recorded in its system attributes (and compared on resume)."""
    record = {"name": name, "seed": seed, **options}
    if name in ROUND_BASED:
        record["round_size"] = round_size
    return record


def sampler_from_record(record: dict[str, Any], space: SkipSpace) -> BaseSampler:
    options = {k: v for k, v in record.items() if k not in ("name", "seed")}
    return make_sampler(record["name"], space, seed=record.get("seed"), **options)


def make_sampler(name: str, space: SkipSpace, seed: int | None = None, **options: Any) -> BaseSampler:
    """A sampler by registry name ("das", "random", "tpe", "cmaes", "qmc", "gp", "nsga2")."""
    factory = SAMPLERS.get(name)
    if factory is None:
        raise UserError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    try:
        return factory(space, seed, **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler {name!r}: bad options {options}: {err}") from None


def study_policy(
    study: optuna.Study, space: SkipSpace, round_size: int = 1, sampler: BaseSampler | None = None
) -> SkipPolicy:
    """The skip policy of ``study``, whatever sampler ran it.

    The sampler is ``sampler``, else the study's own if it has a policy, else the one das-tune recorded
    in the study's system attributes when it created the study (a study loaded for the dashboard
    carries a default sampler).
    """
    if sampler is None and getattr(study.sampler, "skip_policy", None) is None:
        sampler = recorded_sampler(study, space)
    return skip_policy(sampler or study.sampler, space, round_size)


def chosen_skip(study: optuna.Study, space: SkipSpace, sampler: BaseSampler | None = None) -> frozenset[str]:
    """The subset ``study`` chose (DAS: the top gates; any other sampler: the best trial's subset)."""
    return study_policy(study, space, sampler=sampler).chosen(study)


def recorded_sampler(study: optuna.Study, space: SkipSpace) -> BaseSampler | None:
    """The sampler das-tune recorded when it created ``study``, rebuilt; None if there is none."""
    recorded = study._storage.get_study_system_attrs(study._study_id).get(SAMPLER_ATTR)
    if not recorded or recorded.get("name") not in SAMPLERS:
        return None
    return sampler_from_record(recorded, space)


__all__ = [
    "DASSampler", "SAMPLERS", "SAMPLER_ATTR", "SINGLE_OBJECTIVE", "SkipPolicy", "chosen_skip", "make_sampler", "sampler_from_record",
    "sampler_record", "skip_policy", "study_policy",
]
