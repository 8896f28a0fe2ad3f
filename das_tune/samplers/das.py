"""DAS's redundancy observation as an Optuna sampler.

The policy (Wu et al., 2023, as the reference code runs it)
-----------------------------------------------------------
* one gate per candidate layer, 0 at the start (or a prior's value, see ``initial_gates``); p_i = sigmoid(gate_i)
  is "how skippable" layer i is;
* a trial skips ``num_skip`` layers drawn without replacement with probability ∝ p;
* trials come in *rounds* of ``round_size`` (K) trials whose subsets are distinct;
* once a round is observed, each trial k gets a reward r_k (exp(-value) for a minimised value),
  the baseline is the round's mean reward, and every layer i of trial k's subset moves by
  ``gate_i += lr * (r_k - baseline) * p_i * (1 - p_i)``, with p taken before the round's update
  (optionally with the advantage ``r_k - baseline`` divided by the round's reward spread).

State from the storage alone
----------------------------
The gates are never stored: they are replayed from the study's finished trials each time they are
needed (with a cache of the settled prefix, which cannot change). Round membership is
``trial.number // round_size``; trial numbers are assigned by the storage, so several workers on
one storage agree on it. A trial's draw uses a generator seeded by ``(seed, trial.number)`` and the
gates replayed from the history, so a resumed study repeats an uninterrupted one exactly.

Asynchronous completion (Ray Tune, several workers)
---------------------------------------------------
A round is *settled* when all K of its trials exist and none is running or waiting. Settled rounds
are applied in round order, whenever they settle; a round still in flight is simply not applied
yet, so a trial sees every round that had settled when it was drawn. Only COMPLETE trials with a
finite value are observations: PRUNED trials (e.g. stopped early by ASHA, whose value is truncated)
and FAILED ones are left out of the round's baseline and update, and a round with fewer than two
observations changes nothing (its baseline-subtracted update would be zero anyway).

A range of ``num_skip`` (one search for every size)
--------------------------------------------------
With a range the gates are shared by every size: a layer that is redundant when two layers are
skipped is evidence for skipping it when three are. Each round is of *one* size, so its baseline
compares like with like (subsets of one size differ in which layers they drop, not in how many): round
r has the r-th size in turn, cycling over the sizes that have more than one subset (size 0 has one,
the full model). Each size's pick is its top-m gates, so the picks form a ladder of nested subsets.
In a two-objective study (observed loss, additional GMACs) the reward comes from the first objective
alone: a subnet's cost is known without observing it, and the ladder spans the costs.

The draw as random keys
-----------------------
Sequential sampling without replacement ∝ p equals taking the top-m of the keys u_i = U_i^(1/w_i),
U_i ~ U(0, 1), w ∝ p (Efraimidis & Spirakis, 2006). These keys are exactly the values of the
space's ``skip.<layer>`` parameters (see ``das_tune.spec.spaces``), so DAS trials are ordinary points of
the same search space every other sampler explores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from das_tune.samplers.policy import SkipPolicy, random_log_keys
from das_tune.spec.spaces import SIZE_PARAM, SkipSpace

Reward = Callable[[float], float]
_UNSETTLED = (TrialState.RUNNING, TrialState.WAITING)
_MAX_REDRAWS = 100


def _default_reward(direction: StudyDirection) -> Reward:
    if direction == StudyDirection.MINIMIZE:
        return lambda value: math.exp(-value)
    return lambda value: value


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def prior_gates(scores: Mapping[str, float], scale: float) -> dict[str, float]:
    """Initial gates from per-layer skippability ``scores`` (higher: skip first): their z-scores times ``scale``,
    so that the prior's strength is ``scale`` gate units per standard deviation whatever the score's units."""
    values = np.array(list(scores.values()), dtype=float)
    spread = values.std()
    z = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
    return {name: float(scale * v) for name, v in zip(scores, z)}


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
            start): a prior such as a training-free score (see ``prior_gates``) that the observations then move.
    """

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
        self.seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)
        self.round_size = round_size
        self.lr = float(lr)
        self.reward = reward
        self.standardize = standardize
        self.fallback = fallback if fallback is not None else TPESampler(seed=self.seed, multivariate=False)
        self.initial_gates = start
        self._cache: dict[tuple[str, int], tuple[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    # -- the policy, public -----------------------------------------------------------------------
    def gates(self, study: Study) -> np.ndarray:
        """The gates after every settled round of ``study``, in candidate order."""
        trials = study._get_trials(deepcopy=False, use_cache=False)
        return self._replay(study, trials)

    def probabilities(self, study: Study) -> dict[str, float]:
        """``{layer: p}``: the current probability weight of skipping each layer."""
        p = _sigmoid(self.gates(study))
        return dict(zip(self.space.candidates, p.tolist()))

    def gate_history(self, study: Study) -> np.ndarray:
        """Row r: the gates after the first r rounds (row 0: the initial gates); the last row is ``gates``."""
        trials = study._get_trials(deepcopy=False, use_cache=False)
        rows = [self.initial_gates.copy()]
        self._replay(study, trials, history=rows)
        return np.array(rows)

    def chosen(self, study: Study) -> frozenset[str]:
        """The subset DAS chooses now: the ``num_skip`` layers with the largest gates (a range: the
        largest size's pick, see :meth:`picks`)."""
        return self.space.top(self.gates(study).tolist(), self.space.sizes[-1])

    def picks(self, study: Study) -> dict[int, frozenset[str]]:
        """Size m → the m layers with the largest gates, for every size of the space: the ladder."""
        gates = self.gates(study).tolist()
        return {m: self.space.top(gates, m) for m in self.space.sizes}

    def round_num_skip(self, number: int) -> int | None:
        """How many layers the subsets of trial ``number``'s round skip (None: the space has one size)."""
        if not self.space.is_range:
            return None
        n = len(self.space.candidates)
        observable = [m for m in self.space.sizes if math.comb(n, m) > 1]
        return observable[(number // self.round_size) % len(observable)]

    def skip_policy(self) -> DASPolicy:
        """What the search loops, the dashboard and the bench see of this sampler."""
        return DASPolicy(self)

    # -- BaseSampler ------------------------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        other = self.fallback.infer_relative_search_space(study, trial)
        own = self.space.distributions
        return {**{k: v for k, v in other.items() if k not in own}, **own}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
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
                    params[name] = self.fallback.sample_independent(study, trial, name, distribution)
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.fallback.before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.fallback.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        # Skip draws are seeded per trial number; only the fallback has a stream to reseed.
        self.fallback.reseed_rng()

    # -- internals --------------------------------------------------------------------------------
    def _draw_keys(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        trials = study._get_trials(deepcopy=False, use_cache=True)
        p = _sigmoid(self._replay(study, trials))
        taken = self._taken_in_round(trials, trial.number)
        size = self.round_num_skip(trial.number)
        subsets = self.space.num_subsets if size is None else math.comb(len(self.space.candidates), size)
        distinct_possible = len(taken) < subsets
        rng = np.random.default_rng([self.seed, trial.number])
        for _ in range(_MAX_REDRAWS):
            keys: dict[str, Any] = self._keys_for(p, rng)
            if size is not None:
                keys[SIZE_PARAM] = size
            subset = self.space.decode(keys)
            if not distinct_possible or subset not in taken:
                return keys
        return keys  # near-deterministic gates left no distinct subset: accept a repeat

    def _keys_for(self, p: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        log_keys = random_log_keys(p, rng)
        # exp() may underflow to 0 for layers with a tiny weight; a rank-ordered floor keeps the
        # decoded order identical to the order of the log-keys.
        rank = np.empty(len(p), dtype=int)
        rank[np.argsort(-log_keys, kind="stable")] = np.arange(len(p))
        values = np.maximum(np.exp(log_keys), 1e-12 * (len(p) - rank) / len(p))
        return {name: float(v) for name, v in zip(self.space.param_names, values)}

    def _taken_in_round(self, trials: list[FrozenTrial], number: int) -> set[frozenset[str]]:
        first = number - number % self.round_size
        taken = set()
        for other in trials[first : first + self.round_size]:
            subset = self.space.subset_of(other) if other.number != number else None
            if subset is not None:
                taken.add(subset)
        return taken

    def _replay(self, study: Study, trials: list[FrozenTrial], history: list[np.ndarray] | None = None) -> np.ndarray:
        """Gates after applying every settled round in round order (cached settled prefix).

        With ``history``, the replay starts from zero and appends the gates after every round slot.
        """
        cache_key = (study.study_name, study._study_id)
        start = (0, self.initial_gates)
        done, cached = start if history is not None else self._cache.get(cache_key, start)
        gates = cached.copy()
        reward = self.reward or _default_reward(study.directions[0])
        prefix_intact = history is None
        k = self.round_size
        for start in range(done * k, len(trials) - k + 1, k):
            members = trials[start : start + k]
            if any(t.state in _UNSETTLED for t in members):
                prefix_intact = False
            else:
                self._apply_round(gates, members, reward)
            if history is not None:
                history.append(gates.copy())
            if prefix_intact:
                done = start // k + 1
                self._cache[cache_key] = (done, gates.copy())
        return gates

    def _apply_round(self, gates: np.ndarray, members: list[FrozenTrial], reward: Reward) -> None:
        observed = []
        for t in members:
            subset = self.space.subset_of(t)
            if t.state == TrialState.COMPLETE and subset is not None and math.isfinite(t.values[0]):
                observed.append((reward(t.values[0]), subset))
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


class DASPolicy(SkipPolicy):
    """DAS seen by the loops: training steps draw ∝ sigmoid(gates), the choice is the top gates."""

    def __init__(self, sampler: DASSampler) -> None:
        super().__init__(sampler.space, sampler.round_size)
        self.sampler = sampler

    def probabilities(self, study: Study) -> dict[str, float]:
        return self.sampler.probabilities(study)

    def chosen(self, study: Study) -> frozenset[str]:
        return self.sampler.chosen(study)

    def picks(self, study: Study) -> dict[int, frozenset[str]]:
        return self.sampler.picks(study)

    def history(self, study: Study) -> np.ndarray:
        return _sigmoid(self.sampler.gate_history(study))
