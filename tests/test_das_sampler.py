import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from study_worker import SPACE, objective

from das_tune import DASSampler, SkipSpace, chosen_skip, make_sampler
from das_tune.samplers import SAMPLERS

WORKER = Path(__file__).with_name("study_worker.py")




def add_round(study, space, subsets, values):
    for subset, value in zip(subsets, values):
        study.add_trial(
            optuna.trial.create_trial(params=space.encode(subset), distributions=space.distributions, value=value)
        )


def test_update_rule_matches_a_hand_computed_round():
    space = SkipSpace(candidates=["a", "b", "c", "d"], num_skip=2)
    sampler = DASSampler(space, seed=0, round_size=3, lr=1.0)
    study = optuna.create_study(sampler=sampler)
    add_round(study, space, [{"a", "b"}, {"b", "c"}, {"c", "d"}], [0.0, 1.0, 2.0])

    rewards = [1.0, math.exp(-1.0), math.exp(-2.0)]
    baseline = sum(rewards) / 3
    step = 0.25  # p (1 - p) at gate 0
    expected = {
        "a": (rewards[0] - baseline) * step,
        "b": (rewards[0] - baseline + rewards[1] - baseline) * step,
        "c": (rewards[1] - baseline + rewards[2] - baseline) * step,
        "d": (rewards[2] - baseline) * step,
    }
    np.testing.assert_allclose(sampler.gates(study), [expected[n] for n in "abcd"])
    probabilities = sampler.probabilities(study)
    assert probabilities["a"] > probabilities["b"] > 0.5 > probabilities["d"] > probabilities["c"]
    assert sampler.chosen(study) == {"a", "b"} == chosen_skip(study, space)


def test_second_round_uses_probabilities_before_its_own_update():
    space = SkipSpace(candidates=["a", "b", "c"], num_skip=1)
    sampler = DASSampler(space, round_size=2, lr=2.0)
    study = optuna.create_study(sampler=sampler)
    add_round(study, space, [{"a"}, {"b"}], [0.0, 1.0])
    g1 = sampler.gates(study).copy()
    add_round(study, space, [{"a"}, {"c"}], [0.5, 0.0])
    p = 1 / (1 + np.exp(-g1))
    r = np.array([math.exp(-0.5), 1.0])
    expected = g1.copy()
    expected[0] += 2.0 * (r[0] - r.mean()) * p[0] * (1 - p[0])
    expected[2] += 2.0 * (r[1] - r.mean()) * p[2] * (1 - p[2])
    np.testing.assert_allclose(sampler.gates(study), expected)


def test_subsets_within_a_round_are_distinct():
    space = SkipSpace(candidates=["a", "b", "c"], num_skip=2)  # only 3 subsets
    sampler = DASSampler(space, seed=1, round_size=3)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: len(space.suggest(t)), n_trials=30)
    for start in range(0, 30, 3):
        subsets = {frozenset(t.user_attrs["skipped"]) for t in study.trials[start : start + 3]}
        assert len(subsets) == 3


def test_draws_follow_the_gates():
    study = optuna.create_study(sampler=DASSampler(SPACE, seed=0))
    study.optimize(objective, n_trials=240)
    late = [frozenset(t.user_attrs["skipped"]) for t in study.trials[-30:]]
    assert sum(s == {"En0", "En1"} for s in late) > sum(s == {"En4", "En5"} for s in late)
    assert chosen_skip(study, SPACE) == {"En0", "En1"}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_registered_sampler_yields_valid_subsets(name):
    space = SkipSpace(candidates=[f"L{i}" for i in range(5)], num_skip=2)
    study = optuna.create_study(sampler=make_sampler(name, space, seed=0))
    study.optimize(lambda t: float(len(space.suggest(t))), n_trials=12 if name != "gp" else 6)
    for trial in study.trials:
        skipped = trial.user_attrs["skipped"]
        assert len(skipped) == 2 and set(skipped) <= set(space.candidates)
        assert space.subset_of(trial) == frozenset(skipped)
    assert len(chosen_skip(study, space)) == 2


def test_asynchronous_rounds_apply_in_round_order_when_they_settle():
    sampler = DASSampler(SPACE, seed=0, round_size=2)
    study = optuna.create_study(sampler=sampler)
    trials = [study.ask() for _ in range(4)]
    subsets = [SPACE.suggest(t) for t in trials]
    values = [objective_value(s) for s in subsets]
    for i in (3, 2):  # round 1 finishes first
        study.tell(trials[i], values[i])
    only_round_1 = optuna.create_study(sampler=DASSampler(SPACE, round_size=2))
    add_round(only_round_1, SPACE, subsets[2:], values[2:])
    # round 0 is still running: round 1 is applied on its own for now...
    np.testing.assert_allclose(sampler.gates(study), only_round_1.sampler.gates(only_round_1))
    for i in (1, 0):
        study.tell(trials[i], values[i])
    # ...and once round 0 settles, the replay applies both in round order.
    reference = optuna.create_study(sampler=DASSampler(SPACE, seed=0, round_size=2))
    add_round(reference, SPACE, subsets, values)
    np.testing.assert_allclose(sampler.gates(study), reference.sampler.gates(reference))


