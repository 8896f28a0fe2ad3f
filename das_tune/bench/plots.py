"""The benchmark's figures as PNGs: anytime curves and metric vs cost.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): they render with the Agg backend
and leave the process's global backend alone.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from das_tune import atomic
from das_tune.results import BenchResults

ANYTIME, METRIC_VS_GMACS = "anytime.png", "metric_vs_gmacs.png"


def write_plots(results: BenchResults, out: Path) -> list[str]:
    """Draw every figure the results support into ``out``; returns their file names."""
    names = []
    if any(r.observed for r in results.runs):
        anytime(results, out / ANYTIME)
        names.append(ANYTIME)
    metric_vs_gmacs(results, out / METRIC_VS_GMACS)
    names.append(METRIC_VS_GMACS)
    return names


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
    """Every pick's retrained metric against its additional GMACs; every subset in grey with ground truth."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    gt = results.ground_truth
    if gt is not None:
        keys = list(gt["mean"])
        ax.scatter([gt["additional_gmacs"][k] for k in keys], [gt["mean"][k] for k in keys], s=80, color="lightgrey",
                   label="every subset (mean over seeds)", zorder=1)
    markers = "os^vDP*Xph"
    for i, method in enumerate([*results.samplers, *results.methods]):
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


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".")))
