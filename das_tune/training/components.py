"""The space, task and backbone a study declares, built and checked against each other."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from das_tune.backbones import build_backbone
from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import StudySpec
from das_tune.tasks import build_task
from das_tune.tasks.base import Task
from das_tune.training.loop import seed_everything


@dataclass
class Components:
    spec: StudySpec
    space: SkipSpace
    task: Task
    model: SkippableBackbone  # the supernet, with the task's head

    def fresh_backbone(self) -> SkippableBackbone:
        """The pre-trained backbone again, with fresh adapters and no head."""
        return _backbone(self.spec, self.space)


def build_components(spec: StudySpec, check: Callable[[StudySpec, SkipSpace, Task], None] | None = None) -> Components:
    """Bad input (a missing file, an unknown option, a layer the backbone lacks) fails here, before
    anything is written; ``check`` sees the space and the task before the model is built (seconds of
    imports and weights), so that what it refuses is refused at once. Tiny mode is already in ``spec``
    (see ``study._make_tiny``)."""
    space = spec.load_space()
    spec = _with_local_paths(spec)
    task = _task(spec)
    if check is not None:
        check(spec, space, task)
    model = _backbone(spec, space)
    missing = [c for c in space.candidates if c not in model.layer_names]
    if missing:
        raise UserError(
            f"space {space.label}: layers {missing} do not exist in backbone {spec.backbone.name!r} "
            f"(its layers: {', '.join(model.layer_names)})"
        )
    task.attach(model)
    return Components(spec, space, task, model)


def _backbone(spec: StudySpec, space: SkipSpace) -> SkippableBackbone:
    options = dict(spec.backbone.options)
    if space.skip_adapter_width is not None:
        options.setdefault("skip_adapter_width", space.skip_adapter_width)
    if space.granularity != "layer":  # only backbones that can split their layers take the option
        options.setdefault("granularity", space.granularity)
    return build_backbone(spec.backbone.name, checkpoint=spec.backbone.checkpoint, tiny=spec.tiny, **options)


def pretrained_backbone(spec: StudySpec) -> SkippableBackbone:
    """The backbone a retrain starts from: the checkpoint's weights (a tiny run's random weights,
    replayed from its seed as the retrain drew them), fresh adapters, no head."""
    spec = _with_local_paths(spec)
    seed_everything(spec.seed)
    return _backbone(spec, spec.load_space())


def build_spec_task(spec: StudySpec, *, labels_only: bool = False) -> Task:
    """The study's task alone (data, head, loss, metric), without a model; ``labels_only`` reads one
    example per split (enough for the head and labels)."""
    spec = _with_local_paths(spec)
    options = {**spec.task.options, **({"train_limit": 1, "val_limit": 1, "test_limit": 1} if labels_only else {})}
    return build_task(spec.task.name, data_dir=spec.task.data_dir, tiny=spec.tiny, **options)


def _task(spec: StudySpec) -> Task:
    return build_task(spec.task.name, data_dir=spec.task.data_dir, tiny=spec.tiny, **spec.task.options)


def _with_local_paths(spec: StudySpec) -> StudySpec:
    """``spec`` with its local files checked and their paths expanded."""
    _check_local_files(spec)
    return spec.with_paths(spec.local_paths())


def _check_local_files(spec: StudySpec) -> None:
    """Name every declared local file that is missing, with the flag that points elsewhere."""
    missing = [
        f"{field} = {path} (put it there or pass --set {field}=PATH)"
        for field, path in spec.local_paths().items()
        if not os.path.exists(path)
    ]
    if missing:
        raise UserError(
            f"study {spec.name!r} needs local files that are missing (relative to {os.getcwd()}): "
            + "; ".join(missing)
            + ". Or add --tiny to run the whole pipeline on a tiny random model and data."
        )
