"""The typed results das-tune writes: what a run found and retrained, and what a benchmark measured.

Each is a pydantic model written to JSON by :func:`write_json` and read back by ``Model.read``, so a
file's schema is declared here once. Files written by older versions (with keys no longer written)
still read: unknown keys are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from das_tune.artifacts import atomic
from das_tune.backbones.cost import CostCounts

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


# -- what every retrained subnet reports ----------------------------------------------------------------
class SubnetCost(_Result):
    """A subnet's cost against the original model: the paper's "FLOPs" (additional GMACs) and the share saved."""

    additional_gmacs: float
    flops_saved: float


class Outcome(SubnetCost):
    """A retrained subnet's test metric and cost."""

    metric: str
    value: float


# -- a run --------------------------------------------------------------------------------------------
class FoundBy(_Result):
    """How a subnet was found: one shape whether a search, ``--skip`` or the bench chose it."""

    sampler: str  # the sampler's name, or "given by --skip", or "das-tune bench"
    executor: str | None = None
    workers: int = 1  # data-parallel workers of the one-shot search
    study_name: str | None = None
    storage: str | None = None
    observations: int = 0
    search_seconds: float | None = None
    probabilities: dict[str, float] | None = None  # the sampler's skip probabilities, if it has any
    # candidates whose probabilities tied at the cut: candidate order chose which of them are skipped
    tie_break: list[str] | None = None


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


class RetrainMetrics(Outcome, CostCounts):
    """``metrics.json``: the retrained subnet's test metric (at its best val epoch), costs, latency and wall-clock."""

    test: dict[str, float]
    val: dict[str, float]
    skipped: list[str]
    latency_full_ms: float  # medians of timed passes at batch 1
    latency_subnet_ms: float
    speedup: float  # of the medians
    # the passes' interquartile ranges, and whether they overlap (the speed-up is then within the noise);
    # None in files written before they were kept
    latency_full_iqr_ms: tuple[float, float] | None = None
    latency_subnet_iqr_ms: tuple[float, float] | None = None
    speedup_within_noise: bool | None = None
    retrain_seconds: float
    best_epoch: int  # the epoch whose weights are the result (best val metric)
    epochs_run: int  # fewer than retrain.epochs when patience stopped it
    val_history: list[dict[str, float]] = Field(
        default_factory=list, description="the val metrics after every epoch run, in order (empty in files written before it was kept)"
    )
    search_seconds: float | None = None
    retrain_budget: dict[str, Any]
    checksums: dict[str, str] = Field(default_factory=dict, description="file name → sha256 of the artifacts written before it")


# -- a benchmark ----------------------------------------------------------------------------------------
class Spread(_Result):
    """Median, quartiles and range over seeds of the values that exist, and how many there are."""

    median: float | None = None
    q25: float | None = None
    q75: float | None = None
    min: float | None = None
    max: float | None = None
    n: int = 0


class PairedTest(_Result):
    """``reference − method`` on the retrained metric: paired by seed, or, against a deterministic method (one
    pick at every seed), unpaired against that pick's retrain values (``test`` says which)."""

    test: str
    n: int
    mean_diff: float | None
    median_diff: float | None = None
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    p_value: float | None


class Ranking(_Result):
    """How well one ordering of the reference subsets agrees with their retrained metric."""

    kendall_tau: float | None
    spearman_rho: float | None
    n: int
    sparse_kendall_tau: float | None = Field(default=None, description="τ over the pairs the truth orders beyond the retrain noise")
    separation_auc: float | None = Field(default=None, description="chance a good-set subset ranks above one outside it")
    top3_recall: float | None = Field(default=None, description="share of the 3 best-ranked among the 3 truly best")
    top_in_good: bool | None = Field(default=None, description="the best-ranked subset is in the good set (the pick of "
                                     "this ordering when every subset is scored)")


class Warmup(_Result):
    """A seed's shared warm-up: its checkpoint, cost, and the warm supernet's loss of every reference subset."""

    checkpoint: str
    steps: int
    seconds: float
    supernet_losses: dict[str, float] = Field(default_factory=dict)


