"""A range of num_skip: the encoding for every registered sampler, DAS's rounds and ladder, a
two-objective DAS study through Optuna's ask/tell on SQLite with resume, and bad ranges."""

import itertools

import optuna
import pytest
from optuna.trial import TrialState

from das_tune import DASSampler, SkipSpace, make_sampler
from das_tune.errors import UserError
from das_tune.samplers import SAMPLERS, SINGLE_OBJECTIVE, skip_policy
from das_tune.spec.spaces import SIZE_PARAM, load_space

CANDIDATES = [f"L{i}" for i in range(6)]


def two_objectives(space):
    """A toy observation: skipping early layers hurts, every skipped layer saves cost."""
    def objective(trial):
        skipped = space.suggest(trial)
        return sum(1.0 / (1 + CANDIDATES.index(c)) for c in skipped), -float(len(skipped))
    return objective


@pytest.mark.parametrize("num_skip, sizes", [
    ("1-3", (1, 2, 3)), ("2,4", (2, 4)), ({"min": 0, "max": 2}, (0, 1, 2)), ([1, 2, 4], (1, 2, 4)), ("3-3", (3,)), ("2", (2,)),
])
def test_num_skip_forms(num_skip, sizes):
    space = SkipSpace(candidates=CANDIDATES, num_skip=num_skip)
    assert space.sizes == sizes
    assert space.is_range == (len(sizes) > 1)
    assert (SIZE_PARAM in space.distributions) == space.is_range


def test_a_single_number_keeps_the_encoding_exactly():
    space = SkipSpace(candidates=CANDIDATES, num_skip=2)
    assert list(space.distributions) == [f"skip.{c}" for c in CANDIDATES]
    assert space.decode(space.encode({"L1", "L4"})) == {"L1", "L4"}
    assert space.num_subsets == 15 and space.recorded_num_skip == 2


@pytest.mark.parametrize("num_skip", ["1-3", "2,4", "0-2", [1, 2, 4]])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_registered_sampler_yields_valid_subsets_of_every_size(name, num_skip):
    space = SkipSpace(candidates=CANDIDATES, num_skip=num_skip)
    n_trials = 6 if name == "gp" else 18
    if name in SINGLE_OBJECTIVE:  # it cannot run two objectives (das-tune refuses it with a range); one still works
        study = optuna.create_study(sampler=make_sampler(name, space, seed=0))
        study.optimize(lambda t: two_objectives(space)(t)[0], n_trials=n_trials)
    else:
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(name, space, seed=0))
        study.optimize(two_objectives(space), n_trials=n_trials)
    seen = set()
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        skipped = frozenset(trial.user_attrs["skipped"])
        assert len(skipped) == trial.params[SIZE_PARAM] and len(skipped) in space.sizes
        assert skipped <= set(CANDIDATES) and space.subset_of(trial) == skipped
        seen.add(len(skipped))
    assert len(seen) >= 2  # the size is explored, not fixed
    picks = skip_policy(study.sampler, space).picks(study)
    assert picks and all(len(subset) == size for size, subset in picks.items())


def test_das_rounds_are_of_one_size_with_distinct_subsets_and_its_picks_a_ladder():
    space = SkipSpace(candidates=CANDIDATES, num_skip="0-3")
    sampler = DASSampler(space, seed=0, round_size=3, standardize=True)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(two_objectives(space), n_trials=3 * 30)
    for r in range(30):
        members = study.trials[3 * r : 3 * r + 3]
        sizes = {t.params[SIZE_PARAM] for t in members}
        assert sizes == {(1, 2, 3)[r % 3]}  # size 0 (one subset: the full model) is never a round
        assert len({frozenset(t.user_attrs["skipped"]) for t in members}) == 3
    picks = sampler.picks(study)
    assert [len(picks[m]) for m in space.sizes] == [0, 1, 2, 3]
    assert all(picks[a] <= picks[b] for a, b in itertools.pairwise(space.sizes))  # nested: one gate per layer
    assert picks[3] == {"L3", "L4", "L5"}  # the toy's most redundant layers: one set of gates learnt them
    assert sampler.chosen(study) == picks[3]


