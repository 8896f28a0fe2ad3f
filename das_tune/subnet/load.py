"""Using what a search found: the smaller model, loaded and ready to answer.

    import das_tune
    model = das_tune.load_subnet("runs/easyvqa_minilm-das-seed0")     # or an exported folder
    model.predict(question="What shape is in the image?", image="shape.png")
    # Prediction(label='circle', score=0.91, top=[LabelScore(label='circle', score=0.91), ...])

A run folder is rebuilt from the run's backbone checkpoint (kept layers only) plus its trained
adapters, skip-adapters and head; an exported folder (``das-tune export``) from its own files alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model
from torch import nn

from das_tune.artifacts.atomic import check_checksums
from das_tune.artifacts.run_folder import RunFolder, is_run_folder, not_a_run_folder, read_run_folder
from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.subnet.portable import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, is_export_folder, read_config, rebuild_backbone
from das_tune.subnet.predict import Prediction, task_inputs
from das_tune.tasks.base import Task
from das_tune.training.components import build_spec_task, pretrained_backbone

NOT_A_FOLDER = "not a das-tune run folder (study.yaml, subnet.json, ...) or exported subnet (config.json, model.safetensors)"


class Subnet(nn.Module):
    """A subnet in eval mode: ``backbone`` (skipped layers removed, adapters, skip-adapters, head),
    the task it answers and that task's labels."""

    def __init__(self, backbone: SkippableBackbone, *, task: str, labels: Sequence[str], skipped: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.labels = list(labels)
        self.skipped = list(skipped)
        self.inputs = task_inputs(task)
        self.eval()

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits from the backbone's tensors (``backbone.preprocess`` makes them)."""
        return self.backbone(**inputs)

    def predict(self, *, top: int = 5, **fields: Any) -> Prediction:
        """One answer from the task's natural inputs, e.g. ``question=..., image=PATH_OR_PIL``."""
        return self.predict_batch([fields], top=top)[0]

    @torch.no_grad()
    def predict_batch(
        self, rows: Sequence[Mapping[str, Any]], *, top: int = 5, batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Answers for many inputs (dicts of the task's fields); ``on_batch(n)`` after each batch of n."""
        for row in rows:
            self.inputs.check(self.task, row)
        self.eval()
        predictions: list[Prediction] = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            logits = self.inputs.logits(self.backbone, batch)
            predictions += self.inputs.predictions(logits, self.labels, top)
            if on_batch is not None:
                on_batch(len(batch))
        return predictions


@dataclass(frozen=True)
class FolderSummary:
    """What a run or exported folder holds, read from its small files (no model is built)."""

    task: str
    backbone: str


def summarize(path: str | Path) -> FolderSummary:
    path = Path(path)
    if is_export_folder(path):
        config = read_config(path)
        return FolderSummary(task=config.task, backbone=config.backbone)
    if is_run_folder(path):
        spec = read_run_folder(path).spec
        return FolderSummary(task=spec.task.name, backbone=spec.backbone.name)
    raise not_a_run_folder(path, NOT_A_FOLDER)


def load_subnet(path: str | Path, overrides: dict[str, Any] | None = None) -> Subnet:
    """The subnet of a run folder (``runs/<study>-<sampler>-seed<k>``) or of an exported folder.

    ``overrides`` change a run's study as ``--set`` does (e.g. ``{"backbone.checkpoint": PATH}`` when
    the checkpoint moved); an exported folder needs none.
    """
    path = Path(path)
    if is_export_folder(path):
        if overrides:
            raise UserError(f"{path}: an exported subnet is self-contained; --set applies to run folders only")
        return load_exported(path)
    if is_run_folder(path):
        return load_run(read_run_folder(path, overrides))
    raise not_a_run_folder(path, NOT_A_FOLDER)


def load_run(run: RunFolder, task: Task | None = None) -> Subnet:
    """A run's subnet: its checkpoint's kept layers and its trained weights; ``task`` if already built."""
    task = task or build_spec_task(run.spec, labels_only=True)
    backbone = pretrained_backbone(run.spec).export(run.skipped)
    backbone.task_head = task.build_head(backbone.feature_dim)
    _load_trained(backbone, run.weights)
    return Subnet(backbone, task=task.name, labels=task_inputs(task.name).labels(task), skipped=run.skipped)


def load_exported(path: Path) -> Subnet:
    config = read_config(path)
    check_checksums(path, config.checksums, CONFIG_FILE, "export the run again")
    backbone = rebuild_backbone(config, path / TOKENIZER_DIR)
    try:
        load_model(backbone, path / WEIGHTS_FILE, strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"{path / WEIGHTS_FILE}: does not hold the weights its config.json describes ({first})") from None
    return Subnet(backbone, task=config.task, labels=config.labels, skipped=config.skipped)


def _load_trained(backbone: SkippableBackbone, path: Path) -> None:
    """The trained weights (adapters, skip-adapters, head) onto a subnet with pre-trained layers."""
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    _check_tensors(path, weights, backbone.state_dict())
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    untrained = sorted(trainable & set(missing))
    if unexpected or untrained:
        names = ", ".join((unexpected or untrained)[:3])
        raise UserError(f"{path}: does not match the run's subnet (e.g. {names}); was the run retrained with another study?")


def _check_tensors(path: Path, weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every tensor has its parameter's shape and finite values: a damaged file is one line, not a state-dict wall."""
    for name, tensor in weights.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise UserError(
                f"{path}: tensor {name} has shape {list(tensor.shape)}, the run's subnet {list(expected[name].shape)}; "
                "remove it or pass --fresh"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{path}: tensor {name} holds NaN or infinite values; remove it or pass --fresh")