class SupernetLosses(_Result):
    """A supernet of random subnets (the warm-up's draw) trained for ``steps`` (a seed's, alone in its folder) and its mean loss of every
    reference subset on the whole ``split``: how well a supernet of that budget ranks the subsets."""

    steps: int
    seconds: float = Field(description="wall-clock of the training and the scoring in the process that finished it")
    split: str
    losses: dict[str, float]


class BudgetRanking(_Result):
    """Over seeds: how well supernets of random subnets (``Budget.warmup_draw``) of one training budget rank the
    reference subsets."""

    steps: int = Field(description="training steps of each supernet")
    supernets: int = Field(1, description="supernets whose mean loss makes one ranking: consecutive groups of the seeds")
    retrains: float = Field(description="the budget (supernets × steps) in units of one retrain's training steps")
    seeds: list[int]
    kendall_tau: Spread
    sparse_kendall_tau: Spread
    separation_auc: Spread
    top3_recall: Spread


class SearchRecord(_Result):
    """What one method found at one seed, before any retrain (saved once the search is finished)."""

    method: str
    kind: Literal["sampler", "training-free"]
    seed: int
    study_name: str | None
    chosen: list[str]
    layer_scores: dict[str, float] | None = Field(description="per candidate, higher: skip first (DAS: p(skip))")
    observations: int
    observed: list[float] = Field(description="the observed supernet losses, in order")
    scoring_batches: int
    warmup_steps: int
    warmup_seconds: float
    search_steps: int
    search_seconds: float
    supernet_losses: dict[str, float] = Field(
        default_factory=dict, description="the supernet this method ends with: its loss of every reference subset"
    )


class Retrained(SubnetCost):
    """One subset's retrains at every retrain seed."""

    metric: str
    values: dict[str, float] = Field(description="retrain seed → test metric")
    mean: float
    std: float
    by_group: dict[str, float] = Field(default_factory=dict, description="target group (easy-VQA's yes/no, shape, colour) → "
                                       "mean test metric over the retrain seeds, for a task that reports one")
    steps: int = Field(description="training steps of one retrain")
    seconds: float = Field(description="mean wall-clock of one retrain")


class RunResult(SearchRecord, Outcome):
    """A search record with its pick's retrained result (``value``: the mean over the retrain seeds) and how it
    compares with the ground truth."""

    retrained: dict[str, float]
    retrain_steps: int
    retrain_seconds: float
    cost_steps: int = Field(description="warm-up + search + one retrain: what finding and training the pick costs")
    cost_seconds: float
    regret: float | None = None
    percentile: float | None = None
    top10: bool | None = None
    good: bool | None = Field(default=None, description="the pick is in the ground truth's good set")
    kendall_tau: float | None = Field(default=None, description="subset scores (sums of layer scores) vs ground truth")
    supernet_ranking: Ranking | None = None


class GroundTruth(_Result):
    """Every subset (``kind = all``) or a random reference sample of them, each retrained at every retrain seed."""

    kind: Literal["all", "sample"]
    retrain_seeds: list[int]
    sample_seed: int | None
    subsets: dict[str, Retrained]
    noise_std: float = Field(description="median over subsets of the std of the metric across retrain seeds")
    best: float
    median: float | None = None
    rankable: float | None = Field(default=None, description="(best − median) / noise_std: how far the space is from flat")
    rankable_goal: float | None = Field(default=None, description="the least ``rankable`` of a space methods can be told apart in")
    good_set: list[str] | None = Field(default=None, description="subsets within ``good_width`` noise sd of the best")
    good_width: float | None = None
    collapses: int | None = Field(default=None, description="retrains more than ``collapse_margin`` below their subset's best seed")
    collapse_margin: float | None = None
    top10_threshold: float = Field(description="a pick is in the top 10 % when fewer than 10 % of the subsets beat it")
    retrains: int
    retrain_seconds: float


