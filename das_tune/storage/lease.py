"""One writer per study: a lease held in the study's own Optuna storage, and a lock on its run folder.

The study lease
---------------
A process leases study ``S`` by creating the study ``das-tune:lease:S:<generation>`` in the same
storage. Every Optuna storage creates a study name at most once (a unique column in an RDB, the log's
order in a journal file), so of several processes creating the same name exactly one succeeds. The
holder records its host, pid and process start time in the lease, refreshes a heartbeat every
``HEARTBEAT_S`` seconds, and deletes the lease when it stops. A process that finds the newest lease:

* held by a live process → is refused (``UserError``: exit 2, nothing written);
* held by a dead one → takes it over by creating the next generation (again, only one process of
  several can), then deletes the older ones. Dead means: on the same host, no process with that pid
  and start time (a SIGKILLed run is taken over at once); on another host, no heartbeat for
  ``GRACE_S`` seconds.

This is Optuna's trial heartbeat (``RDBStorage(heartbeat_interval, grace_period)`` with
``fail_stale_trials``) applied to a whole study: once the lease is held, a RUNNING trial of the study
can only be a dead process's, so the executors recover such trials and never touch a live one's.
While a run holds it, the lease shows in optuna-dashboard as a study without trials.

The folder lock
---------------
Two studies may share a run folder (the same study name on two storages); an exclusive ``flock`` on
the folder keeps their checkpoints and artifacts apart. The OS drops it when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from optuna.exceptions import DuplicatedStudyError
from optuna.study import StudyDirection

from das_tune.errors import FolderInUse, UserError
from das_tune.storage.opener import OpenedStorage

LEASE_PREFIX = "das-tune:lease:"
HOLDER_ATTR = "das_tune:holder"
HEARTBEAT_S = 10.0
GRACE_S = 60.0
UNCLAIMED_WAIT_S = 2.0  # a lease just created has no holder for a moment


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start time: a reused pid is another process
    heartbeat: float

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), time.time())

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return time.time() - self.heartbeat < GRACE_S
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:  # cannot tell: assume it is running
            return True

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class _Lease:
    generation: int
    study_id: int
    holder: Holder | None


class StudyLease:
    """``with StudyLease(storage, name):`` — this process is the study's only writer inside."""

    def __init__(self, storage: OpenedStorage, study_name: str) -> None:
        self.storage, self.study_name, self.url = storage.optuna, study_name, storage.shown
        self._prefix = f"{LEASE_PREFIX}{study_name}:"
        self._id: int | None = None
        self._holder = Holder.this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StudyLease:
        self._acquire()
        self._thread = threading.Thread(target=self._beat, name="das-tune-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._release()

    def _acquire(self) -> None:
        for _ in range(5):
            leases = self._leases()
            newest = leases[-1] if leases else None
            if newest is not None and newest.holder is None:
                time.sleep(UNCLAIMED_WAIT_S)  # its creator is about to write itself in, unless it died
                newest = next((lease for lease in self._leases() if lease.generation == newest.generation), newest)
            if newest is not None and newest.holder is not None and newest.holder.alive():
                self._refuse(newest.holder)
            name = f"{self._prefix}{newest.generation + 1 if newest else 0}"
            try:
                self._id = self.storage.create_new_study([StudyDirection.MINIMIZE], name)
            except DuplicatedStudyError:
                continue  # another process took this generation first: look again
            self.storage.set_study_system_attr(self._id, HOLDER_ATTR, asdict(self._holder))
            for stale in leases:
                self._delete(stale.study_id)
            return
        raise UserError(f"study {self.study_name!r}{self._where}: several processes are starting it at once; run one")

    def _leases(self) -> list[_Lease]:
        leases = []
        for study in self.storage.get_all_studies():
            generation = study.study_name.removeprefix(self._prefix)
            if study.study_name.startswith(self._prefix) and generation.isdigit():
                holder = study.system_attrs.get(HOLDER_ATTR)
                leases.append(_Lease(int(generation), study._study_id, Holder(**holder) if holder else None))
        return sorted(leases, key=lambda lease: lease.generation)

    def _refuse(self, holder: Holder) -> None:
        raise UserError(
            f"study {self.study_name!r}{self._where} is being run by another das-tune process ({holder}); "
            "wait for it to finish, or pass --set study_name=NEW for another study"
        )

    @property
    def _where(self) -> str:
        return f" in {self.url}" if self.url else ""

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            beat = {**asdict(self._holder), "heartbeat": time.time()}
            try:
                self.storage.set_study_system_attr(self._id, HOLDER_ATTR, beat)
            except Exception:  # a busy database: the next beat will do
                pass

    def _release(self) -> None:
        """Delete the lease, whatever ended the block. A Ctrl-C can cut a storage session short and leave it
        unusable: a fresh session is tried once. If the storage still refuses (a full disk, a deleted file),
        the lease stays, never masking what ended the run: its holder is this ending process, which the
        next run finds dead and takes over."""
        for _ in range(2):
            try:
                self._delete(self._id)
                return
            except Exception:
                with contextlib.suppress(Exception):
                    getattr(self.storage, "remove_session", lambda: None)()

    def _delete(self, study_id: int | None) -> None:
        if study_id is None:
            return
        try:
            self.storage.delete_study(study_id)
        except KeyError:  # already gone (taken over and cleaned up)
            pass


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block, or refuse at once. The folder is created
    if missing, and removed again (with the parents created for it) if the block leaves it empty."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(
                f"run folder {folder} is in use by another das-tune process; wait for it to finish, "
                "or pass --set output_dir=OTHER"
            ) from None
        yield
    finally:
        os.close(fd)
        for path in created:  # innermost first
            try:
                path.rmdir()
            except OSError:  # not empty: it holds what the block wrote
                break
