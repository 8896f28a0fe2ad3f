"""Optuna's own reusable sampler contract tests, run against DASSampler."""

import pickle

import optuna
import pytest
from optuna.testing.pytest_samplers import BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase

from das_tune import DASSampler, SkipSpace

SPACE = SkipSpace(candidates=["En0", "En1", "En2", "En3"], num_skip=2)


class TestDASSamplerContract(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: DASSampler(SPACE, seed=0)


def test_pickle_round_trip_keeps_drawing_the_same_subsets():
    sampler = DASSampler(SPACE, seed=3)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: len(SPACE.suggest(t)), n_trials=6)
    clone = pickle.loads(pickle.dumps(sampler))
    twin = optuna.create_study(sampler=clone)
    for trial in study.trials:
        twin.add_trial(trial)
    a, b = study.ask(), twin.ask()
    assert SPACE.suggest(a) == SPACE.suggest(b)


def test_multi_objective_study_is_refused():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=DASSampler(SPACE))
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (len(SPACE.suggest(t)), 0.0), n_trials=1)
