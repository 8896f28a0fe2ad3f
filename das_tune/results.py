"""The typed results das-tune writes: what a run found and retrained, and what a benchmark measured.

Each is a pydantic model written to JSON by :func:`write_json` and read back by ``Model.read``, so a
file's schema is declared here once. Files written by older versions (with keys no longer written)
still read: unknown keys are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from das_tune import atomic

Result = TypeVar("Result", bound="_Result")


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @classmethod
    def read(cls: type[Result], path: Path) -> Result:
        return cls.model_validate_json(path.read_text())


def write_json(result: BaseModel, path: Path) -> None:
    """Atomically, and never with NaN/inf (not JSON; pydantic would write null): ``RunFailure`` instead."""
    atomic.check_finite(result.model_dump(), Path(path).name)
    atomic.write_text(path, result.model_dump_json(indent=2, by_alias=True) + "\n")


# -- a run --------------------------------------------------------------------------------------------
class FoundBy(_Result):
    """How a subnet was found: one shape whether a search, ``--skip`` or the bench chose it."""

    sampler: str  # the sampler's name, or "given by --skip", or "das-tune bench"
    executor: str | None = None
    study_name: str | None = None
    storage: str | None = None
    observations: int = 0
    search_seconds: float | None = None
    probabilities: dict[str, float] | None = None  # the sampler's skip probabilities, if it has any


class SubnetFile(FoundBy):
    """``subnet.json``: the space, the skipped layers, the backbone and task, and how it was found (flat)."""

    space: str | None
    candidates: list[str]
    num_skip: int
    skipped: list[str]
    backbone: dict[str, Any]
    task: dict[str, Any]

    @property
    def found_by(self) -> FoundBy:
        return FoundBy.model_validate(self.model_dump(include=set(FoundBy.model_fields)))


class RetrainMetrics(_Result):
    """``metrics.json``: the retrained subnet's test metric, costs, latency and wall-clock."""

    metric: str
    value: float
    test: dict[str, float]
    val: dict[str, float]
    skipped: list[str]
    macs: int
    flops: int
    additional_macs: int
    additional_flops: int
    params: int
    trainable_params: int
    additional_gmacs: float
    flops_saved: float
    latency_full_ms: float
    latency_subnet_ms: float
    speedup: float
    retrain_seconds: float
    search_seconds: float | None = None
    retrain_budget: dict[str, Any]


# -- a benchmark ----------------------------------------------------------------------------------------
class BenchRecord(_Result):
    """One (method, seed) of a benchmark: its pick, its search, and (once retrained) its result."""

    method: str
    kind: Literal["sampler", "training-free"]
    seed: int
    study_name: str | None
    chosen: list[str]
    layer_scores: dict[str, float] | None
    observations: int
    observed: list[float]
    scoring_batches: int
    warmup_steps: int
    warmup_seconds: float
    search_steps: int
    search_seconds: float
    # the retrain of the pick
    metric: str | None = None
    value: float | None = None
    additional_gmacs: float | None = None
    flops_saved: float | None = None
    retrain_steps: int | None = None
    retrain_seconds: float | None = None
    total_steps: int | None = None
    total_seconds: float | None = None
    # against the ground truth (``--ground-truth``)
    regret: float | None = None
    rank: int | None = None
    kendall_tau: float | None = None


class WarmupRecord(_Result):
    """A benchmark seed's shared warm-up: its checkpoint, training steps and wall-clock."""

    checkpoint: str
    steps: int
    seconds: float


class BenchFiles(_Result):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    out: str
    json_name: str = Field(alias="json")
    markdown: str
    plots: list[str]


class BenchResults(_Result):
    """``results.json``: every run, the summary over seeds, the paired tests and the ground truth."""

    study: str
    space: str
    candidates: list[str]
    num_candidates: int
    num_skip: int
    num_subsets: int
    metric: str
    higher_is_better: bool = True
    seeds: list[int]
    samplers: list[str]
    methods: list[str]
    storage: str
    tiny: bool
    budget: dict[str, int]
    reference: str
    summary: dict[str, dict[str, dict[str, float | int | None]]]
    paired_tests: dict[str, dict[str, Any]]
    ground_truth: dict[str, Any] | None
    runs: list[BenchRecord]
    files: BenchFiles | None = None
