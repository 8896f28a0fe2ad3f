"""Statistics of a benchmark: spread over seeds, a paired test, rank correlation, regret and rank."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, quartiles (IQR) and range of the values that are not None/NaN, and how many there are."""
    data = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if not len(data):
        return {"median": None, "q25": None, "q75": None, "min": None, "max": None, "n": 0}
    q25, median, q75 = np.percentile(data, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "min": float(data.min()), "max": float(data.max()), "n": len(data)}


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | str]:
    """Two-sided exact sign-flip permutation test of mean(a − b) = 0 over paired values (one pair per seed).

    Exact (all 2^n sign patterns) because benchmarks have few seeds, where Wilcoxon's normal
    approximation is wrong; note that n = 5 pairs cannot give p < 0.0625.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    result = {"test": "exact sign-flip permutation (two-sided, mean difference)", "n": n,
              "mean_diff": float(diff.mean()) if n else None, "median_diff": float(np.median(diff)) if n else None,
              "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum())}
    if n == 0 or not diff.any():
        return {**result, "p_value": 1.0 if n else None}
    test = stats.permutation_test(
        (diff,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    )
    return {**result, "p_value": float(min(1.0, test.pvalue))}


def kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float | None:
    """Kendall's τ-b between predicted scores and true results (None when either is constant)."""
    tau = stats.kendalltau(scores, truth).statistic
    return None if math.isnan(tau) else float(tau)


def regret(truth: Mapping[str, float], pick: str) -> float:
    """How much worse ``pick`` is than the best subset (higher-is-better results)."""
    return max(truth.values()) - truth[pick]


def rank(truth: Mapping[str, float], pick: str) -> int:
    """1 + the number of subsets strictly better than ``pick`` (1 = best; ties share a rank)."""
    return 1 + sum(value > truth[pick] for value in truth.values())
