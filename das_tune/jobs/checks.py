"""Checks of a study against its space and task, done before the model is built and anything is written.

A pydantic model checks each field on its own; these check what needs the space, the task's data or a
working sampler: that the search observes at all, that a round's subsets can be distinct, that the
sampler's options work, that the output folder can be written and that an interrupted search can
resume as declared.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import optuna

from das_tune.artifacts.run_folder import (
    CHECKPOINT,
    PROGRESS_FILES,
    SPEC_FILE,
    SUBNET_FILE,
    checkpoint_workers,
    checkpoint_workers_message,
    load_checkpoint,
)
from das_tune.errors import UserError
from das_tune.samplers import sampler_from_record, sampler_record
from das_tune.search import check_executor, executor_entry
from das_tune.spec import yaml_reader
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import StudySpec
from das_tune.storage.opener import absolute_url, holds_study, shown_url
from das_tune.tasks.base import Task
from das_tune.training import loop


def check_study(spec: StudySpec, space: SkipSpace, task: Task) -> None:
    """What needs the space and the task's data but no model: checked before the model is built."""
    check_executor(spec.search)
    check_rounds(spec, space, task)
    check_sampler(spec, space)
    check_writable_folder(Path(spec.output_dir), "output_dir")


def check_rounds(spec: StudySpec, space: SkipSpace, task: Task) -> None:
    search = spec.search
    # a range's DAS rounds are of one size: the fewest subsets of a size with more than one
    subsets = min(n for m in space.sizes if (n := math.comb(len(space.candidates), m)) > 1) if space.is_range else space.num_subsets
    if search.round_size > subsets:
        raise UserError(
            f"search.round_size = {search.round_size}: a round scores distinct subsets and space {space.label} "
            f"with num_skip {space.num_skip_label} has only {subsets}; expected at most {subsets}"
        )
    if not executor_entry(search).one_shot:  # Ray Tune trials do not observe
        return
    steps = loop.steps_per_epoch(task, search.batch_size, search.max_steps_per_epoch)
    warmup, total = steps * search.warmup_epochs, steps * (search.warmup_epochs + search.search_epochs)
    rounds = total // search.observe_every - warmup // search.observe_every
    if rounds < 1:
        raise UserError(
            f"search.observe_every = {search.observe_every}: the search epochs have only {total - warmup} training "
            f"steps ({search.search_epochs} × {steps}), so no observation would run; expected at most {total - warmup}"
        )


def check_sampler(spec: StudySpec, space: SkipSpace) -> None:
    """One trial of the space with the sampler on an in-memory study: bad options fail here, not in
    the middle of a real study (where they would leave a RUNNING trial behind)."""
    options = spec.sampler.own_options
    sampler = sampler_from_record(sampler_record(spec.sampler.name, spec.seed, options, spec.search.round_size), space)
    try:
        objectives = 2 if space.is_range else 1  # a range: (observed loss, additional GMACs)
        study = optuna.create_study(sampler=sampler, directions=["minimize"] * objectives)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
            space.suggest(trial)
            study.tell(trial, [1.0] * objectives if space.is_range else 1.0)
    except Exception as err:
        message = " ".join(str(err).split())
        raise UserError(f"sampler {spec.sampler.name!r} with options {options}: {type(err).__name__}: {message}") from None


def check_resumable(spec: StudySpec) -> None:
    """An unfinished search checkpoint resumes exactly only on the number of workers that checkpointed it
    (each data-parallel rank's generator and gradients are in it)."""
    path = spec.run_dir / CHECKPOINT
    if not path.is_file():
        return
    state = load_checkpoint(path)
    if state["study_name"] != spec.resolved_study_name or state["position"].get("finished"):
        return
    written = checkpoint_workers(state)
    if written != spec.search.workers:
        raise UserError(checkpoint_workers_message(path, written, spec.search.workers))


def check_storage(spec: StudySpec) -> None:
    """A run folder's progress (search checkpoints, a retrain) resumes only with the storage that holds its
    study: in another one, or in a new empty one in a deleted storage's place, the search would start an
    empty study and lose its trials. Called under the run folder's lock: a folder in use is refused first."""
    folder = spec.run_dir
    if not (folder / SPEC_FILE).is_file() or not any((folder / name).is_file() for name in (*PROGRESS_FILES, SUBNET_FILE)):
        return
    recorded = yaml_reader.load(StudySpec, folder / SPEC_FILE).storage
    here = shown_url(spec.storage)
    if holds_study(spec.storage, spec.resolved_study_name):  # a storage that cannot be made: its one-line error
        return
    if absolute_url(recorded) != absolute_url(spec.storage):
        raise UserError(
            f"{folder} holds the progress of study {spec.resolved_study_name!r} in storage {shown_url(recorded)}, which {here} "
            f"does not have: give --storage {shown_url(recorded)} to resume it, or --fresh to start again in {here}"
        )
    checkpoint = folder / CHECKPOINT
    if checkpoint.is_file() and load_checkpoint(checkpoint)["study_name"] == spec.resolved_study_name:
        raise UserError(
            f"{checkpoint}: a search of study {spec.resolved_study_name!r}, which storage {here} does not hold "
            "(deleted, or another storage?); pass the storage it ran with (--storage), or --fresh to start again"
        )


def check_writable_folder(folder: Path, field: str) -> None:
    """``folder`` exists as a writable folder or can be created: probed in its nearest existing
    ancestor with a temporary folder that is removed again."""
    folder = folder.expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UserError(f"{field} {folder}: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".das-tune-probe-", dir=existing))
    except OSError as err:
        raise UserError(f"{field} {folder}: cannot write in {existing} ({err.strerror})") from None
