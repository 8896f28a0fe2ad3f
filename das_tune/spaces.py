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
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import FloatDistribution
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from das_tune import config, resources
from das_tune.errors import UserError

PARAM_PREFIX = "skip."
KEY_DISTRIBUTION = FloatDistribution(0.0, 1.0)
_LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SkipSpace(BaseModel):
    """The candidates (in order), how many to skip, and how a subset is written into a trial."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: tuple[str, ...] = Field(description="layer names, in model order")
    num_skip: int = Field(description="how many candidates each subnet skips")
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

    @field_validator("num_skip")
    @classmethod
    def _fewer_than_candidates(cls, num_skip: int, info: ValidationInfo) -> int:
        n = len(info.data.get("candidates", ()))
        if n and not 1 <= num_skip < n:
            raise ValueError(f"expected an integer from 1 to {n - 1} (fewer than the {n} candidates), got {num_skip}")
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

    # -- the encoding -----------------------------------------------------------------------------
    @cached_property
    def param_names(self) -> tuple[str, ...]:
        return tuple(PARAM_PREFIX + c for c in self.candidates)

    @cached_property
    def distributions(self) -> dict[str, FloatDistribution]:
        return {name: KEY_DISTRIBUTION for name in self.param_names}

    def decode(self, params: Mapping[str, Any]) -> frozenset[str]:
        """The subset a point of the space means: the ``num_skip`` candidates with the largest keys."""
        return self.top([float(params[name]) for name in self.param_names])

    def top(self, scores: Sequence[float] | Mapping[str, float]) -> frozenset[str]:
        """The ``num_skip`` candidates with the highest scores, ties broken by candidate order.

        ``scores``: one per candidate, in candidate order, or by name. Every "top-k" of das-tune (the
        decoded keys, DAS's gates, the training-free scores) goes through here.
        """
        if isinstance(scores, Mapping):
            scores = [scores[c] for c in self.candidates]
        order = sorted(range(len(self.candidates)), key=lambda i: (-scores[i], i))
        return frozenset(self.candidates[i] for i in order[: self.num_skip])

    def encode(self, skipped: frozenset[str] | set[str] | list[str]) -> dict[str, float]:
        """Parameters that decode to ``skipped`` (e.g. for ``study.enqueue_trial``)."""
        skipped = self.validate_subset(skipped)
        return {PARAM_PREFIX + c: float(c in skipped) for c in self.candidates}

    def suggest(self, trial: optuna.Trial) -> frozenset[str]:
        """Suggest the keys on ``trial``, record the decoded subset as user attr ``skipped``."""
        params = {name: trial.suggest_float(name, 0.0, 1.0) for name in self.param_names}
        skipped = self.decode(params)
        trial.set_user_attr("skipped", self.ordered(skipped))
        return skipped

    def subset_of(self, trial: optuna.trial.FrozenTrial) -> frozenset[str] | None:
        """The subset a finished or running trial means, or None if it has no keys of this space."""
        if not all(name in trial.params for name in self.param_names):
            return None
        return self.decode(trial.params)

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
        return (frozenset(s) for s in itertools.combinations(self.candidates, self.num_skip))

    @property
    def num_subsets(self) -> int:
        return math.comb(len(self.candidates), self.num_skip)

    @property
    def label(self) -> str:
        return self.name or "(unnamed)"


def load_space(name_or_path: str | Path, num_skip: int | None = None) -> SkipSpace:
    """A built-in space by name (``meter_fusion``) or a YAML file by path; ``num_skip`` overrides."""
    path = resources.resolve("search_spaces", name_or_path)
    if path is None:
        known = ", ".join(resources.builtin_names("search_spaces"))
        raise UserError(f"unknown search space {str(name_or_path)!r}: expected a YAML file path or one of {known}")
    data = config.read_yaml(path)
    data.setdefault("name", path.stem)
    if num_skip is not None:
        data["num_skip"] = num_skip
    return config.parse(SkipSpace, data, str(path))
