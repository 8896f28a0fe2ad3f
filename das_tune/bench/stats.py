"""Statistics of a benchmark: spread over seeds, a paired test, rank correlations, and where a pick stands
among the reference subsets (regret, percentile, top 10 %).

A pick's value is compared with the values of the reference subsets (every subset, or a random sample
of them); higher is better. A *ranking* (scores, higher = predicted better, e.g. a supernet's negated loss)
is judged against the retrained truth with the retrain noise in mind: pairs whose true values lie within
the noise are ties nobody can be asked to order (``sparse_kendall_tau``); the *good set* is every subset
within two noise sd of the best one. ``percentile`` is the share of reference subsets the pick is at least as
good as (the best subset: 100), and a pick is in the top 10 % when fewer than 10 % of the reference
subsets are strictly better than it — equivalently, its percentile is above 90."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

COLLAPSE = 0.05  # a retrain this far below its subset's best retrain seed has collapsed
GOOD_WIDTH = 2.0  # the good set: within this many retrain-noise sd of the best subset
EXACT_PAIRS = 20  # a paired test enumerates every sign pattern up to this many differing pairs (10^6 patterns)
MONTE_CARLO_RESAMPLES = 100_000


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, quartiles (IQR) and range of the values that are not None/NaN, and how many there are."""
    data = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(data):
        return {"median": None, "q25": None, "q75": None, "min": None, "max": None, "n": 0}
    q25, median, q75 = np.percentile(data, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75),
            "min": float(data.min()), "max": float(data.max()), "n": len(data)}


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | str]:
    """Two-sided sign-flip permutation test of mean(a − b) = 0 over paired values (one pair per seed).

    Exact (all 2^n sign patterns) because benchmarks have few seeds, where Wilcoxon's normal approximation is
    wrong; note that n = 5 pairs cannot give p < 0.0625. A tied pair's flip changes nothing, so only the pairs that
    differ are permuted; above ``EXACT_PAIRS`` of them, a seeded Monte Carlo sample of the patterns.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    differing = diff[diff != 0]
    exact = len(differing) <= EXACT_PAIRS
    n = len(diff)
    name = ("exact sign-flip permutation (two-sided, mean difference)" if exact else
            f"sign-flip permutation (two-sided, mean difference; Monte Carlo, {MONTE_CARLO_RESAMPLES:,} resamples)")
    result = {"test": name, "n": n,
              "mean_diff": float(diff.mean()) if n else None, "median_diff": float(np.median(diff)) if n else None,
              "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())}
    if len(differing) < 2:  # one differing pair (or none): both its sign patterns are as extreme
        return {**result, "p_value": 1.0 if n else None}
    test = stats.permutation_test(
        (differing,), np.mean, permutation_type="samples", alternative="two-sided",
        n_resamples=np.inf if exact else MONTE_CARLO_RESAMPLES, rng=np.random.default_rng(0),
    )
    return {**result, "p_value": float(min(1.0, test.pvalue))}


def kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    """Kendall's τ-b between predicted scores and true results (None when either is constant)."""
    tau = stats.kendalltau(scores, truth).statistic
    return None if math.isnan(tau) else float(tau)


