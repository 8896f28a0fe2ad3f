"""One search for every num_skip of a range, the ladder retrained, and the accuracy–GMACs front.

    from das_tune.jobs.front import run_front
    from das_tune.spec.study import load_study_spec
    front = run_front(load_study_spec("easyvqa_minilm", {"num_skip": "1-3"}), target=parse_target("accuracy>=full-0.01"))

The search is the study's ordinary one-shot search on the range's space: the supernet trains subnets
of every size (a size drawn uniformly per step), and the observations are two-objective trials
(observed loss, additional GMACs). Its skip policy then gives one pick per size (DAS: the top-m gates,
a ladder of nested subsets; other samplers: each size's best observed subset). Every pick, and the full
model once as the reference, is retrained from the pre-trained weights into its own run folder
``<run_dir>/front/skip<m>`` (``front/full``), reused when it is already there; the result is
``front.json`` (``results.FrontFile``), ``front.png``, ``front.md`` and the study's dashboard report.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from das_tune.artifacts.results import FoundBy, FrontFile, FrontPoint, RetrainMetrics
from das_tune.artifacts.run_folder import FRONT_DIR, artifacts_folder, finished_metrics, save_spec
from das_tune.backbones.flops import Timing
from das_tune.errors import UserError
from das_tune.jobs.runner import Searched, opening, search
from das_tune.jobs.target import Target, choose
from das_tune.progress import Reporter
from das_tune.report.dashboard import save_front_report
from das_tune.report.front import FRONT_JSON, FRONT_MD, FRONT_PNG, write_front
from das_tune.samplers import SAMPLERS, SINGLE_OBJECTIVE
from das_tune.search import ONESHOT, executor_name
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import StudySpec
from das_tune.tasks.base import Task
from das_tune.training.components import Components
from das_tune.training.retrain import full_model_latency, retrain

FULL = "full"


def run_front(spec: StudySpec, *, fresh: bool = False, reporter: Reporter | None = None, target: Target | None = None) -> FrontFile:
    """Search the range, retrain every size's pick and the full model, write the front; apply ``target``."""
    reporter = reporter or Reporter()
    rungs = sorted((spec.run_dir / FRONT_DIR).glob("*"))
    check = partial(check_front, target=target)
    with opening(spec, fresh=fresh, reporter=reporter, folders=rungs, check=check, clear=_clear_front) as (parts, storage):
        save_spec(spec)
        found = search(spec, parts, fresh=fresh, reporter=reporter, storage=storage)
        picks = found.policy.picks(found.study)
        reporter.log("picks: " + found.policy.describe(found.study))
        retrain_point = partial(_retrain, spec, parts, found_by=found.found_by, reporter=reporter, full_latency=full_model_latency(parts))
        full = _point(FULL, 0, retrain_point(frozenset(), FULL), found, "the reference: every layer kept")
        ladder = [
            _point(f"skip{m}", m, retrain_point(subset, f"skip{m}"), found, _chosen_by(found, m))
            for m, subset in sorted(picks.items()) if m > 0
        ]
        front = _front(spec, parts, found, full, _mark_pareto(full, ladder), picks, target)
        write_front(front, spec.run_dir)
        save_front_report(found.study, parts.space, front, policy=found.policy, artifacts_dir=spec.run_dir)
    return front


def _front(
    spec: StudySpec, parts: Components, found: Searched, full: FrontPoint, ladder: list[FrontPoint],
    picks: dict[int, frozenset[str]], target: Target | None,
) -> FrontFile:
    return FrontFile(
        study_name=found.study.study_name, storage=found.found_by.storage or spec.storage, space=parts.space.name,
        candidates=list(parts.space.candidates), num_skip=list(parts.space.sizes), sampler=spec.sampler.name,
        executor=executor_name(spec.search), observations=found.found_by.observations, search_seconds=found.found_by.search_seconds,
        pareto_observations=len(found.study.best_trials), metric=parts.task.metric, full=full, ladder=ladder,
        missing=[m for m in parts.space.sizes if m > 0 and m not in picks],
        target=choose(target, full, ladder) if target is not None else None,
    )


