"""das-tune: Dynamic Architecture Skipping (DAS) as a declarative Optuna search.

The core (spaces and samplers) imports without torch; model and task code loads on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from das_tune.errors import UserError
from das_tune.samplers import DASSampler, chosen_skip, make_sampler
from das_tune.spec.spaces import SkipSpace, load_space

__version__ = "0.1.0"

_LAZY = {
    "build_backbone": "das_tune.backbones",
    "build_task": "das_tune.tasks",
    "load_subnet": "das_tune.subnet.load",
    "evaluate": "das_tune.subnet.evaluation",
    "export_subnet": "das_tune.subnet.export",
    "run_front": "das_tune.jobs.front",
    "parse_target": "das_tune.jobs.target",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'das_tune' has no attribute {name!r}")


__all__ = [
    "DASSampler", "SkipSpace", "UserError", "build_backbone", "build_task", "chosen_skip", "evaluate", "export_subnet",
    "load_space", "load_subnet", "make_sampler", "parse_target", "run_front",
]