class MethodSummary(_Result):
    value: Spread
    additional_gmacs: Spread
    regret: Spread
    percentile: Spread
    top10_share: float | None = Field(description="share of seeds whose pick is in the top 10 %")
    good_share: float | None = Field(default=None, description="share of seeds whose pick is in the good set")
    kendall_tau: Spread
    supernet_kendall_tau: Spread
    supernet_sparse_tau: Spread | None = None
    supernet_auc: Spread | None = None
    observations: Spread
    cost_steps: Spread
    cost_seconds: Spread
    search_seconds: Spread
    retrain_seconds: Spread


class RaceBudget(_Result):
    """A race's budget per seed (the study's ``ray`` section): distinct subsets, each trained from the warm-up."""

    num_trials: int
    steps_per_trial: int
    report_every: int
    scheduler: str
    grace_period: int


class Budget(_Result):
    warmup_epochs: int
    warmup_draw: str = Field("uniform", description="the warm-up's (and the budget supernets') subnets: uniform or balanced")
    search_epochs: int
    steps_per_epoch: int
    observe_every: int
    round_size: int
    observation_batches: int
    observations: int = Field(description="subsets every sampler observes per seed")
    retrain_epochs: int
    retrain_seeds: list[int]
    race: RaceBudget | None = Field(default=None, description="with a race among the samplers (asha)")


class BenchFiles(_Result):
    """Where ``das-tune bench`` wrote its results: the folder and the file names in it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    out: str
    json_name: str = Field(alias="json")
    markdown: str
    plots: list[str]


class GoodCount(_Result):
    good: int = Field(description="seeds whose pick is in the good set")
    seeds: int = Field(description="seeds whose pick was judged")


class GoalCheck(_Result):
    """One goal of the verdict for the reference method, and whether the bench met it: its pick in the good set at
    ``target`` seeds or more (``good_set``), or ahead of / not behind ``other`` at p < ``target``."""

    kind: Literal["good_set", "ahead_of", "not_behind"]
    other: str | None = None
    target: float
    met: bool
    mean_diff: float | None = Field(default=None, description="reference − other on the retrained metric")
    p_value: float | None = None


class Verdict(_Result):
    """The bench's answer: can its space tell methods apart, how often each method's pick is in the good set,
    and which goals the reference method met."""

    rankable: bool
    good_counts: dict[str, GoodCount]
    reference: str
    goals: list[GoalCheck]
    supernet_picks: GoodCount | None = Field(
        default=None, description="seeds at which the reference method's own supernet, scoring every reference subset, would pick "
        "one in the good set (its lowest loss)")


class BenchResults(_Result):
    """``results.json``: every run, the summary over seeds, the paired tests and the ground truth; the
    markdown, the terminal table and the plots are drawn from it, and a test checks the README's bench
    numbers against it."""

    study: str
    space: str
    candidates: list[str]
    num_candidates: int
    num_skip: int
    num_subsets: int
    metric: str
    higher_is_better: bool = True
    top_percent: int = Field(description="a pick is in the top when fewer than this share of reference subsets beat it")
    seeds: list[int]
    samplers: list[str]
    methods: list[str]
    reference: str
    storage: str
    tiny: bool
    budget: Budget
    warnings: list[str]
    summary: dict[str, MethodSummary]
    paired_tests: dict[str, PairedTest]
    ground_truth: GroundTruth | None
    supernet_budgets: dict[str, BudgetRanking] = Field(
        default_factory=dict, description="steps (NxSTEPS: N supernets averaged) → how supernets of that budget rank the reference"
    )
    warmup_ranking: dict[str, Ranking] = Field(
        default_factory=dict, description="per seed: the shared warm-up supernet's loss vs ground truth"
    )
    runs: list[RunResult]
    verdict: Verdict | None = None
    files: BenchFiles | None = None


# -- a front (a range of num_skip) ----------------------------------------------------------------------
class FrontPoint(Outcome):
    """One retrained subnet of a front: the full model (the reference) or one size's pick."""

    name: str = Field(description="'full' or 'skip<m>'")
    num_skip: int
    skipped: list[str]
    chosen_by: str = Field(description="how the search picked it for its size")
    observed_loss: float | None = Field(description="its best observed supernet loss in the search (None: never observed)")
    trainable_params: int
    latency_subnet_ms: float
    speedup: float
    speedup_within_noise: bool | None = Field(default=None, description="the latencies' interquartile ranges overlap")
    folder: str = Field(description="its run folder (metrics.json, subnet.json, adapters): usable by predict/export/evaluate")
    pareto: bool = Field(default=False, description="no other retrained point is at least as good in both metric and GMACs, better in one")


