"""The space, task and backbone a study declares, built and checked against each other."""

from __future__ import annotations

import os
from dataclasses import dataclass

from das_tune.backbones import build_backbone
from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.spaces import SkipSpace
from das_tune.study import StudySpec
from das_tune.tasks import TASKS, build_task
from das_tune.tasks.base import Task


TINY_IGNORES = ("tokenizer", "image_size", "patch_size", "max_text_len")


@dataclass
class Components:
    spec: StudySpec
    space: SkipSpace
    task: Task
    model: SkippableBackbone  # the supernet, with the task's head

    def fresh_backbone(self) -> SkippableBackbone:
        """The pre-trained backbone again, with fresh adapters and no head."""
        return _backbone(self.spec, self.space)


def build_components(spec: StudySpec) -> Components:
    space = spec.load_space()
    task = build_spec_task(spec)
    model = _backbone(spec, space)
    missing = [c for c in space.candidates if c not in model.layer_names]
    if missing:
        raise UserError(
            f"space {space.label}: layers {missing} do not exist in backbone {spec.backbone.name!r} "
            f"(its layers: {', '.join(model.layer_names)})"
        )
    model.task_head = task.build_head(model.feature_dim)
    return Components(spec, space, task, model)


def build_spec_task(spec: StudySpec) -> Task:
    """The study's task alone (data, head, loss, metric), without a model."""
    _check_local_files(spec)
    return build_task(spec.task.name, data_dir=_local_path(spec.task.data_dir, spec.tiny), tiny=spec.tiny, **_task_options(spec))


def _backbone(spec: StudySpec, space: SkipSpace) -> SkippableBackbone:
    options = dict(spec.backbone.options)
    if space.skip_adapter_width is not None:
        options.setdefault("skip_adapter_width", space.skip_adapter_width)
    if space.granularity != "layer":  # only backbones that can split their layers take the option
        options.setdefault("granularity", space.granularity)
    if spec.tiny:  # a tiny model has its own small sizes and the packaged tokenizer: no local files
        for key in TINY_IGNORES:
            options.pop(key, None)
    else:
        options = {k: _local_path(v, False) if k == "tokenizer" else v for k, v in options.items()}
    checkpoint = _local_path(spec.backbone.checkpoint, spec.tiny)
    return build_backbone(spec.backbone.name, checkpoint=checkpoint, tiny=spec.tiny, **options)


def _local_path(path: str | None, tiny: bool) -> str | None:
    """A declared local path with $VARS and ~ expanded; none in tiny mode (tiny needs no files)."""
    if path is None or tiny:
        return None
    return os.path.expanduser(os.path.expandvars(path))


def _task_options(spec: StudySpec) -> dict:
    """The study's task options; in tiny mode the task's own small sizes win over the study's."""
    options = dict(spec.task.options)
    if spec.tiny and spec.task.name in TASKS:
        for key in TASKS[spec.task.name].tiny_defaults:
            options.pop(key, None)
    return options


def _check_local_files(spec: StudySpec) -> None:
    """Name every declared local file that is missing, with the flag that points elsewhere."""
    if spec.tiny:
        return
    declared = {
        "backbone.checkpoint": spec.backbone.checkpoint,
        "backbone.options.tokenizer": spec.backbone.options.get("tokenizer"),
        "task.data_dir": spec.task.data_dir,
    }
    missing = [
        f"{field} = {path} (put it there or pass --set {field}=PATH)"
        for field, path in declared.items()
        if isinstance(path, str) and not os.path.exists(_local_path(path, False))
    ]
    if missing:
        raise UserError(
            f"study {spec.name!r} needs local files that are missing (relative to {os.getcwd()}): "
            + "; ".join(missing)
            + ". Or add --tiny to run the whole pipeline on a tiny random model and data."
        )
