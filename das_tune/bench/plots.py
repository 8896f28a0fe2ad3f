"""The benchmark's figures as PNGs: each method's picks against every subset, anytime curves, metric vs cost.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): they render with the Agg backend
and leave the process's global backend alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from das_tune.artifacts import atomic
from das_tune.artifacts.results import BenchResults, LadderResults

PICKS, ANYTIME, METRIC_VS_GMACS, LADDER = "picks.png", "anytime.png", "metric_vs_gmacs.png", "ladder.png"


def write_plots(results: BenchResults, out: Path) -> list[str]:
    """Draw every figure the results support into ``out``; returns their file names."""
    names = []
    if results.ground_truth is not None and results.runs:
        picks_vs_truth(results, out / PICKS)
        names.append(PICKS)
    if any(r.observed for r in results.runs):
        anytime(results, out / ANYTIME)
        names.append(ANYTIME)
    if results.runs:
        metric_vs_gmacs(results, out / METRIC_VS_GMACS)
        names.append(METRIC_VS_GMACS)
    return names


def _methods(results: BenchResults) -> list[str]:
    return [*results.samplers, *results.methods]


def picks_vs_truth(results: BenchResults, path: Path) -> None:
    """Per method: the distribution of every reference subset's retrained metric (violin and grey strip),
    with the method's pick at each seed marked on it, and the top-10 % threshold as a line."""
    gt = results.ground_truth
    truth = np.array([s.mean for s in gt.subsets.values()])
    methods = _methods(results)
    fig = Figure(figsize=(max(6, 1.1 * len(methods) + 2), 4.5))
    ax = fig.subplots()
    positions = np.arange(1, len(methods) + 1)
    if len(np.unique(truth)) > 1:
        parts = ax.violinplot([truth] * len(methods), positions, widths=0.8, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor("lightgrey")
            body.set_alpha(0.6)
    rng = np.random.default_rng(0)
    for x in positions:
        ax.scatter(x + rng.uniform(-0.25, 0.25, len(truth)), truth, s=6, color="grey", alpha=0.5, zorder=1)
    for x, method in zip(positions, methods):
        runs = [r for r in results.runs if r.method == method]
        colors = ["tab:green" if r.top10 else "tab:red" for r in runs]
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(runs)), [r.value for r in runs], s=36, c=colors, edgecolors="black",
                   linewidths=0.5, zorder=3)
    ax.axhline(gt.top10_threshold, color="tab:green", linestyle="--", linewidth=1, label=f"top-{results.top_percent} % threshold")
    ax.set_xticks(positions, methods, rotation=30, ha="right")
    what = "every subset" if gt.kind == "all" else f"{len(truth)} reference subsets"
    ax.set_ylabel(f"retrained test {results.metric} (mean over retrain seeds)")
    ax.set_title(f"{results.study}: picks (green: top {results.top_percent} %) on {what} (grey)")
    ax.legend(fontsize="small", loc="lower right")
    _save(fig, path)


def anytime(results: BenchResults, path: Path) -> None:
    """Best-so-far observed loss vs number of observations, per sampler: median over seeds, min–max band."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method in results.samplers:
        curves = [np.minimum.accumulate(r.observed) for r in results.runs if r.method == method and r.observed]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stack = np.stack([c[:length] for c in curves])
        x = np.arange(1, length + 1)
        (line,) = ax.plot(x, np.median(stack, axis=0), label=f"{method} (n={len(curves)})")
        ax.fill_between(x, stack.min(axis=0), stack.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("observations (subsets scored on the supernet)")
    ax.set_ylabel("best observed validation loss so far")
    ax.set_title(f"{results.study}: anytime (median over seeds, min–max)")
    ax.legend()
    _save(fig, path)


def metric_vs_gmacs(results: BenchResults, path: Path) -> None:
    """Every pick's retrained metric against its additional GMACs; the reference subsets in grey."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    gt = results.ground_truth
    if gt is not None:
        subsets = list(gt.subsets.values())
        ax.scatter([s.additional_gmacs for s in subsets], [s.mean for s in subsets], s=60, color="lightgrey",
                   label="reference subsets", zorder=1)
    markers = "os^vDP*Xph"
    for i, method in enumerate(_methods(results)):
        runs = [r for r in results.runs if r.method == method]
        ax.scatter([r.additional_gmacs for r in runs], [r.value for r in runs], marker=markers[i % len(markers)],
                   alpha=0.7, label=method, zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel("additional GMACs vs the original model (negative: cheaper)")
    ax.set_ylabel(f"retrained test {results.metric}")
    ax.set_title(f"{results.study}: every pick, every seed")
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_ladder(results: LadderResults, out: Path) -> str:
    """Each method's median retrained metric per size against that size's GMACs, the full model marked."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    markers = "os^vDP*Xph"
    for i, method in enumerate(results.methods):
        runs = [r for r in results.runs if r.method == method]
        points = [
            (np.median([q.additional_gmacs for r in runs for q in r.picks_retrained if q.num_skip == m]),
             results.summary[method].value[str(m)].median) for m in results.sizes
        ]
        points = [(g, v) for g, v in points if v is not None]
        ax.plot([g for g, _ in points], [v for _, v in points], marker=markers[i % len(markers)], alpha=0.8, label=method)
    if results.full is not None:
        ax.scatter([results.full.additional_gmacs], [results.full.mean], marker="*", s=180, color="tab:red", label="full model", zorder=4)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel("additional GMACs vs the original model (negative: cheaper)")
    ax.set_ylabel(f"retrained test {results.metric} (median over seeds)")
    ax.set_title(f"{results.study}: each size's pick, num_skip {results.sizes[0]}-{results.sizes[-1]}")
    ax.legend(fontsize="small")
    _save(fig, out / LADDER)
    return LADDER


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".")))