class TargetResult(_Result):
    """A target rule applied to the retrained front: which subnet meets it most cheaply, and why."""

    rule: str
    met: bool
    pick: str | None = Field(description="the point's name ('skip2', 'full'), None when no point meets the rule")
    skipped: list[str] | None = None
    reason: str


class FrontFile(_Result):
    """``front.json``: one search over a range of num_skip, every size's pick and the full model retrained."""

    study_name: str
    storage: str
    space: str | None
    candidates: list[str]
    num_skip: list[int]
    sampler: str
    executor: str
    observations: int
    search_seconds: float | None
    pareto_observations: int = Field(description="observation trials on the study's own (loss, GMACs) Pareto front")
    metric: str
    full: FrontPoint
    ladder: list[FrontPoint] = Field(description="one point per size with a pick, ascending size")
    missing: list[int] = Field(default_factory=list, description="sizes without a pick (never observed, non-DAS samplers)")
    target: TargetResult | None = None


# -- a ladder benchmark (a range of num_skip) --------------------------------------------------------------
class LadderRecord(_Result):
    """What one method found at one seed for every size of a range, before any retrain."""

    method: str
    kind: Literal["sampler", "training-free"]
    seed: int
    studies: list[str] = Field(description="its studies in the bench's storage (das_per_size: one per size)")
    picks: dict[str, list[str]] = Field(description="size → the subset it picks for that size")
    observations: int
    scoring_batches: int
    steps: int = Field(description="training steps of the supernet(s): warm-up + search (das_per_size: summed over the sizes)")
    seconds: float = Field(description="wall-clock of the warm-up(s) and search(es)")


class LadderPick(SubnetCost):
    num_skip: int
    skipped: list[str]
    value: float = Field(description="the retrained test metric, mean over the retrain seeds")
    retrained: dict[str, float]
    percentile: float | None = Field(description="among every subset of its size, where all are retrained")


class LadderRun(LadderRecord):
    picks_retrained: list[LadderPick]
    hypervolume: float = Field(description="of the retrained front (the full model and the picks), from the results' reference point")


class LadderSummary(_Result):
    hypervolume: Spread
    steps: Spread
    seconds: Spread
    value: dict[str, Spread] = Field(description="size → the retrained metric of that size's picks over seeds")
    percentile: dict[str, Spread]


class CostRatio(_Result):
    """das's one range search over one single-size search of das_per_size (its cost over the sizes)."""

    steps: float = Field(description="in supernet training steps, median over seeds")
    seconds: float = Field(description="in wall-clock, median over seeds")
    seeds: int


class LadderResults(_Result):
    """``results.json`` of ``das-tune bench`` on a range of num_skip: one search for the range (each sampler)
    against DAS searching each size on its own (``das_per_size``)."""

    study: str
    space: str
    candidates: list[str]
    sizes: list[int]
    metric: str
    seeds: list[int]
    methods: list[str]
    reference: str = Field(description="the method the paired tests and the cost ratio compare with (das)")
    storage: str
    tiny: bool
    observations: int = Field(description="subsets a search observes (das_per_size: per size)")
    steps_per_epoch: int
    retrain_seeds: list[int]
    full: Retrained | None
    hypervolume_reference: float | None = Field(
        description="the reference point's metric: the lowest retrained metric of any point (at 0 additional GMACs)"
    )
    ground_truth_sizes: list[int] = Field(description="sizes whose every subset is retrained: their picks have percentiles")
    summary: dict[str, LadderSummary]
    paired_tests: dict[str, dict[str, PairedTest]] = Field(description="method → size (or 'hypervolume') → das − method, paired by seed")
    cost_ratio: CostRatio | None
    warnings: list[str]
    runs: list[LadderRun]
    files: BenchFiles | None = None