def check_front(spec: StudySpec, space: SkipSpace, task: Task, target: Target | None) -> None:
    """What a front needs, checked before the model is built and anything is written."""
    if not space.is_range:
        raise UserError(f"a front needs a range of num_skip (e.g. --num-skip 1-3); space {space.label} skips {space.num_skip}")
    if executor_name(spec.search) != ONESHOT:
        raise UserError(f"a range of num_skip runs on the oneshot executor with one worker, not {executor_name(spec.search)!r}")
    if spec.sampler.name in SINGLE_OBJECTIVE:
        others = ", ".join(name for name in SAMPLERS if name not in SINGLE_OBJECTIVE)
        raise UserError(f"sampler {spec.sampler.name!r} cannot search two objectives (observed loss, additional GMACs); "
                        f"use one of {others} (tpe: multi-objective TPE)")
    if target is not None:
        target.check_metric(task.metric)


def _retrain(
    spec: StudySpec, parts: Components, skipped: frozenset[str], name: str, *, found_by: FoundBy, reporter: Reporter,
    full_latency: Timing,
) -> tuple[RetrainMetrics, Path]:
    """Retrain one point into its own run folder (a single-size run folder: predict/export/evaluate read
    it); reused when finished; a folder holding another subnet or budget is kept (``artifacts_folder``).
    Every point is compared with one measurement of the full model's latency, ``full_latency``."""
    size = len(skipped) or min(m for m in parts.space.sizes if m > 0)  # the full model: a valid num_skip for subnet.json
    rung = spec.model_copy(update={"num_skip": size, "output_dir": str(spec.run_dir / FRONT_DIR), "study_name": name})
    folder = artifacts_folder(rung.run_dir, rung, skipped)
    metrics = finished_metrics(rung, skipped, folder)
    if metrics is not None:
        reporter.log(f"{name} was already retrained: {folder}")
        return metrics, folder
    reporter.log(f"retraining {name}: skip {parts.space.ordered(skipped) or 'nothing'}")
    return retrain(rung, parts, skipped, found_by, reporter, out_dir=folder, full_latency=full_latency), folder


def _clear_front(run_dir: Path) -> list[str]:
    """``--fresh``: the front's files and its retrains."""
    removed = []
    for name in (FRONT_JSON, FRONT_PNG, FRONT_MD):
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    if (run_dir / FRONT_DIR).is_dir():
        shutil.rmtree(run_dir / FRONT_DIR)
        removed.append(f"{FRONT_DIR}/")
    return removed


def _chosen_by(found: Searched, size: int) -> str:
    if found.policy.probabilities(found.study) is not None:
        return f"top-{size} gates"
    return f"the best observed loss of size {size}"


def _point(name: str, size: int, retrained: tuple[RetrainMetrics, Path], found: Searched, chosen_by: str) -> FrontPoint:
    metrics, folder = retrained
    space = found.policy.space
    observed = [
        t.values[0] for t in found.study.get_trials(deepcopy=False)
        if t.values is not None and space.subset_of(t) == frozenset(metrics.skipped)
    ]
    retrain_fields = metrics.model_dump(include=set(FrontPoint.model_fields) & set(RetrainMetrics.model_fields))
    observed_loss = min(observed) if observed else None
    return FrontPoint(name=name, num_skip=size, chosen_by=chosen_by, observed_loss=observed_loss, folder=str(folder), **retrain_fields)


def _mark_pareto(full: FrontPoint, ladder: list[FrontPoint]) -> list[FrontPoint]:
    """The ladder with ``pareto`` set: no point (the full model included) dominates it (metric up, GMACs down)."""
    points = [full, *ladder]

    def dominated(p: FrontPoint) -> bool:
        return any(
            q is not p and q.value >= p.value and q.additional_gmacs <= p.additional_gmacs
            and (q.value > p.value or q.additional_gmacs < p.additional_gmacs)
            for q in points
        )

    full.pareto = not dominated(full)
    return [p.model_copy(update={"pareto": not dominated(p)}) for p in ladder]
