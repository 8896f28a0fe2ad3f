"""das-tune: Dynamic Architecture Skipping (DAS) as a declarative Optuna search.

Every name loads on first use: ``import das_tune`` (and the CLI's parsing) stays free of optuna, torch and Ray.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from das_tune.errors import UserError

__version__ = "0.1.0"

_LAZY = {
    "DASSampler": "das_tune.samplers",
    "chosen_skip": "das_tune.samplers",
    "make_sampler": "das_tune.samplers",
    "SkipSpace": "das_tune.spec.spaces",
    "load_space": "das_tune.spec.spaces",
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
