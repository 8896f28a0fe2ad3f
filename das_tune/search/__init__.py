"""Search executors by name: each runs (or resumes) a study's search through one signature,
``run(search: SearchRun) -> None`` (see :mod:`das_tune.search.base`).

The registry holds module names, so that choosing an executor imports only that one (Ray is heavy).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from das_tune.search.base import Executor

EXECUTORS: dict[str, str] = {
    "oneshot": "das_tune.search.oneshot",  # the paper's weight-sharing supernet, in this process
    "ray": "das_tune.search.ray_tune",  # one Ray Tune trial per subnet, from the shared warm-up
}


def get_executor(name: str) -> Executor:
    """The ``run`` function of executor ``name`` (the study spec has checked the name)."""
    return import_module(EXECUTORS[name]).run