def test_two_objective_das_study_with_ask_tell_on_sqlite_resumes_like_an_uninterrupted_one(tmp_path):
    space = SkipSpace(candidates=CANDIDATES, num_skip="1-3")
    objective = two_objectives(space)

    def ask_tell(study, n):
        for _ in range(n):
            trial = study.ask()
            study.tell(trial, objective(trial))

    url = f"sqlite:///{tmp_path / 'front.db'}"
    first = optuna.create_study(study_name="front", storage=url, directions=["minimize", "minimize"], sampler=DASSampler(space, seed=4))
    ask_tell(first, 10)  # stops inside a round
    resumed = optuna.load_study(study_name="front", storage=url, sampler=DASSampler(space, seed=4))
    ask_tell(resumed, 14)
    whole = optuna.create_study(directions=["minimize", "minimize"], sampler=DASSampler(space, seed=4))
    ask_tell(whole, 24)
    stored = optuna.load_study(study_name="front", storage=url)
    assert [t.params for t in stored.trials] == [t.params for t in whole.trials]
    assert [t.values for t in stored.trials] == [t.values for t in whole.trials]
    assert len(stored.directions) == 2 and stored.best_trials  # Optuna's Pareto front of the observations
    assert DASSampler(space, seed=4).picks(stored) == DASSampler(space, seed=4).picks(whole)


@pytest.mark.parametrize("num_skip, message", [
    ("3-1", "min is larger than max"),
    ("1-6", "fewer than the 6 candidates), got [6]"),
    ("-1-2", "got [-1]"),
    ({"min": 2}, "expected a range as {min: INT, max: INT}"),
    ([2, 2], "sizes repeated"),
    ("two", "expected a number, a range like 1-3"),
])
def test_bad_ranges_are_one_clear_line(num_skip, message):
    with pytest.raises(UserError, match=None) as caught:
        load_space("minilm_vqa", num_skip)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("flag, message", [("3-1", "min is larger than max"), ("0-6", "got [6]"), ("-2-1", "got [-2, -1]")])
def test_bad_num_skip_on_the_command_line_exits_2_and_writes_nothing(cli, tmp_path, flag, message):
    result = cli("run", "--space", "minilm_vqa", "--num-skip", flag, "--tiny")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_training_draws_spread_uniformly_over_the_sizes():
    """The supernet's steps: a size uniform over the range, then a subset of it (uniform, or ∝ DAS's p)."""
    import numpy as np

    space = SkipSpace(candidates=CANDIDATES, num_skip="1-3")
    policy = skip_policy(DASSampler(space, seed=0), space)
    rng = np.random.default_rng(0)
    skewed = dict.fromkeys(CANDIDATES, 0.1) | {"L5": 0.9}
    for draw in (lambda: policy.draw(None, rng), lambda: policy.draw(skewed, rng), lambda: space.random_subset(rng)):
        sizes = [len(draw()) for _ in range(3000)]
        assert set(sizes) == {1, 2, 3}
        assert max(abs(sizes.count(m) / 3000 - 1 / 3) for m in (1, 2, 3)) < 0.04
    assert sum("L5" in policy.draw(skewed, rng) for _ in range(1000)) > 600


def test_a_single_number_draws_as_before():
    """Same generator, same subsets as the draws of a space without ranges (studies resume unchanged)."""
    import numpy as np

    space = SkipSpace(candidates=CANDIDATES, num_skip=2)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [space.random_subset(a) for _ in range(20)] == [
        frozenset(b.choice(space.candidates, size=2, replace=False).tolist()) for _ in range(20)
    ]


def test_the_choice_of_a_range_is_its_largest_observed_size():
    space = SkipSpace(candidates=CANDIDATES, num_skip="1-3")
    study = optuna.create_study(directions=["minimize", "minimize"])
    for subset, loss in (({"L1"}, 0.5), ({"L2"}, 0.4), ({"L1", "L2"}, 0.9)):  # size 3 never observed
        study.add_trial(optuna.trial.create_trial(params=space.encode(subset), distributions=space.distributions, values=[loss, 0.0]))
    policy = skip_policy(study.sampler, space)
    assert policy.picks(study) == {1: {"L2"}, 2: {"L1", "L2"}}
    assert policy.chosen(study) == {"L1", "L2"}
    assert policy.describe(study) == "1: ['L2']; 2: ['L1', 'L2']"
