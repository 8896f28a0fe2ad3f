"""Inspecting studies in optuna-dashboard: the search's own plots and a note, saved into the storage.

``save_study_report`` writes three plots and a markdown note into a study with optuna-dashboard's
public API (the plots show on the study page ``/dashboard/studies/<id>``, the note on its Note
tab); ``serve`` runs the dashboard for a storage URL on loopback.

Scale (``benchmarks/dashboard_scale.py``; a paper-scale METER/VQAv2 search has ~10,000 trials)
-----------------------------------------------------------------------------------------------
optuna-dashboard 0.21 sends a study's whole trial list in one JSON response, each param as a dict
with its distribution (~230 B per param). Measured on a 2-CPU machine under load (times vary 2x between runs), SQLite, ``meter_global``
(24 keys per trial plus ``skipped``, ``round``, ``phase``, ``additional_gmacs``, ``trainable_params``):

* ``GET /api/studies``: 0.01 s at any size (it reads no trials);
* ``GET /api/studies/<id>?after=0``: 1k trials 6.8 MB, 2.1 s first / 0.7 s cached; 10k trials
  67 MB, 26 s first / 8 s cached (x12.7: linear in trials); the 24 ``skip.*`` keys are 82 % of
  the 6.7 kB per trial — with 12 keys (``meter_fusion``) 3.7 kB per trial, 16 s / 3.9 s;
* every request, the page's periodic refresh (``?after=N``) included, re-walks all params of a
  finished study (its search-space cache only advances past unfinished trials): 6–8 s at 10k;
* the report saved here adds 0.2 MB (plots down-sampled to ``MAX_POINTS`` rounds; a full-resolution
  plot would be scanned once per trial, since the dashboard scans the study's system attributes
  for every trial it serialises).

So, per trial: keep the ``skip.<layer>`` keys (they are the search space every sampler needs, and
samplers replay from them); keep ``skipped`` a short list of names (~50 B; one 0/1 attribute per
layer would add ~20 %); keep the other attributes a few scalars; no per-trial notes, artifacts or
intermediate values during the search. 10k trials is the dashboard's practical limit (a first page
load of tens of seconds and ~70 MB of JSON): keep one study per seed, as the
``<study>-<sampler>-seed<k>`` names do, and read paper-scale searches from the saved plots and note.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _wsgi_server

import numpy as np
import optuna
import optuna_dashboard
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel

from das_tune.artifacts.results import FrontFile
from das_tune.errors import UserError
from das_tune.report.front import markdown
from das_tune.samplers import SAMPLER_ATTR, SkipPolicy, study_policy
from das_tune.spec.spaces import SkipSpace
from das_tune.storage.opener import open_storage, shown_url

MAX_POINTS = 200  # rounds per plotted line: keeps each saved plot a few kB at any study size
PLOT_IDS = {"layers": "das-tune-layers", "loss": "das-tune-loss", "result": "das-tune-result"}
FRONT_PLOT_IDS = {"layers": "das-tune-layers", "loss": "das-tune-loss", "pareto": "das-tune-pareto", "front": "das-tune-front"}
_TEMPLATE = "plotly_white"
OBJECTIVE_NAMES = ("observed loss", "additional GMACs")  # a range's two objectives


# -- the report -----------------------------------------------------------------------------------
def save_study_report(
    study: optuna.Study,
    space: SkipSpace,
    *,
    policy: SkipPolicy | None = None,
    chosen: frozenset[str] | set[str] | list[str] | None = None,
    result: BaseModel | dict[str, Any] | None = None,
    artifacts_dir: str | Path | None = None,
) -> None:
    """Save the layer plot, the loss plot, the result plot (if ``result``) and a note into ``study``.

    Plots have fixed ids, so saving again replaces them. ``result`` (``RetrainMetrics`` or a dict)
    holds at least ``metric``, ``value``, ``additional_gmacs`` and ``skipped`` of the retrained subnet.
    ``policy`` defaults to the study's (see ``samplers.study_policy``).
    """
    policy = policy or study_policy(study, space)
    result = result.model_dump() if isinstance(result, BaseModel) else result
    chosen = frozenset(chosen) if chosen is not None else policy.chosen(study)
    trials = observations(study, space)
    history = policy.history(study)
    if history is not None:
        layers = probability_figure(space, history, chosen)
    else:
        layers = frequency_figure(space, trials)
    optuna_dashboard.save_plotly_graph_object(study, layers, graph_object_id=PLOT_IDS["layers"])
    optuna_dashboard.save_plotly_graph_object(study, loss_figure(trials), graph_object_id=PLOT_IDS["loss"])
    if result is not None:
        optuna_dashboard.save_plotly_graph_object(study, result_figure(result), graph_object_id=PLOT_IDS["result"])
    optuna_dashboard.save_note(study, note(study, space, policy, chosen, len(trials), result, artifacts_dir))


def observations(study: optuna.Study, space: SkipSpace) -> list[FrozenTrial]:
    """The study's completed observation trials of ``space`` with a finite value."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("phase", "search") == "search" and space.subset_of(t) is not None and math.isfinite(t.values[0])
    ]


