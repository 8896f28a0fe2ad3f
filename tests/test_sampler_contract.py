"""Optuna's own reusable sampler contract tests, run against DASSampler."""

import pickle

import optuna
import pytest
from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase, RelativeSamplerTestCase

from das_tune import DASSampler, SkipSpace

SPACE = SkipSpace(candidates=["En0", "En1", "En2", "En3"], num_skip=2)
RANGE = SkipSpace(candidates=["En0", "En1", "En2", "En3"], num_skip="1-3")


class TestDASSamplerContract(BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture(params=[SPACE, RANGE], ids=["num_skip=2", "num_skip=1-3"])
    def sampler(self, request):
        return lambda: DASSampler(request.param, seed=0)


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


def test_multi_objective_study_rewards_the_first_objective():
    """(observed loss, cost): the gates move as in a single-objective study of the loss alone."""
    loss = {"En0": 0.1, "En1": 0.2, "En2": 1.0, "En3": 2.0}
    single = optuna.create_study(sampler=DASSampler(SPACE, seed=1))
    single.optimize(lambda t: sum(loss[c] for c in SPACE.suggest(t)), n_trials=12)
    double = optuna.create_study(directions=["minimize", "minimize"], sampler=DASSampler(SPACE, seed=1))
    double.optimize(lambda t: (sum(loss[c] for c in SPACE.suggest(t)), 0.0), n_trials=12)
    assert [t.params for t in double.trials] == [t.params for t in single.trials]
    assert (double.sampler.gates(double) == single.sampler.gates(single)).all()
