"""Runs ``das-tune ARGS`` in this process and stops it at a controlled point (tests only).

    python kill_worker.py kill:K ARGS...              SIGKILL itself at the K-th event
    python kill_worker.py killgroup:K ARGS...         SIGKILL its process group (Ray's processes too)
    python kill_worker.py pause:K:file=PATH ARGS...   at the K-th event, write PATH.paused, wait for PATH
    ...:only=NAME                                     count only the events of that name

An event is a call of one of ``EVENTS`` (before the call runs): asking, suggesting or telling a trial
of a stored study (not the in-memory one the sampler check uses), a training step (a data-parallel
rank's too), a checkpoint or
artifact write (before its rename), or a Ray trial told to Optuna. Counting calls instead of waiting
for a clock makes every kill point exact and repeatable.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path

import optuna

from das_tune import cli
from das_tune.artifacts import atomic
from das_tune.search import data_parallel, ray_tune
from das_tune.training import loop

EVENTS = [
    (optuna.Study, "ask"),
    (optuna.Study, "tell"),
    (optuna.Trial, "suggest_float"),
    (loop.Trainer, "train"),
    (data_parallel.DataParallelSupernet, "train_step"),
    (os, "replace"),
    (ray_tune.SkipSearcher, "on_trial_complete"),
]


def stop(action: str, argument: str | None) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "killgroup":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    if action == "pause":
        Path(f"{argument}.paused").write_text(str(os.getpid()))
        while not Path(argument).exists():
            time.sleep(0.1)


def _in_memory(owner) -> bool:
    study = owner.study if isinstance(owner, optuna.Trial) else owner
    return isinstance(study, optuna.Study) and isinstance(study._storage, optuna.storages.InMemoryStorage)


def install(action: str, at: int, argument: str | None, only: str | None) -> None:
    count = 0

    def hooked(original):
        @functools.wraps(original)
        def call(*args, **kwargs):
            nonlocal count
            if not _in_memory(args[0] if args else None):
                count += 1
                if count == at:
                    stop(action, argument)
            return original(*args, **kwargs)

        return call

    for owner, name in EVENTS:
        if only in (None, name):
            setattr(owner, name, hooked(getattr(owner, name)))
    assert atomic.os is os  # atomic writes rename through os.replace: counted


if __name__ == "__main__":
    action, at, *fields = sys.argv[1].split(":")
    options = dict(field.split("=", 1) for field in fields)
    install(action, int(at), options.get("file"), options.get("only"))
    sys.argv = ["das-tune", *sys.argv[2:]]
    cli.app()
