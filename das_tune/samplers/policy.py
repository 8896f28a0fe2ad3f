"""The skip policy: the one seam between a sampler and everything that searches with it.

The search loops, the runner, the dashboard and the bench never ask how a sampler decides; they ask
the study's :class:`SkipPolicy`:

* ``round_size`` and :meth:`~SkipPolicy.round_of`: observation trials come in rounds of K trials,
  by trial number (so every worker, every resume and every plot agree on a trial's round);
* :meth:`~SkipPolicy.probabilities`: the current skip probability of each layer (None: the sampler
  has none);
* :meth:`~SkipPolicy.draw`: the subnet one training step of the supernet trains;
* :meth:`~SkipPolicy.chosen`: the subset the study chose;
* :meth:`~SkipPolicy.history`: skip probabilities after each round, for plots (None: plot how often
  each layer was skipped instead);
* :meth:`~SkipPolicy.picks`: with a range of ``num_skip``, the subset chosen for every size (the
  "ladder"; DAS: the top-m gates, others: each size's best observed subset).

With a range, a training step first draws the size uniformly from the range, then the subset of that
size as above (see ``docs/architecture.md``: every size's subnets get the same share of the training,
so their observed losses compare fairly; uniform over all subsets would starve the extreme sizes).

A sampler that has a policy of its own provides it with a ``skip_policy()`` method (``DASSampler``
does); every other sampler gets this base class: uniform draws, and the best trial's subset.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from das_tune.errors import UserError
from das_tune.spec.spaces import SkipSpace


def random_log_keys(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """log of Efraimidis–Spirakis keys U^(1/w), w ∝ p: their top-m is a draw without replacement ∝ p."""
    weights = p / p.max()
    return np.log(rng.uniform(np.finfo(float).tiny, 1.0, size=len(p))) / weights


def draw_subset(space: SkipSpace, weights: Mapping[str, float], rng: np.random.Generator) -> frozenset[str]:
    """``num_skip`` layers drawn without replacement with probability ∝ ``weights`` (a range: a size
    drawn uniformly from the range first)."""
    size = int(rng.choice(space.sizes)) if space.is_range else None
    p = np.array([weights[c] for c in space.candidates])
    return space.top(random_log_keys(p, rng).tolist(), size)


class SkipPolicy:
    """The policy of a sampler without one of its own: uniform training draws, the best trial's subset."""

    def __init__(self, space: SkipSpace, round_size: int = 1) -> None:
        if round_size < 1:
            raise ValueError(f"round_size: expected an integer ≥ 1, got {round_size}")
        self.space = space
        self.round_size = round_size

    def round_of(self, number: int) -> int:
        """The observation round of trial ``number``."""
        return number // self.round_size

    def closes_round(self, number: int) -> bool:
        """Whether trial ``number`` is the last of its round."""
        return (number + 1) % self.round_size == 0

    def probabilities(self, study: optuna.Study) -> dict[str, float] | None:
        return None

    def draw(self, probabilities: Mapping[str, float] | None, rng: np.random.Generator) -> frozenset[str]:
        """A training step's subnet: drawn ∝ ``probabilities`` (from :meth:`probabilities`), uniform for None."""
        return draw_subset(self.space, probabilities or dict.fromkeys(self.space.candidates, 1.0), rng)

    def chosen(self, study: optuna.Study) -> frozenset[str]:
        """The study's choice: the best trial's subset (a range: the largest size's pick, see :meth:`picks`)."""
        if self.space.is_range:
            picks = self.picks(study)
            if picks:
                return picks[max(picks)]
        else:
            best = _best_trial_with_subset(study, self.space)
            if best is not None:
                return self.space.decode(best.params)
        raise UserError(f"study {study.study_name!r} has no completed trial with a skip subset of space {self.space.label}")

    def picks(self, study: optuna.Study) -> dict[int, frozenset[str]]:
        """Size → the subset chosen for it: the best observed subset of each size (sizes never observed are missing)."""
        picks = {}
        for size in self.space.sizes:
            best = _best_trial_with_subset(study, self.space, size)
            if best is not None:
                picks[size] = self.space.decode(best.params)
        return picks

    def describe(self, study: optuna.Study) -> str:
        """The current choice in one line (a range: every size's pick)."""
        if not self.space.is_range:
            return str(self.space.ordered(self.chosen(study)))
        return "; ".join(f"{m}: {self.space.ordered(s)}" for m, s in self.picks(study).items()) or "none yet"

    def history(self, study: optuna.Study) -> np.ndarray | None:
        """Row r: each layer's skip probability after r rounds; None for a policy without probabilities."""
        return None


def skip_policy(sampler: BaseSampler, space: SkipSpace, round_size: int = 1) -> SkipPolicy:
    """``sampler``'s own policy if it has one, else the uniform / best-trial one with ``round_size``."""
    own = getattr(sampler, "skip_policy", None)
    return own() if callable(own) else SkipPolicy(space, round_size)


def _best_trial_with_subset(study: optuna.Study, space: SkipSpace, size: int | None = None) -> FrozenTrial | None:
    """The completed trial of ``space`` (of ``size`` layers, if given) with the best first objective
    (the observed loss; with a range the second is the subnet's cost)."""
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (subset := space.subset_of(t)) is not None and (size is None or len(subset) == size)
    ]
    if not complete:
        return None
    pick = min if study.directions[0] == StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.values[0])
