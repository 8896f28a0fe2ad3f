"""A range's front as files: ``front.md`` (a markdown table and the target's verdict), ``front.png`` and
``front.json`` (``results.FrontFile``), written by :func:`write_front`."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from das_tune.artifacts import atomic
from das_tune.artifacts.results import FrontFile, FrontPoint, RetrainMetrics, write_json
from das_tune.spec.spaces import size_label

FRONT_JSON, FRONT_PNG, FRONT_MD = "front.json", "front.png", "front.md"


def write_front(front: FrontFile, run_dir: Path) -> None:
    """Each file atomically; front.json last."""
    atomic.write_text(run_dir / FRONT_MD, markdown(front))
    plot_front(front, run_dir / FRONT_PNG)
    write_json(front, run_dir / FRONT_JSON)


def markdown(front: FrontFile) -> str:
    """The front as a markdown table (what README sections and notes show), and the target's verdict."""
    lines = [
        f"| subnet | skipped | chosen by | test {front.metric} | additional GMACs | FLOPs saved | latency (ms) | speedup | Pareto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in [front.full, *front.ladder]:
        lines.append(
            f"| {p.name} | {', '.join(p.skipped) or '—'} | {p.chosen_by} | {p.value:.4f} | {p.additional_gmacs:+.4f} | "
            f"{p.flops_saved:.1%} | {p.latency_subnet_ms:.2f} | {speedup_label(p)} | {'yes' if p.pareto else ''} |"
        )
    if front.missing:
        lines += ["", f"No pick for num_skip {', '.join(map(str, front.missing))}: the search never observed a subset of that size."]
    if front.target is not None:
        lines += ["", f"**Target** {front.target.rule}: {front.target.reason}."]
    return "\n".join(lines) + "\n"


def speedup_label(point: FrontPoint | RetrainMetrics) -> str:
    """The speed-up, said to be within the noise when its two latencies' interquartile ranges overlap."""
    return f"{point.speedup:.2f}×" + (" (within noise)" if point.speedup_within_noise else "")


def plot_front(front: FrontFile, path: Path) -> None:
    """Retrained metric vs additional GMACs: the ladder (each point labelled by its size), the Pareto
    points joined, the full model marked, the target's pick circled."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    ladder = front.ladder
    ax.scatter([p.additional_gmacs for p in ladder], [p.value for p in ladder], s=40, color="tab:blue", label="each size's pick", zorder=3)
    for p in ladder:
        ax.annotate(f"skip {p.num_skip}", (p.additional_gmacs, p.value), textcoords="offset points", xytext=(5, 5), fontsize="small")
    pareto = sorted([p for p in [front.full, *ladder] if p.pareto], key=lambda p: p.additional_gmacs)
    ax.plot([p.additional_gmacs for p in pareto], [p.value for p in pareto], color="tab:blue", alpha=0.5, zorder=2,
            label="retrained Pareto front")
    ax.scatter([front.full.additional_gmacs], [front.full.value], marker="*", s=180, color="tab:red", label="full model", zorder=4)
    ax.axhline(front.full.value, color="tab:red", linestyle=":", linewidth=1)
    target = front.target
    if target is not None and target.pick is not None:
        picked = next(p for p in [front.full, *ladder] if p.name == target.pick)
        ax.scatter([picked.additional_gmacs], [picked.value], s=320, facecolors="none", edgecolors="tab:green", linewidths=2,
                   label=f"target: {target.rule}", zorder=5)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel("additional GMACs vs the original model (negative: cheaper)")
    ax.set_ylabel(f"retrained test {front.metric}")
    ax.set_title(f"{front.study_name}: one search, num_skip {size_label(front.num_skip)}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
