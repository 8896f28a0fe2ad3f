"""Search executors by name: each runs (or resumes) a study's search through one signature,
``run(search: SearchRun) -> None`` (see :mod:`das_tune.search.base`).

The registry holds module names, so that choosing an executor imports only that one (Ray is heavy).
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

# Ray replaces a loopback node address (127.0.0.1) by this machine's first non-loopback one unless
# this is "0" (``ray._private.services.resolve_ip_for_localhost``); it must be set before Ray is
# imported. das-tune always tells Ray the driver's address, so a real cluster is not affected.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

if TYPE_CHECKING:
    from das_tune.search.base import Executor

EXECUTORS: dict[str, str] = {
    "oneshot": "das_tune.search.oneshot",  # the paper's weight-sharing supernet, in this process
    "ray": "das_tune.search.ray_tune",  # one Ray Tune trial per subnet, from the shared warm-up
    "data_parallel": "das_tune.search.data_parallel",  # the one-shot loop on Ray Train workers (search.workers > 1)
}


def get_executor(name: str) -> Executor:
    """The ``run`` function of executor ``name`` (the study spec has checked the name)."""
    return import_module(EXECUTORS[name]).run