def save_front_report(
    study: optuna.Study, space: SkipSpace, front: FrontFile, *, policy: SkipPolicy | None = None, artifacts_dir: str | Path | None = None
) -> None:
    """A range's report: the layer and loss plots, Optuna's Pareto-front plot of the observations
    (observed loss vs additional GMACs), the retrained front, and a note with the front's table."""

    policy = policy or study_policy(study, space)
    with warnings.catch_warnings():  # experimental in Optuna since 3.2, and the only way to name the objectives
        warnings.filterwarnings("ignore", r".*set_metric_names is experimental", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVE_NAMES))  # the dashboard names the two objectives
    trials = observations(study, space)
    history = policy.history(study)
    largest = frozenset(front.ladder[-1].skipped) if front.ladder else frozenset()
    layers = probability_figure(space, history, largest) if history is not None else frequency_figure(space, trials)
    pareto = optuna.visualization.plot_pareto_front(study, target_names=list(OBJECTIVE_NAMES))
    for graph_id, figure in (("layers", layers), ("loss", loss_figure(trials)), ("pareto", pareto), ("front", front_figure(front))):
        optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id=FRONT_PLOT_IDS[graph_id])
    lines = [
        f"## {study.study_name}", "",
        f"- **space**: {space.label} — skip {space.num_skip_label} of {len(space.candidates)} layers, one search (two objectives)",
        f"- **sampler**: {front.sampler}; **observations**: {len(trials)} completed trials, "
        f"{front.pareto_observations} on their Pareto front",
    ]
    if artifacts_dir is not None:
        lines.append(f"- **artifacts**: `{Path(artifacts_dir)}` (front.json, front.png, front.md)")
    optuna_dashboard.save_note(study, "\n".join(lines) + "\n\n" + markdown(front))


def front_figure(front: FrontFile) -> go.Figure:
    """The retrained front: each size's pick and the full model, metric vs additional GMACs."""
    ladder = front.ladder
    fig = go.Figure([
        go.Scatter(x=[p.additional_gmacs for p in ladder], y=[p.value for p in ladder], mode="markers+text",
                   text=[f"skip {p.num_skip}" for p in ladder], textposition="top right", name="each size's pick"),
        go.Scatter(x=[front.full.additional_gmacs], y=[front.full.value], mode="markers", marker={"symbol": "star", "size": 14},
                   name="full model"),
    ])
    return _layout(fig, "Retrained front (das-tune)", "additional GMACs (negative = saved)", f"test {front.metric}")


def round_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("round", trial.number))


def _sample_rows(n: int) -> np.ndarray:
    """At most MAX_POINTS evenly spread row indices of ``n``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(int))


# -- figures --------------------------------------------------------------------------------------
def probability_figure(space: SkipSpace, history: np.ndarray, chosen: frozenset[str]) -> go.Figure:
    """Each layer's skip probability over the rounds (row r: after r rounds)."""
    rows = _sample_rows(len(history))
    p = history[rows]
    fig = go.Figure()
    for i, layer in enumerate(space.candidates):
        picked = layer in chosen
        fig.add_trace(go.Scatter(
            x=rows, y=p[:, i].astype(np.float32), mode="lines", name=f"{layer} (skipped)" if picked else layer,
            line={"width": 3 if picked else 1},
        ))
    return _layout(fig, "Skip probability of each layer (DAS: sigmoid(gate))", "rounds observed", "p(skip)")


def frequency_figure(space: SkipSpace, trials: list[FrozenTrial]) -> go.Figure:
    """How often each layer was skipped, per bin of rounds (samplers without gates)."""
    rounds = np.array([round_of(t) for t in trials], dtype=int)
    subsets = [space.subset_of(t) for t in trials]
    skipped = np.array([[c in s for c in space.candidates] for s in subsets], dtype=float).reshape(len(trials), len(space.candidates))
    width = math.ceil((rounds.max() + 1) / MAX_POINTS) if len(rounds) else 1
    bins = rounds // width
    n = bins.max() + 1 if len(bins) else 0
    counts = np.bincount(bins, minlength=n)
    freq = np.stack([np.bincount(bins, weights=skipped[:, i], minlength=n) for i in range(len(space.candidates))])
    with np.errstate(invalid="ignore"):  # a bin without observations stays empty (NaN)
        freq = (freq / counts).astype(np.float32)
    fig = go.Figure(go.Heatmap(x=np.arange(n, dtype=np.int32) * width, y=list(space.candidates), z=freq,
                               colorscale="Blues", colorbar={"title": "skipped"}))
    return _layout(fig, "How often each layer was skipped, per round", "round", "layer")


