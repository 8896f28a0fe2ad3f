"""Opening Optuna storages (one opener for every command) and a study in them: create, resume, or
start fresh on request — never overwrite.

A storage is an Optuna URL (``sqlite:///runs.db``, ``postgresql://…``) or the path of a journal file
(``journal.log``, ``optuna.storages.journal``): what suits a shared file system or many processes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from das_tune.errors import RunFailure, UserError
from das_tune.spec.study import DEFAULT_STORAGE

SQLITE_TIMEOUT_S = 60  # several processes on one SQLite file wait for each other's writes
_CREATE_ATTEMPTS = 20


def local_file(url: str) -> Path | None:
    """The file an SQLite URL or a journal path names; None for a server URL."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser()
    return None if "://" in url else Path(url).expanduser()


def absolute_url(url: str) -> str:
    """``url`` with a local file's path made absolute, for workers that may run in another folder."""
    path = local_file(url)
    if path is None:
        return url
    return "sqlite:///" + str(path.resolve()) if url.startswith("sqlite:///") else str(path.resolve())


@dataclass(frozen=True)
class OpenedStorage:
    """An opened Optuna storage and the URL it was opened from: what travels through a job, so that every
    message names the storage the same way (``shown``: the password hidden)."""

    url: str
    optuna: optuna.storages.BaseStorage

    @classmethod
    def open(cls, url: str) -> OpenedStorage:
        return cls(url, open_storage(url))

    @property
    def shown(self) -> str:
        return shown_url(self.url)


def open_storage(url: str, *, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """The storage at ``url``, created unless ``must_exist`` (then a missing file, or one that is not an Optuna
    storage, is a UserError and is left as it is). Errors are one line, with the URL's password hidden."""
    path = local_file(url)
    if path is not None and must_exist:
        _check_optuna_file(url, path)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if "://" not in url:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return _rdb(url)
    except ImportError:
        raise UserError(
            f"storage {shown_url(url)}: its database driver is not installed (PostgreSQL: pip install 'das-tune[postgresql]')"
        ) from None
    except Exception as err:  # a bad URL, an unreachable server, a refused password, an unwritable folder
        raise UserError(f"storage {shown_url(url)} cannot be opened: {_first_line(err)}") from None


def _check_optuna_file(url: str, path: Path) -> None:
    """``path`` is a storage Optuna wrote: opening anything else would write Optuna's tables or log into it."""
    expected = f"expected an Optuna storage a study was run with (e.g. {DEFAULT_STORAGE})"
    if not path.is_file():
        raise UserError(f"storage {shown_url(url)!r} does not exist: {expected}")
    optuna_file = _has_optuna_tables(path) if url.startswith("sqlite:///") else _is_journal(path)
    if not optuna_file:
        raise UserError(f"storage {shown_url(url)!r} is not an Optuna storage (left untouched): {expected}")


def _has_optuna_tables(path: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:  # not an SQLite file at all
        return False
    return {"studies", "trials", "version_info"} <= tables


def _is_journal(path: Path) -> bool:
    """An Optuna journal file: JSON lines of operations (empty: none yet)."""
    try:
        with path.open(encoding="utf-8") as log:
            first = log.readline()
        return not first or "op_code" in json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


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


def _rdb(url: str) -> optuna.storages.BaseStorage:
    """Optuna creates its tables on first use; processes that start at once on a fresh database
    (several studies, several machines) race on that DDL and the losers see a duplicate table, type or
    version row ("table studies already exists", "UNIQUE constraint failed: alembic_version",
    PostgreSQL's "duplicate key value"). Once the winner is done the schema exists, so a loser simply
    tries again."""
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite:///") else {}
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            return optuna.storages.get_storage(optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs))  # with Optuna's trial cache
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == _CREATE_ATTEMPTS - 1 or not _schema_race(err):
                raise
            time.sleep(random.uniform(0.05, 0.3))
    raise AssertionError("unreachable")


def _schema_race(err: Exception) -> bool:
    text = str(err).lower()
    return any(s in text for s in ("already exists", "unique constraint", "duplicate", "database is locked"))


@contextmanager
def storage_failures(url: str) -> Iterator[None]:
    """Inside, an SQLite storage that fails under the run is one line instead of Optuna's wall: its file deleted or
    moved (``RunFailure``), its disk full (the file system's ENOSPC, which the CLI reports as such)."""
    try:
        yield
    except Exception as error:
        cause = _sqlite_cause(error)
        if cause is None:
            raise
        if cause.sqlite_errorcode == sqlite3.SQLITE_FULL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(local_file(url))) from None
        if cause.sqlite_errorname == "SQLITE_READONLY_DBMOVED":
            raise RunFailure(
                f"storage {shown_url(url)}: its SQLite file was deleted or moved while the run wrote to it; "
                "put it back and run again, or run again with --fresh"
            ) from None
        raise


def _sqlite_cause(error: BaseException | None) -> sqlite3.Error | None:
    while error is not None and not isinstance(error, sqlite3.Error):
        error = error.__cause__ or error.__context__
    return error


def holds_study(url: str, name: str) -> bool:
    """Whether the storage at ``url`` holds study ``name``. A local file that does not exist is not created: it
    holds nothing if it could be created, else this is the one-line error that opening it would give."""
    path = local_file(url)
    if path is None or path.is_file():
        return study_exists(open_storage(url), name)
    folder = next(p for p in path.parents if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".das-tune-probe-", dir=folder))
    except OSError as err:
        raise UserError(f"storage {shown_url(url)} cannot be opened: {err.strerror}") from None
    return False


def fail_running(study: optuna.Study, phase: str | None = None) -> int:
    """Mark the study's RUNNING trials (of ``phase``, if given) FAIL; only for a study this process
    holds the lease of, where RUNNING trials can only be a dead process's. Returns how many."""
    stale = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if phase is None or t.user_attrs.get("phase") == phase
    ]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())
