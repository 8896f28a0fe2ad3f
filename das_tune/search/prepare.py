"""What builds a search: the spec's study opened in its storage (created, resumed or started again), its
sampler's skip policy and the cost model, gathered into the :class:`SearchRun` an executor runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from das_tune.backbones.flops import CostModel
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.samplers import SAMPLER_ATTR, sampler_from_record, sampler_record, skip_policy
from das_tune.search.base import SearchRun
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import StudySpec
from das_tune.storage.opener import OpenedStorage, study_exists
from das_tune.training.components import Components

SETTINGS_ATTR = "das_tune:settings"  # study system attr: StudySpec.search_settings() at creation


def open_spec_study(
    spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter, storage: OpenedStorage | None = None
) -> optuna.Study:
    """The spec's study in ``storage`` (default: opened from ``spec.storage``), created or resumed."""
    return _open_study(spec, parts, fresh=fresh, reporter=reporter, storage=storage)


def _open_study(spec: StudySpec, parts: Components, *, fresh: bool, reporter: Reporter, storage: OpenedStorage | None) -> optuna.Study:
    record = sampler_record(spec.sampler.name, spec.seed, spec.sampler.own_options, spec.search.round_size)
    sampler = sampler_from_record(record, parts.space)  # a bad sampler name or option fails before the storage is opened
    storage = storage or OpenedStorage.open(spec.storage)
    return open_study(
        storage, spec.resolved_study_name, sampler, record, parts.space, fresh=fresh, log=reporter.log, settings=spec.search_settings()
    )


def prepare_search(
    spec: StudySpec,
    parts: Components,
    *,
    fresh: bool = False,
    reporter: Reporter,
    storage: OpenedStorage | None = None,
    warmup_checkpoint: Path | None = None,
) -> SearchRun:
    """The spec's study opened (``storage``: the opened ``spec.storage``, opened here if not given),
    its sampler's skip policy and the cost model: what an executor runs."""
    study = _open_study(spec, parts, fresh=fresh, reporter=reporter, storage=storage)
    policy = skip_policy(study.sampler, parts.space, spec.search.round_size)
    return SearchRun(spec, parts, study, policy, CostModel(parts.model), reporter, warmup_checkpoint)


def open_study(
    opened: OpenedStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    sampler_record: dict,
    space: SkipSpace,
    *,
    fresh: bool = False,
    log=print,
    settings: dict[str, Any] | None = None,
) -> optuna.Study:
    """Resume ``name`` if it exists (same sampler and ``settings``, see ``StudySpec.search_settings``), else
    create it and record how it samples and its settings.

    Call it holding the study's lease (``das_tune.storage.lease``). Trials a dead process left RUNNING are the
    executor's to recover (the one-shot search re-scores them in their own round, Ray Tune retries them).
    """
    storage = opened.optuna
    if study_exists(storage, name):
        if fresh:
            count = len(optuna.load_study(study_name=name, storage=storage).trials)
            optuna.delete_study(study_name=name, storage=storage)
            log(f"--fresh: deleted study {name!r} ({count} trials) from {opened.shown}")
        else:
            return _resume(opened, name, sampler, sampler_record, space, log, settings)
    directions = ["minimize", "minimize"] if space.is_range else ["minimize"]  # a range: (observed loss, additional GMACs)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions)
    storage.set_study_system_attr(study._study_id, SAMPLER_ATTR, sampler_record)
    if settings is not None:
        storage.set_study_system_attr(study._study_id, SETTINGS_ATTR, settings)
    study.set_user_attr("space", space.name)
    study.set_user_attr("candidates", list(space.candidates))
    study.set_user_attr("num_skip", space.recorded_num_skip)
    return study


def _check_settings(name: str, recorded: dict[str, Any] | None, settings: dict[str, Any] | None) -> None:
    """A study resumes only with the settings it was run with (a study of an older das-tune records none)."""
    if recorded is None or settings is None or recorded == settings:
        return
    changed = [f"{key} = {recorded.get(key)!r} → {settings.get(key)!r}" for key in sorted(recorded.keys() | settings.keys())
               if recorded.get(key) != settings.get(key)]
    shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    raise UserError(
        f"study {name!r} was run with other settings ({shown}); pass --fresh to start it again "
        "or --set study_name=NEW for a new study"
    )


def _resume(opened: OpenedStorage, name: str, sampler, sampler_record: dict, space: SkipSpace, log, settings) -> optuna.Study:
    storage = opened.optuna
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    attrs = storage.get_study_system_attrs(study._study_id)
    _check_settings(name, attrs.get(SETTINGS_ATTR), settings)
    recorded = attrs.get(SAMPLER_ATTR)
    if recorded is not None and recorded != sampler_record:
        raise UserError(
            f"study {name!r} in {opened.shown} was run with sampler {recorded}, not {sampler_record}; "
            "pass --fresh to start it again or --set study_name=NEW for a new study"
        )
    if (
        study.user_attrs.get("candidates") not in (None, list(space.candidates))
        or study.user_attrs.get("num_skip") not in (None, space.recorded_num_skip)
    ):
        raise UserError(f"study {name!r} was run on another space; pass --fresh or --set study_name=NEW")
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    log(f"resuming study {name!r}: {len(study.trials)} trials" + (f", {running} interrupted" if running else ""))
    return study
