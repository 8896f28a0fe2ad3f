"""Opening Optuna storages (one opener for every command) and a study in them: create, resume, or
start fresh on request — never overwrite.

A storage is an Optuna URL (``sqlite:///runs.db``, ``postgresql://…``) or the path of a journal file
(``journal.log``, ``optuna.storages.journal``): what suits a shared file system or many processes.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from das_tune.errors import UserError
from das_tune.samplers import SAMPLER_ATTR
from das_tune.spaces import SkipSpace

DEFAULT_STORAGE = "sqlite:///das_tune.db"


def local_file(url: str) -> Path | None:
    """The file an SQLite URL or a journal path names; None for a server URL."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser()
    return None if "://" in url else Path(url).expanduser()


def open_storage(url: str, *, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """The storage at ``url``, created unless ``must_exist`` (then a missing file is a UserError).
    Errors are one line, with the URL's password hidden."""
    path = local_file(url)
    if path is not None and must_exist and not path.is_file():
        raise UserError(f"storage {shown_url(url)!r} does not exist: expected an Optuna storage a study was run with (e.g. {DEFAULT_STORAGE})")
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if "://" not in url:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return _create(url)
    except ImportError:
        raise UserError(f"storage {shown_url(url)}: its database driver is not installed (PostgreSQL: pip install 'das-tune[postgresql]')") from None
    except Exception as err:  # a bad URL, an unreachable server, a refused password, an unwritable folder
        raise UserError(f"storage {shown_url(url)} cannot be opened: {_first_line(err)}") from None


def _create(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """Optuna creates its tables on first use; processes that start at once on a fresh database
    (several studies, several machines) race on that DDL and the losers see a duplicate table or
    type. Once the winner is done the schema exists, so a loser simply tries again."""
    for attempt in range(1, attempts):
        try:
            return optuna.storages.get_storage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.2 * attempt)
    return optuna.storages.get_storage(url)


def shown_url(url: str) -> str:
    """``url`` with its password hidden: storage URLs end up in messages, logs and subnet.json."""
    if "://" not in url:
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL
        return url


def _first_line(err: Exception) -> str:
    cause = getattr(err, "orig", None) or err  # SQLAlchemy wraps the driver's own error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return " ".join(lines[:1]) or type(cause).__name__


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    sampler_record: dict,
    space: SkipSpace,
    *,
    url: str,
    fresh: bool = False,
    log=print,
) -> optuna.Study:
    """Resume ``name`` if it exists (same sampler), else create it and record how it samples.

    Trials left RUNNING by a process that died are marked FAIL on resume: one-shot search owns its
    study, so nothing else can be running them. ``url`` names the storage in messages.
    """
    if study_exists(storage, name):
        if fresh:
            count = len(optuna.load_study(study_name=name, storage=storage).trials)
            optuna.delete_study(study_name=name, storage=storage)
            log(f"--fresh: deleted study {name!r} ({count} trials) from {shown_url(url)}")
        else:
            return _resume(storage, url, name, sampler, sampler_record, space, log)
    directions = ["minimize", "minimize"] if space.is_range else ["minimize"]  # a range: (observed loss, additional GMACs)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions)
    storage.set_study_system_attr(study._study_id, SAMPLER_ATTR, sampler_record)
    study.set_user_attr("space", space.name)
    study.set_user_attr("candidates", list(space.candidates))
    study.set_user_attr("num_skip", space.recorded_num_skip)
    return study


def _resume(storage, url: str, name: str, sampler, sampler_record: dict, space: SkipSpace, log) -> optuna.Study:
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    recorded = storage.get_study_system_attrs(study._study_id).get(SAMPLER_ATTR)
    if recorded is not None and recorded != sampler_record:
        raise UserError(
            f"study {name!r} in {shown_url(url)} was run with sampler {recorded}, not {sampler_record}; "
            "pass --fresh to start it again or --set study_name=NEW for a new study"
        )
    if study.user_attrs.get("candidates") not in (None, list(space.candidates)) or study.user_attrs.get("num_skip") not in (None, space.recorded_num_skip):
        raise UserError(f"study {name!r} was run on another space; pass --fresh or --set study_name=NEW")
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    log(f"resuming study {name!r}: {len(study.trials)} trials" + (f", {len(stale)} interrupted ones marked FAIL" if stale else ""))
    return study
