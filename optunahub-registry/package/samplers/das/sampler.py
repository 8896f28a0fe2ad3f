"""DAS (Dynamic Architecture Skipping, Wu et al., NeurIPS 2023) as an Optuna sampler.

Which ``num_skip`` of a network's layers can be skipped for a task? ``SkipSpace`` writes that choice
as an ordinary Optuna search space (one ``skip.<layer>`` key in [0, 1] per candidate layer; a trial
skips the ``num_skip`` layers with the largest keys), so every sampler can explore it, and
``DASSampler`` explores it with DAS's redundancy observation:

* one gate per candidate layer, 0 at the start; p_i = sigmoid(gate_i) is "how skippable" layer i is;
* a trial skips ``num_skip`` layers drawn without replacement with probability ∝ p (as random keys:
  the top-m of U_i^(1/w_i), w ∝ p, Efraimidis & Spirakis 2006);
* trials come in rounds of ``round_size`` trials with distinct subsets; once a round is observed,
  each trial k gets a reward r_k (exp(-value) when minimising), the baseline is the round's mean
  reward, and every layer i of trial k's subset moves by ``gate_i += lr * (r_k - baseline) * p_i (1 - p_i)``.

The gates are never stored: they are replayed from the study's finished trials (rounds are
``trial.number // round_size``), so a study resumes, and several workers on one storage agree.
Only COMPLETE trials with a finite value are observations. Parameters that are not skip keys go to a
fallback sampler (independent TPE by default).

This module is the OptunaHub edition of das-tune's ``das_tune.samplers.das`` (same behaviour, no
dependency on das-tune; das-tune's tests check that both draw the same trials).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import itertools
import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState


PARAM_PREFIX = "skip."


class SkipSpace:
    """Which ``num_skip`` of ``candidates`` (layer names, in model order) a trial skips, as random keys.

    Every candidate gets a float parameter ``skip.<layer>`` in [0, 1]; a point of the space skips the
    ``num_skip`` layers with the largest keys (ties broken by candidate order), so every point is
    exactly one subset and every Optuna sampler can explore the space unchanged.
    """

    def __init__(self, candidates: Iterable[str], num_skip: int) -> None:
        candidates = tuple(candidates)
        if len(candidates) < 2 or len(set(candidates)) != len(candidates):
            raise ValueError(
                f"candidates: expected at least two distinct layer names, got {list(candidates)}"
            )
        if not 1 <= num_skip < len(candidates):
            raise ValueError(
                f"num_skip: expected an integer from 1 to {len(candidates) - 1}, got {num_skip}"
            )
        self.candidates = candidates
        self.num_skip = int(num_skip)
        self.param_names = tuple(PARAM_PREFIX + c for c in candidates)
        self.distributions = {name: FloatDistribution(0.0, 1.0) for name in self.param_names}

    def decode(self, params: Mapping[str, Any]) -> frozenset[str]:
        """The subset a point of the space means: the ``num_skip`` candidates with the largest keys."""
        keys = [float(params[name]) for name in self.param_names]
        order = sorted(range(len(keys)), key=lambda i: (-keys[i], i))
        return frozenset(self.candidates[i] for i in order[: self.num_skip])

    def encode(self, skipped: Iterable[str]) -> dict[str, float]:
        """Parameters that decode to ``skipped`` (e.g. for ``study.enqueue_trial``)."""
        skipped = frozenset(skipped)
        unknown = sorted(skipped - set(self.candidates))
        if unknown or len(skipped) != self.num_skip:
            raise ValueError(
                f"expected {self.num_skip} of {list(self.candidates)}, got {sorted(skipped)}"
            )
        return {PARAM_PREFIX + c: float(c in skipped) for c in self.candidates}

    def suggest(self, trial: optuna.Trial) -> frozenset[str]:
        """Suggest the keys on ``trial``; the decoded subset is recorded as user attr ``skipped``."""
        params = {name: trial.suggest_float(name, 0.0, 1.0) for name in self.param_names}
        skipped = self.decode(params)
        trial.set_user_attr("skipped", self.ordered(skipped))
        return skipped

    def subset_of(self, trial: optuna.trial.FrozenTrial) -> frozenset[str] | None:
        """The subset a trial means, or None if it has no keys of this space."""
        if not all(name in trial.params for name in self.param_names):
            return None
        return self.decode(trial.params)

    def ordered(self, skipped: Iterable[str]) -> list[str]:
        skipped = set(skipped)
        return [c for c in self.candidates if c in skipped]

    @property
    def num_subsets(self) -> int:
        return math.comb(len(self.candidates), self.num_skip)

    def all_subsets(self) -> Iterator[frozenset[str]]:
        return (frozenset(s) for s in itertools.combinations(self.candidates, self.num_skip))


Reward = Callable[[float], float]
_UNSETTLED = (TrialState.RUNNING, TrialState.WAITING)
_MAX_REDRAWS = 100


# Copied from das_tune.samplers.das._default_reward
def _default_reward(direction: StudyDirection) -> Reward:
    if direction == StudyDirection.MINIMIZE:
        return lambda value: math.exp(-value)
    return lambda value: value


def _value(trial: FrozenTrial) -> float:
    """The trial's value; NaN when it has none."""
    return math.nan if trial.value is None else trial.value