def loss_figure(trials: list[FrozenTrial]) -> go.Figure:
    by_round: dict[int, list[float]] = defaultdict(list)
    for t in trials:
        by_round[round_of(t)].append(t.values[0])
    rounds = np.array(sorted(by_round), dtype=np.int32)
    rows = _sample_rows(len(rounds)) if len(rounds) else rounds
    fig = go.Figure([
        go.Scattergl(x=np.array([round_of(t) for t in trials], dtype=np.int32), y=np.array([t.values[0] for t in trials], dtype=np.float32),
                     mode="markers", name="observation", marker={"size": 4, "opacity": 0.5, "color": "gray"}),
        go.Scatter(x=rounds[rows], y=np.array([np.mean(by_round[r]) for r in rounds[rows]], dtype=np.float32), name="mean per round"),
        go.Scatter(x=rounds[rows], y=np.array([np.min(by_round[r]) for r in rounds[rows]], dtype=np.float32), name="min per round"),
    ])
    return _layout(fig, "Observed loss per round", "round", "loss")


def result_figure(result: dict[str, Any]) -> go.Figure:
    label = ", ".join(result["skipped"])
    fig = go.Figure(go.Scatter(
        x=[result["additional_gmacs"]], y=[result["value"]], mode="markers+text", text=[f"skip {label}"],
        textposition="top right", marker={"size": 12}, name="retrained subnet",
    ))
    fig.add_vline(x=0, line_dash="dot", annotation_text="original model")
    return _layout(fig, "Retrained subnet", "additional GMACs (negative = saved)", result["metric"])


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    return fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template=_TEMPLATE)


# -- the note -------------------------------------------------------------------------------------
def note(
    study: optuna.Study,
    space: SkipSpace,
    policy: SkipPolicy,
    chosen: frozenset[str],
    n_observations: int,
    result: dict[str, Any] | None,
    artifacts_dir: str | Path | None,
) -> str:
    recorded = study._storage.get_study_system_attrs(study._study_id).get(SAMPLER_ATTR, {})
    how = ", ".join(f"{k} {v}" for k, v in recorded.items() if k != "name")
    lines = [
        f"## {study.study_name}",
        "",
        f"- **space**: {space.label} — skip {space.num_skip} of {len(space.candidates)} layers",
        f"- **sampler**: {recorded.get('name', type(study.sampler).__name__)}" + (f" ({how})" if how else ""),
        f"- **observations**: {n_observations} completed trials",
        f"- **chosen layers (skipped)**: {', '.join(space.ordered(chosen))}",
    ]
    if result is not None:
        lines.append(
            f"- **retrained**: {result['metric']} = {result['value']:.4g}, "
            f"additional GMACs = {result['additional_gmacs']:+.3f} (negative = saved)"
        )
    if artifacts_dir is not None:
        lines.append(f"- **artifacts**: `{Path(artifacts_dir)}`")
    probabilities = policy.probabilities(study)
    if probabilities is not None:
        lines += ["", "| layer | p(skip) |", "|---|---|"]
        lines += [f"| {c} | {probabilities[c]:.3f} |" for c in sorted(probabilities, key=probabilities.get, reverse=True)]
    return "\n".join(lines) + "\n"


# -- the server -----------------------------------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the dashboard's browser page polls; one slow request must not block others


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the page polls every few seconds
        pass


def make_server(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A dashboard server for ``storage_url`` bound to ``host:port`` (0: a free port), not yet serving."""
    app = optuna_dashboard.wsgi(open_storage(storage_url, must_exist=True))
    try:
        return _wsgi_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as err:
        raise UserError(f"dashboard: cannot listen on {host}:{port} ({err.strerror}); pass another --port") from None


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, quiet: bool = False) -> None:
    """Run optuna-dashboard for ``storage_url`` until Ctrl-C."""
    server = make_server(storage_url, host, port)
    if not quiet:
        print(f"optuna-dashboard for {shown_url(storage_url)}: http://{host}:{server.server_port}/dashboard (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