def test_pruned_and_failed_trials_are_not_observations():
    sampler = DASSampler(SPACE, seed=0, round_size=3)
    study = optuna.create_study(sampler=sampler)
    trials = [study.ask() for _ in range(3)]
    for t in trials:
        SPACE.suggest(t)
    study.tell(trials[0], 0.1)
    study.tell(trials[1], 5.0)
    study.tell(trials[2], state=TrialState.PRUNED)
    two = optuna.create_study(sampler=DASSampler(SPACE, round_size=2))
    add_round(two, SPACE, [SPACE.subset_of(study.trials[0]), SPACE.subset_of(study.trials[1])], [0.1, 5.0])
    np.testing.assert_allclose(sampler.gates(study), two.sampler.gates(two))


def objective_value(subset):
    return 0.3 * sum(int(name[2:]) for name in subset)


def run_worker(storage, name, n_trials, seed=7):
    return subprocess.Popen([sys.executable, str(WORKER), storage, name, str(n_trials), str(seed)], cwd=WORKER.parent)


def test_resuming_from_sqlite_in_a_new_process_repeats_an_uninterrupted_run(tmp_path):
    whole, split = f"sqlite:///{tmp_path / 'whole.db'}", f"sqlite:///{tmp_path / 'split.db'}"
    assert run_worker(whole, "s", 30).wait() == 0
    assert run_worker(split, "s", 13).wait() == 0  # interrupted in the middle of a round
    assert run_worker(split, "s", 17).wait() == 0  # a new process resumes
    a, b = (optuna.load_study(study_name="s", storage=url) for url in (whole, split))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    sampler = DASSampler(SPACE, seed=7)
    np.testing.assert_allclose(sampler.gates(a), sampler.gates(b))
    assert chosen_skip(a, SPACE, sampler) == chosen_skip(b, SPACE, sampler)


def test_two_processes_share_one_sqlite_storage_without_losing_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="s", storage=url)  # schema first, then the workers
    workers = [run_worker(url, "s", 15, seed=7) for _ in range(2)]
    assert [w.wait() for w in workers] == [0, 0]
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert sorted(t.number for t in trials) == list(range(30))
    assert all(t.state == TrialState.COMPLETE and len(t.user_attrs["skipped"]) == 2 for t in trials)


def test_standardized_advantages_divide_by_the_rounds_reward_spread():
    space = SkipSpace(candidates=["a", "b", "c"], num_skip=1)
    sampler = DASSampler(space, round_size=3, standardize=True)
    study = optuna.create_study(sampler=sampler)
    add_round(study, space, [{"a"}, {"b"}, {"c"}], [1.0, 1.01, 1.02])
    rewards = np.exp(-np.array([1.0, 1.01, 1.02]))
    expected = (rewards - rewards.mean()) / rewards.std() * 0.25
    np.testing.assert_allclose(sampler.gates(study), expected)
    assert sampler.gates(study)[0] > 0.25  # a 0.01 loss gap still moves the gate by a full step


def test_initial_gates_are_where_the_rounds_start_from():
    space = SkipSpace(candidates=["a", "b", "c"], num_skip=1)
    sampler = DASSampler(space, round_size=2, initial_gates={"a": -1.0, "c": 2.0})  # b left out: 0
    study = optuna.create_study(sampler=sampler)
    np.testing.assert_allclose(sampler.gates(study), [-1.0, 0.0, 2.0])
    assert sampler.chosen(study) == {"c"}
    add_round(study, space, [{"a"}, {"b"}], [0.0, 1.0])
    r = np.exp(-np.array([0.0, 1.0]))
    p = 1 / (1 + np.exp(-np.array([-1.0, 0.0])))  # the update's p(1 - p) is taken at the prior, not at 0
    expected = [-1.0 + (r[0] - r.mean()) * p[0] * (1 - p[0]), (r[1] - r.mean()) * p[1] * (1 - p[1]), 2.0]
    np.testing.assert_allclose(sampler.gates(study), expected)
    np.testing.assert_allclose(sampler.gate_history(study), [[-1.0, 0.0, 2.0], expected])


def test_initial_gates_bias_the_first_draws():
    space = SkipSpace(candidates=["a", "b", "c", "d"], num_skip=1)
    study = optuna.create_study(sampler=DASSampler(space, seed=0, round_size=1, initial_gates={"d": 3.0}))
    study.optimize(lambda t: 0.0 if space.suggest(t) else 1.0, n_trials=200)  # rounds of one: the gates never move
    drawn = [frozenset(t.user_attrs["skipped"]) for t in study.trials]
    assert sum(s == {"d"} for s in drawn) > 65  # weight 0.95 against three of 0.5: 39 % of draws (78), not 25 % (50)


def test_initial_gates_name_candidates_with_finite_values():
    space = SkipSpace(candidates=["a", "b"], num_skip=1)
    with pytest.raises(ValueError, match=r"\['z'\] are not candidates"):
        DASSampler(space, initial_gates={"a": 1.0, "z": 1.0})
    with pytest.raises(ValueError, match="finite"):
        DASSampler(space, initial_gates={"a": math.nan})


def test_prior_gates_are_z_scores_times_the_scale():
    from das_tune.samplers.das import prior_gates

    gates = prior_gates({"a": 1.0, "b": 2.0, "c": 3.0}, scale=0.5)
    z = np.array([-1.0, 0.0, 1.0]) / np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(list(gates.values()), 0.5 * z)
    assert list(gates) == ["a", "b", "c"]
    assert prior_gates({"a": 4.0, "b": 4.0}, scale=1.0) == {"a": 0.0, "b": 0.0}  # no spread: no prior