# Copied from das_tune.samplers.das._sigmoid
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Copied from das_tune.samplers.policy.random_log_keys
def random_log_keys(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """log of Efraimidis–Spirakis keys U^(1/w), w ∝ p: their top-m is a draw without replacement ∝ p."""
    weights = p / p.max()
    return np.log(rng.uniform(np.finfo(float).tiny, 1.0, size=len(p))) / weights


def draw_subset(
    space: SkipSpace, probabilities: dict[str, float], rng: np.random.Generator
) -> frozenset[str]:
    """``num_skip`` layers drawn without replacement with probability ∝ ``probabilities``."""
    p = np.array([probabilities[c] for c in space.candidates])
    top = np.argsort(-random_log_keys(p, rng), kind="stable")[: space.num_skip]
    return frozenset(space.candidates[i] for i in top)


class DASSampler(BaseSampler):
    """Samples the skip keys of ``space`` with DAS's policy; other parameters go to ``fallback``.

    Args:
        space: the layer-skip space whose ``skip.<layer>`` parameters this sampler owns.
        seed: seeds every trial's draw together with the trial number (None: a random seed).
        round_size: K, the number of distinct subsets observed per round (reference: 3).
        lr: step size of the gate update (reference: 1.0).
        reward: maps a trial's value to its reward; default exp(-value) when minimising and the
            value itself when maximising.
        standardize: divide the round's advantages ``r_k - baseline`` by the round's reward standard
            deviation (off in the reference). With skip-adapters, the subnets of a round often differ
            by ~0.01 in loss, so raw exp(-loss) advantages move the gates by ~1e-4 per round and
            short searches end where they began; standardised advantages make every round count.
        fallback: sampler for parameters that are not skip keys (default: independent TPE with the
            same seed; independent because it keeps the per-trial overhead flat in long studies).
        initial_gates: ``{layer: gate}`` before the first round (layers left out start at 0, the reference's
            start): a prior such as a training-free score that the observations then move.
    """

    # Copied from das_tune.samplers.das.DASSampler.__init__
    def __init__(
        self,
        space: SkipSpace,
        *,
        seed: int | None = None,
        round_size: int = 3,
        lr: float = 1.0,
        reward: Reward | None = None,
        standardize: bool = False,
        fallback: BaseSampler | None = None,
        initial_gates: Mapping[str, float] | None = None,
    ) -> None:
        if round_size < 1:
            raise ValueError(f"round_size: expected an integer ≥ 1, got {round_size}")
        given = dict(initial_gates or {})
        unknown = sorted(set(given) - set(space.candidates))
        if unknown:
            raise ValueError(f"initial_gates: {unknown} are not candidates of the space")
        start = np.array([float(given.get(name, 0.0)) for name in space.candidates])
        if not np.isfinite(start).all():
            raise ValueError("initial_gates: expected finite numbers")
        self.space = space
        self.seed = (
            int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)
        )
        self.round_size = round_size
        self.lr = float(lr)
        self.reward = reward
        self.standardize = standardize
        self.fallback = (
            fallback if fallback is not None else TPESampler(seed=self.seed, multivariate=False)
        )
        self.initial_gates = start
        self._cache: dict[tuple[str, int], tuple[int, np.ndarray]] = {}

    # Copied from das_tune.samplers.das.DASSampler.__getstate__
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    # -- the policy, public -----------------------------------------------------------------------
    # Copied from das_tune.samplers.das.DASSampler.gates
    def gates(self, study: Study) -> np.ndarray:
        """The gates after every settled round of ``study``, in candidate order."""
        trials = study._get_trials(deepcopy=False, use_cache=False)
        return self._replay(study, trials)

    # Copied from das_tune.samplers.das.DASSampler.probabilities
    def probabilities(self, study: Study) -> dict[str, float]:
        """``{layer: p}``: the current probability weight of skipping each layer."""
        p = _sigmoid(self.gates(study))
        return dict(zip(self.space.candidates, p.tolist()))

    def gate_history(self, study: Study) -> np.ndarray:
        """Row r: the gates after the first r rounds (row 0: the initial gates); the last row is ``gates``."""
        trials = study._get_trials(deepcopy=False, use_cache=False)
        reward = self.reward or _default_reward(study.direction)
        k = self.round_size
        gates = self.initial_gates.copy()
        rows = [gates.copy()]
        for start in range(0, len(trials) - k + 1, k):
            members = trials[start : start + k]
            if not any(t.state in _UNSETTLED for t in members):
                self._apply_round(gates, members, reward)
            rows.append(gates.copy())
        return np.array(rows)

    def chosen(self, study: Study) -> frozenset[str]:
        """The subset DAS chooses now: the ``num_skip`` layers with the largest gates."""
        gates = self.gates(study)
        order = sorted(range(len(gates)), key=lambda i: (-gates[i], i))
        return frozenset(self.space.candidates[i] for i in order[: self.space.num_skip])

    # -- BaseSampler ------------------------------------------------------------------------------
    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        self._raise_error_if_multi_objective(study)
        other = self.fallback.infer_relative_search_space(study, trial)
        own = self.space.distributions
        return {**{k: v for k, v in other.items() if k not in own}, **own}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        own = self.space.distributions
        params: dict[str, Any] = {}
        if any(name in search_space for name in own):
            keys = self._draw_keys(study, trial)
            params.update({k: v for k, v in keys.items() if k in search_space})
        rest = {k: v for k, v in search_space.items() if k not in own}
        if rest:
            params.update(self.fallback.sample_relative(study, trial, rest))
            for name, distribution in rest.items():
                if name not in params:
                    params[name] = self.fallback.sample_independent(
                        study, trial, name, distribution
                    )
        return params

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._raise_error_if_multi_objective(study)
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    # Copied from das_tune.samplers.das.DASSampler.before_trial
    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.fallback.before_trial(study, trial)

    # Copied from das_tune.samplers.das.DASSampler.after_trial
    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.fallback.after_trial(study, trial, state, values)

    # Copied from das_tune.samplers.das.DASSampler.reseed_rng
    def reseed_rng(self) -> None:
        # Skip draws are seeded per trial number; only the fallback has a stream to reseed.
        self.fallback.reseed_rng()

    # -- internals --------------------------------------------------------------------------------
    def _draw_keys(self, study: Study, trial: FrozenTrial) -> dict[str, float]:
        trials = study._get_trials(deepcopy=False, use_cache=True)
        p = _sigmoid(self._replay(study, trials))
        taken = self._taken_in_round(trials, trial.number)
        distinct_possible = len(taken) < self.space.num_subsets
        rng = np.random.default_rng([self.seed, trial.number])
        for _ in range(_MAX_REDRAWS):
            keys = self._keys_for(p, rng)
            subset = self.space.decode(keys)
            if not distinct_possible or subset not in taken:
                return keys
        return keys  # near-deterministic gates left no distinct subset: accept a repeat

    # Copied from das_tune.samplers.das.DASSampler._keys_for
    def _keys_for(self, p: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        log_keys = random_log_keys(p, rng)
        # exp() may underflow to 0 for layers with a tiny weight; a rank-ordered floor keeps the
        # decoded order identical to the order of the log-keys.
        rank = np.empty(len(p), dtype=int)
        rank[np.argsort(-log_keys, kind="stable")] = np.arange(len(p))
        values = np.maximum(np.exp(log_keys), 1e-12 * (len(p) - rank) / len(p))
        return {name: float(v) for name, v in zip(self.space.param_names, values)}

    # Copied from das_tune.samplers.das.DASSampler._taken_in_round
    def _taken_in_round(self, trials: list[FrozenTrial], number: int) -> set[frozenset[str]]:
        first = number - number % self.round_size
        taken = set()
        for other in trials[first : first + self.round_size]:
            subset = self.space.subset_of(other) if other.number != number else None
            if subset is not None:
                taken.add(subset)
        return taken

    def _replay(self, study: Study, trials: list[FrozenTrial]) -> np.ndarray:
        """Gates after applying every settled round in round order (cached settled prefix)."""
        cache_key = (study.study_name, study._study_id)
        done, cached = self._cache.get(cache_key, (0, self.initial_gates))
        gates = cached.copy()
        reward = self.reward or _default_reward(study.direction)
        prefix_intact = True
        k = self.round_size
        for start in range(done * k, len(trials) - k + 1, k):
            members = trials[start : start + k]
            if any(t.state in _UNSETTLED for t in members):
                prefix_intact = False
                continue
            self._apply_round(gates, members, reward)
            if prefix_intact:
                done = start // k + 1
                self._cache[cache_key] = (done, gates.copy())
        return gates

    # Copied from das_tune.samplers.das.DASSampler._apply_round with t.values[0]->_value(t)
    def _apply_round(self, gates: np.ndarray, members: list[FrozenTrial], reward: Reward) -> None:
        observed = []
        for t in members:
            subset = self.space.subset_of(t)
            if t.state == TrialState.COMPLETE and subset is not None and math.isfinite(_value(t)):
                observed.append((reward(_value(t)), subset))
        if len(observed) < 2:
            return
        p = _sigmoid(gates)
        rewards = np.array([r for r, _ in observed])
        advantages = rewards - rewards.mean()
        if self.standardize:
            spread = rewards.std()
            advantages = advantages / spread if spread > 0 else np.zeros_like(advantages)
        index = {name: i for i, name in enumerate(self.space.candidates)}
        delta = np.zeros_like(gates)
        for advantage, (_, subset) in zip(advantages, observed):
            for name in subset:
                delta[index[name]] += advantage
        gates += self.lr * delta * p * (1.0 - p)