def spearman_rho(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    """Spearman's ρ between predicted scores and true results (None when either is constant)."""
    if len(set(scores)) < 2 or len(set(truth)) < 2:
        return None
    return float(stats.spearmanr(scores, truth).statistic)


def sparse_kendall_tau(scores: Sequence[float], truth: Sequence[float], tie: float) -> float | None:
    """Kendall's τ over the pairs the truth orders: pairs whose true values differ by ``tie`` or less (the
    retrain noise) count neither way. (C − D) / (pairs ranked by the truth): a tied score is neither
    concordant nor discordant. None when the truth orders no pair."""
    concordant = discordant = ranked = 0
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            true_diff, score_diff = truth[i] - truth[j], scores[i] - scores[j]
            if abs(true_diff) <= tie:
                continue
            ranked += 1
            concordant += true_diff * score_diff > 0
            discordant += true_diff * score_diff < 0
    return (concordant - discordant) / ranked if ranked else None


def good_set(truth: dict[str, float], noise: float, width: float = GOOD_WIDTH) -> set[str]:
    """The subsets within ``width`` noise sd of the best one: those a search may pick without regret."""
    best = max(truth.values())
    return {key for key, value in truth.items() if value >= best - width * noise}


def separation_auc(scores: Sequence[float], good: Sequence[bool]) -> float | None:
    """The chance that a good subset scores higher than a bad one (ties: one half); 0.5 is chance. With a
    supernet's negated loss as the score: the chance that a bad subset gets the higher loss. None without
    both kinds."""
    ups = [s for s, g in zip(scores, good) if g]
    downs = [s for s, g in zip(scores, good) if not g]
    if not ups or not downs:
        return None
    wins = sum((u > d) + 0.5 * (u == d) for u in ups for d in downs)
    return wins / (len(ups) * len(downs))


def top_in_good(scores: Sequence[float], good: Sequence[bool]) -> bool | None:
    """Whether the best-scored subset is in the good set (every subset tied for the best score must be): what an
    ordering picks when every subset is scored; None without subsets."""
    if not scores:
        return None
    best = max(scores)
    return all(g for s, g in zip(scores, good) if s == best)


def top_k_recall(scores: Sequence[float], truth: Sequence[float], k: int = 3) -> float:
    """The share of the ``k`` best-scored subsets that are among the true ``k`` best (a subset tied with the
    true k-th best counts as among them)."""
    k = min(k, len(scores))
    threshold = sorted(truth, reverse=True)[k - 1]
    picked = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return sum(truth[i] >= threshold for i in picked) / k


def unpaired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | str]:
    """Two-sided exact permutation test of mean(a) = mean(b) for independent samples: how a method is
    compared with a deterministic one (first_k, last_k), whose every seed picks the same subset, so that
    its spread is its pick's retrain distribution, not ten copies of one number."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    result = {"test": "exact permutation (two-sided, difference of means, unpaired)", "n": len(a) + len(b),
              "mean_diff": float(a.mean() - b.mean()) if len(a) and len(b) else None}
    if len(a) < 1 or len(b) < 1 or np.concatenate([a, b]).std() == 0:
        return {**result, "p_value": 1.0 if len(a) and len(b) else None}
    test = stats.permutation_test(
        (a, b), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent", n_resamples=np.inf, alternative="two-sided"
    )
    return {**result, "p_value": float(min(1.0, test.pvalue))}




def collapses(values: Sequence[float]) -> int:
    """One subset's retrains (one per retrain seed) that ended more than ``COLLAPSE`` below its best one."""
    return sum(v < max(values) - COLLAPSE for v in values) if values else 0


def regret(reference: Sequence[float], value: float) -> float:
    """How much worse ``value`` is than the best reference subset (negative: better than all of them)."""
    return max(reference) - value


def percentile(reference: Sequence[float], value: float) -> float:
    """100 × the share of reference subsets whose value is ≤ ``value``."""
    return 100.0 * sum(r <= value for r in reference) / len(reference)


TOP_PERCENT = 10


def in_top10(reference: Sequence[float], value: float) -> bool:
    """Fewer than 10 % of the reference subsets are strictly better than ``value`` (integer arithmetic)."""
    return 100 * sum(r > value for r in reference) < TOP_PERCENT * len(reference)


def top10_threshold(reference: Sequence[float]) -> float:
    """The lowest value that is in the top 10 %: the ⌈N/10⌉-th largest reference value."""
    ordered = sorted(reference, reverse=True)
    return ordered[-(-len(ordered) * TOP_PERCENT // 100) - 1]


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` (metric, cost) — metric up, cost down — and bounded by ``reference``
    (a metric no better, a cost no lower than any point that counts); points beyond it add nothing."""
    ref_metric, ref_cost = reference
    inside = sorted((c, m) for m, c in points if m > ref_metric and c < ref_cost)
    area, best = 0.0, ref_metric
    for i, (cost, metric) in enumerate(inside):  # cheapest first: each adds the strip up to the next cost
        best = max(best, metric)
        next_cost = inside[i + 1][0] if i + 1 < len(inside) else ref_cost
        area += (next_cost - cost) * (best - ref_metric)
    return area
