"""Search executors by name: each runs (or resumes) a study's search through one signature,
``run(search: SearchRun) -> None`` (see :mod:`das_tune.search.base`).

The registry holds module names, so that choosing an executor imports only that one (Ray is heavy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from das_tune.errors import UserError

# Ray replaces a loopback node address (127.0.0.1) by this machine's first non-loopback one unless
# this is "0" (``ray._private.services.resolve_ip_for_localhost``); it must be set before Ray is
# imported. das-tune always tells Ray the driver's address, so a real cluster is not affected.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

if TYPE_CHECKING:
    from das_tune.search.base import Executor
    from das_tune.spec.study import SearchSpec


@dataclass(frozen=True)
class ExecutorEntry:
    module: str
    one_shot: bool  # trains one weight-sharing supernet and observes it in rounds (the paper's search)
    uses_ray: bool
    about: str


ONESHOT, DATA_PARALLEL = "oneshot", "data_parallel"  # the default; what runs it with search.workers > 1
EXECUTORS: dict[str, ExecutorEntry] = {
    ONESHOT: ExecutorEntry("das_tune.search.oneshot", True, False, "the paper's weight-sharing supernet, in this process"),
    "ray": ExecutorEntry("das_tune.search.ray_tune", False, True, "one Ray Tune trial per subnet, from the shared warm-up"),
    DATA_PARALLEL: ExecutorEntry("das_tune.search.data_parallel", True, True, "the one-shot search on Ray Train workers"),
}


def executor_name(search: SearchSpec) -> str:
    """The executor that runs ``search``: the data-parallel one-shot one when ``workers > 1``."""
    return DATA_PARALLEL if search.workers > 1 else search.executor


def executor_entry(search: SearchSpec) -> ExecutorEntry:
    return EXECUTORS[executor_name(search)]


def check_executor(search: SearchSpec) -> None:
    """A one-line error for an unknown executor, or workers given to one that runs a trial per worker."""
    if search.executor not in EXECUTORS:
        raise UserError(f"search.executor: expected one of {', '.join(EXECUTORS)}, got {search.executor!r}")
    if search.workers > 1 and not EXECUTORS[search.executor].one_shot:
        raise UserError(
            f"search.workers: data-parallel training is for a one-shot executor; executor {search.executor!r} runs one trial per worker"
        )


def get_executor(name: str) -> Executor:
    """The ``run`` function of executor ``name`` (checked by :func:`check_executor`)."""
    return import_module(EXECUTORS[name].module).run
