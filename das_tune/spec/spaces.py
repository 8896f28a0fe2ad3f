"""Layer-skip search spaces: "which ``num_skip`` of these layers do we skip" as an Optuna search space.

The encoding — random keys
--------------------------
Every candidate layer gets one float parameter ``skip.<layer>`` in [0, 1] (its *key*); a trial skips the
``num_skip`` layers with the largest keys (ties broken by candidate order). We chose this encoding
because it satisfies both requirements at once:

* it is an ordinary, fixed, continuous search space, so *every* Optuna sampler explores it unchanged:
  random search (i.i.d. uniform keys give exactly a uniform random subset), TPE (per-key densities of
  good vs bad trials learn which layers to skip), CMA-ES and GP (continuous), QMC (well spread keys);
* every point of the space decodes to exactly one subset of ``num_skip`` layers, so no sampler can
  propose an invalid trial and nothing has to be rejected or pruned.

A categorical over all C(n, m) subsets would hide all structure from TPE/CMA-ES, and one boolean per
layer would yield subsets of the wrong size. DAS's own draw (sequential sampling without replacement
with probability ∝ p) is itself a random-key draw (Efraimidis & Spirakis, 2006), see ``DASSampler``.

The decoded subset is written on each trial as user attribute ``skipped`` (layer names in candidate
order) so that optuna-dashboard shows it.

A range of ``num_skip``
-----------------------
``num_skip`` may be a range of sizes (``1-3``, ``2,4,6,8``, ``{min: 2, max: 8}``, a list). Then the
space has one more parameter, ``num_skip`` itself: an integer (``IntDistribution``, with a step when
the sizes are evenly spaced) or, for uneven sizes, a categorical of them. A point of the space is
(size m, keys) and means the top-m keys: still exactly one subset per trial, for every sampler, and an
ordered integer lets TPE, NSGA-II and GP learn how the size trades off. With a single number the
space, its parameters and its trials are exactly what they were without ranges.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from das_tune.errors import UserError, shorten
from das_tune.spec import resources, yaml_reader

if TYPE_CHECKING:  # optuna and numpy load on first use: a refused command line never waits for them
    import numpy as np
    import optuna
    from optuna.distributions import BaseDistribution

PARAM_PREFIX = "skip."
BALANCED_STREAM = 1  # the balanced warm-up draws from its own stream of the seed: SeedSequence([seed, 1])
SIZE_PARAM = "num_skip"  # a range's size parameter (no "skip." prefix: it cannot clash with a layer's key)
_LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def parse_num_skip(value: Any) -> Any:
    """``3``, ``"1-3"``, ``"2,4,6,8"``, ``[2, 4]``, ``{min: 2, max: 8}`` → an int or a sorted tuple of
    sizes (checked against the candidates by ``SkipSpace``); anything else is returned for pydantic to refuse."""
    if isinstance(value, str):
        text = value.strip()
        bounds = _RANGE.match(text)
        if bounds:
            value = {"min": int(bounds[1]), "max": int(bounds[2])}
        elif "," in text:
            try:
                value = [int(v) for v in text.split(",")]
            except ValueError:
                raise ValueError(f"expected a number, a range like 1-3 or a list like 2,4,6,8, got {value!r}") from None
        else:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected a number, a range like 1-3 or a list like 2,4,6,8, got {value!r}") from None
    if isinstance(value, dict):
        if set(value) != {"min", "max"} or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            raise ValueError(f"expected a range as {{min: INT, max: INT}}, got {value}")
        if value["min"] > value["max"]:
            raise ValueError(f"range {value['min']}-{value['max']}: min is larger than max")
        value = list(range(value["min"], value["max"] + 1))
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"expected a list of whole numbers, got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"sizes repeated in {list(value)}")
        return sorted(value)[0] if len(value) == 1 else tuple(sorted(value))
    return value


class SkipSpace(BaseModel):
    """The candidates (in order), how many to skip, and how a subset is written into a trial."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: tuple[str, ...] = Field(description="layer names, in model order")
    num_skip: int | tuple[int, ...] = Field(description="how many candidates each subnet skips: a number or a range of sizes")
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict, description="named sets of candidates")
    name: str | None = None
    description: str = ""
    backbone: str | None = Field(default=None, description="the backbone family the names belong to")
    skip_adapter_width: int | None = Field(
        default=None, ge=0, description="width of skip-adapters; 0 removes skipped layers outright"
    )
    granularity: Literal["layer", "sublayer"] = Field(
        default="layer", description="candidates are whole layers, or attention (A<i>) and feed-forward (F<i>) blocks"
    )

    @field_validator("candidates")
    @classmethod
    def _distinct_names(cls, candidates: tuple[str, ...]) -> tuple[str, ...]:
        if len(candidates) < 2:
            raise ValueError("expected at least two layer names")
        bad = [c for c in candidates if not _LAYER_NAME.match(c)]
        if bad:
            raise ValueError(f"expected layer names like 'FL0' or 'En3', got {bad}")
        repeated = sorted({c for c in candidates if candidates.count(c) > 1})
        if repeated:
            raise ValueError(f"expected distinct layer names, {repeated} repeated")
        return candidates

    @field_validator("num_skip", mode="before")
    @classmethod
    def _parse_range(cls, value: Any) -> Any:
        return parse_num_skip(value)

    @field_validator("num_skip")
    @classmethod
    def _fewer_than_candidates(cls, num_skip: int | tuple[int, ...], info: ValidationInfo) -> int | tuple[int, ...]:
        n = len(info.data.get("candidates", ()))
        if not n:
            return num_skip
        if isinstance(num_skip, int) and not 1 <= num_skip < n:
            raise ValueError(f"expected an integer from 1 to {n - 1} (fewer than the {n} candidates), got {num_skip}")
        if isinstance(num_skip, tuple):
            bad = [m for m in num_skip if not 0 <= m < n]
            if bad:
                raise ValueError(
                    f"range {size_label(num_skip)}: expected sizes from 0 to {n - 1} (fewer than the {n} candidates), got {bad}"
                )
        return num_skip

    @field_validator("groups")
    @classmethod
    def _known_members(cls, groups: dict[str, tuple[str, ...]], info: ValidationInfo) -> dict:
        candidates = info.data.get("candidates", ())
        for group, members in groups.items():
            unknown = [m for m in members if m not in candidates]
            if unknown:
                raise ValueError(f"group {group!r}: {unknown} are not among the candidates")
        return groups

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def is_range(self) -> bool:
        """Whether ``num_skip`` is a range of sizes (then a study has two objectives and a front)."""
        return isinstance(self.num_skip, tuple)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every size a subset of this space may have, ascending."""
        return self.num_skip if isinstance(self.num_skip, tuple) else (self.num_skip,)

    @property
    def num_skip_label(self) -> str:
        """``2``, ``1-3`` or ``2,4,8``: how messages and file names write ``num_skip``."""
        return size_label(self.sizes)

    @property
    def recorded_num_skip(self) -> int | list[int]:
        """``num_skip`` as a study's user attribute records it (JSON)."""
        return list(self.num_skip) if isinstance(self.num_skip, tuple) else self.num_skip

    def with_size(self, size: int) -> SkipSpace:
        """This space with a single ``num_skip`` (a rung of a range's ladder)."""
        return self.model_copy(update={"num_skip": size})

    # -- the encoding -----------------------------------------------------------------------------
    @cached_property
    def param_names(self) -> tuple[str, ...]:
        return tuple(PARAM_PREFIX + c for c in self.candidates)

    @cached_property
    def size_distribution(self) -> BaseDistribution | None:
        """A range's size parameter: an integer (stepped when the sizes are evenly spaced), else a categorical."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        if not self.is_range:
            return None
        sizes = self.sizes
        steps = {b - a for a, b in zip(sizes, sizes[1:])}
        if len(steps) == 1:
            return IntDistribution(sizes[0], sizes[-1], step=steps.pop())
        return CategoricalDistribution(sizes)

    @cached_property
    def distributions(self) -> dict[str, BaseDistribution]:
        from optuna.distributions import FloatDistribution

        keys: dict[str, BaseDistribution] = {name: FloatDistribution(0.0, 1.0) for name in self.param_names}
        if self.size_distribution is not None:
            keys[SIZE_PARAM] = self.size_distribution
        return keys

    def decode(self, params: Mapping[str, Any]) -> frozenset[str]:
        """The subset a point of the space means: the ``num_skip`` (a range: ``params["num_skip"]``)
        candidates with the largest keys."""
        size = int(params[SIZE_PARAM]) if self.is_range else None
        return self.top([float(params[name]) for name in self.param_names], size)

    def top(self, scores: Sequence[float] | Mapping[str, float], size: int | None = None) -> frozenset[str]:
        """The ``size`` (default: ``num_skip``) candidates with the highest scores, ties broken by candidate order.

        ``scores``: one per candidate, in candidate order, or by name. Every "top-k" of das-tune (the
        decoded keys, DAS's gates, the training-free scores) goes through here.
        """
        if size is None:
            if self.is_range:
                raise ValueError(f"space {self.label} has a range of num_skip ({self.num_skip_label}): top() needs a size")
            size = self.num_skip
        if isinstance(scores, Mapping):
            scores = [scores[c] for c in self.candidates]
        order = sorted(range(len(self.candidates)), key=lambda i: (-scores[i], i))
        return frozenset(self.candidates[i] for i in order[:size])

    def tied_at_cut(self, scores: Mapping[str, float]) -> list[str]:
        """The candidates (in candidate order) whose score equals the ``num_skip``-th highest when the cut of
        :meth:`top` falls among them, so that candidate order, not the scores, chose which of them are in it."""
        cut = sorted(scores.values(), reverse=True)[self.num_skip - 1]
        tied = [c for c in self.candidates if math.isclose(scores[c], cut, rel_tol=1e-9, abs_tol=1e-12)]
        above = sum(scores[c] > cut for c in self.candidates if c not in tied)
        return tied if above + len(tied) > self.num_skip else []

    def encode(self, skipped: frozenset[str] | set[str] | list[str]) -> dict[str, float]:
        """Parameters that decode to ``skipped`` (e.g. for ``study.enqueue_trial``)."""
        skipped = self.validate_subset(skipped)
        params: dict[str, Any] = {PARAM_PREFIX + c: float(c in skipped) for c in self.candidates}
        if self.is_range:
            if len(skipped) not in self.sizes:
                raise UserError(f"skip set {self.ordered(skipped)}: {len(skipped)} layers, expected one of the sizes {self.num_skip_label}")
            params[SIZE_PARAM] = len(skipped)
        return params

    def suggest(self, trial: optuna.Trial) -> frozenset[str]:
        """Suggest the keys (and a range's size) on ``trial``, record the decoded subset as user attr ``skipped``."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        params: dict[str, Any] = {name: trial.suggest_float(name, 0.0, 1.0) for name in self.param_names}
        size = self.size_distribution
        if isinstance(size, IntDistribution):
            params[SIZE_PARAM] = trial.suggest_int(SIZE_PARAM, size.low, size.high, step=size.step)
        elif isinstance(size, CategoricalDistribution):
            params[SIZE_PARAM] = trial.suggest_categorical(SIZE_PARAM, size.choices)
        skipped = self.decode(params)
        trial.set_user_attr("skipped", self.ordered(skipped))
        return skipped

    def subset_of(self, trial: optuna.trial.FrozenTrial) -> frozenset[str] | None:
        """The subset a finished or running trial means, or None if it has no keys of this space."""
        if not all(name in trial.params for name in self.distributions):
            return None
        return self.decode(trial.params)

    def random_subset(self, rng: np.random.Generator) -> frozenset[str]:
        """A uniformly random subset (a range: a size drawn uniformly from the sizes, then a subset of it)."""
        size = int(rng.choice(self.sizes)) if self.is_range else self.num_skip
        return frozenset(rng.choice(self.candidates, size=size, replace=False).tolist())

    def balanced_subsets(self, seed: int) -> Iterator[frozenset[str]]:
        """Subsets in which every candidate is skipped equally often: each keeps the candidates kept least so far
        (ties in random order; a range: its size drawn uniformly). A pure function of ``seed``."""
        import numpy as np

        rng = np.random.default_rng([seed, BALANCED_STREAM])
        kept = dict.fromkeys(self.candidates, 0)
        while True:
            size = int(rng.choice(self.sizes)) if self.is_range else self.num_skip
            ties = dict(zip(self.candidates, rng.random(len(self.candidates))))
            order = sorted(self.candidates, key=lambda c: (kept[c], ties[c]))
            for name in order[: len(order) - size]:
                kept[name] += 1
            yield frozenset(order[len(order) - size :])

    # -- helpers ----------------------------------------------------------------------------------
    def ordered(self, skipped: frozenset[str] | set[str]) -> list[str]:
        return [c for c in self.candidates if c in skipped]

    def validate_subset(self, skipped: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
        subset = frozenset(skipped)
        unknown = sorted(subset - set(self.candidates))
        if unknown:
            raise UserError(f"skip set: {unknown} are not candidates of space {self.label}; expected some of {list(self.candidates)}")
        if len(subset) != len(list(skipped)):
            raise UserError(f"skip set: layer names repeated in {list(skipped)}")
        return subset

    def all_subsets(self) -> Iterator[frozenset[str]]:
        return (frozenset(s) for size in self.sizes for s in itertools.combinations(self.candidates, size))

    @property
    def num_subsets(self) -> int:
        return sum(math.comb(len(self.candidates), size) for size in self.sizes)

    @property
    def label(self) -> str:
        return self.name or "(unnamed)"


def size_label(sizes: Sequence[int]) -> str:
    """``2``, ``1-3`` or ``2,4,8``."""
    if len(sizes) == 1:
        return str(sizes[0])
    contiguous = list(sizes) == list(range(sizes[0], sizes[-1] + 1))
    return f"{sizes[0]}-{sizes[-1]}" if contiguous else ",".join(map(str, sizes))


def load_space(name_or_path: str | Path, num_skip: Any = None) -> SkipSpace:
    """A built-in space by name (``meter_fusion``) or a YAML file by path; ``num_skip`` (a number or a
    range, see ``parse_num_skip``) overrides."""
    path = resources.resolve("search_spaces", name_or_path)
    if path is None:
        known = ", ".join(resources.builtin_names("search_spaces"))
        raise UserError(f"unknown search space {shorten(str(name_or_path))!r}: expected a YAML file path or one of {known}")
    data = yaml_reader.read_yaml(path)
    data.setdefault("name", path.stem)
    source = str(path)
    if num_skip is not None:
        data["num_skip"] = num_skip
        source = f"{path} with num_skip {num_skip}"
    return yaml_reader.parse(SkipSpace, data, source)
