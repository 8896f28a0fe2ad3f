"""A finished run folder, read back: the one place where ``load_subnet``, ``evaluate`` and ``export``
learn what a retrain wrote (``study.yaml``, ``subnet.json``, ``adapters.safetensors``, ``metrics.json``)
and rebuild the backbone and task it used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from das_tune.backbones.base import SkippableBackbone
from das_tune.training.components import _backbone, _check_local_files
from das_tune.errors import UserError
from das_tune.training.retrain import METRICS_FILE, SPEC_FILE, SUBNET_FILE, WEIGHTS_FILE, read_run
from das_tune.spec.study import StudySpec, override_spec
from das_tune.tasks import build_task
from das_tune.tasks.base import Task
from das_tune.training.loop import seed_everything

RUN_FILES = (SPEC_FILE, SUBNET_FILE, WEIGHTS_FILE, METRICS_FILE)


@dataclass(frozen=True)
class RunFolder:
    path: Path
    spec: StudySpec
    skipped: tuple[str, ...]
    metrics: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE


def is_run_folder(path: Path) -> bool:
    """Holds any of a run's files (a partial one is then reported by what it lacks)."""
    return any((path / name).is_file() for name in RUN_FILES)


def read_run_folder(path: str | Path, overrides: dict[str, Any] | None = None) -> RunFolder:
    """The run in ``path`` with ``overrides`` (``{"task.data_dir": ...}``) applied to its study."""
    path = Path(path)
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path}: not a das-tune run folder (missing {', '.join(missing)})")
    spec, subnet = read_run(path)
    if overrides:
        spec = override_spec(spec, overrides, str(path / SPEC_FILE))
    try:
        metrics = json.loads((path / METRICS_FILE).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path / METRICS_FILE}: cannot be read as JSON ({error})") from None
    return RunFolder(path=path, spec=spec, skipped=tuple(subnet.skipped), metrics=metrics)


def pretrained_backbone(spec: StudySpec) -> SkippableBackbone:
    """The backbone a retrain starts from: the checkpoint's weights (a tiny run's random weights,
    replayed from its seed as the retrain drew them), fresh adapters, no head."""
    _check_local_files(spec)
    seed_everything(spec.seed)
    return _backbone(spec.with_paths(spec.local_paths()), spec.load_space())


def build_run_task(spec: StudySpec, *, labels_only: bool = False) -> Task:
    """The run's task; ``labels_only`` reads one example per split (enough for the head and labels)."""
    spec = spec.with_paths(spec.local_paths())
    options = dict(spec.task.options)
    if labels_only:
        options.update(train_limit=1, val_limit=1, test_limit=1)
    return build_task(spec.task.name, data_dir=spec.task.data_dir, tiny=spec.tiny, **options)
