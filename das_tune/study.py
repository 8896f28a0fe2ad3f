"""Declared studies: ``studies/NAME.yaml`` validated into a ``StudySpec``, with CLI overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from das_tune import config, resources
from das_tune.errors import UserError
from das_tune.spaces import SkipSpace, load_space


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneSpec(_Strict):
    name: str
    checkpoint: str | None = Field(default=None, description="local checkpoint file or model folder")
    options: dict[str, Any] = Field(default_factory=dict)


class TaskSpec(_Strict):
    name: str
    data_dir: str | None = Field(default=None, description="local folder with the task's files")
    options: dict[str, Any] = Field(default_factory=dict)


class SamplerSpec(_Strict):
    """The sampler by name, and options per sampler name (so ``--sampler tpe`` keeps DAS's aside)."""

    name: str = "das"
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="{sampler name: {option: value}}")

    @property
    def own_options(self) -> dict[str, Any]:
        return dict(self.options.get(self.name, {}))


class OptimSpec(_Strict):
    """AdamW (0.9, 0.98) with linear warm-up then linear decay, as METER/ViLT/DAS train."""

    lr: float = Field(default=1e-3, gt=0)
    head_lr_multiplier: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    batch_size: int = Field(default=32, gt=0)


class SearchSpec(OptimSpec):
    executor: Literal["oneshot", "ray"] = "oneshot"
    warmup_epochs: int = Field(default=1, ge=0, description="epochs of uniformly random subnets")
    search_epochs: int = Field(default=2, ge=1, description="epochs with redundancy observations")
    observe_every: int = Field(default=10, gt=0, description="training steps between observation rounds")
    round_size: int = Field(default=3, gt=0, description="distinct subsets scored per observation round")
    observation_batches: int = Field(default=4, gt=0, description="validation batches the observations cycle over")
    max_steps_per_epoch: int | None = Field(default=None, gt=0)


class RetrainSpec(OptimSpec):
    epochs: int = Field(default=10, gt=0)
    max_steps_per_epoch: int | None = Field(default=None, gt=0)


class RaySpec(_Strict):
    """Ray Tune executor settings (used when ``search.executor`` is ``ray``)."""

    address: str | None = Field(default=None, description="an existing cluster ('auto' or host:port)")
    num_trials: int = Field(default=12, gt=0)
    steps_per_trial: int = Field(default=20, gt=0)
    report_every: int = Field(default=5, gt=0)
    cpus_per_trial: float = Field(default=1, gt=0)
    gpus_per_trial: float = Field(default=0, ge=0)
    max_concurrent_trials: int = Field(default=2, gt=0)
    scheduler: Literal["asha", "median"] | None = Field(default="asha", description="a Ray Tune scheduler by name, or null (FIFO)")
    grace_period: int = Field(default=1, gt=0, description="reports before a scheduler may stop a trial")
    max_failures: int = Field(default=1, ge=0)
    storage_path: str | None = Field(default=None, description="absolute; shared storage on a cluster")


# A study name is also a folder name under output_dir: no path separators, no leading dot.
_FOLDER_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+=,@-]*$"


class StudySpec(_Strict):
    name: str = Field(pattern=_FOLDER_NAME)
    description: str = ""
    space: str
    num_skip: int | None = Field(default=None, description="overrides the space's num_skip")
    backbone: BackboneSpec
    task: TaskSpec
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    storage: str = "sqlite:///das_tune.db"
    study_name: str | None = Field(default=None, pattern=_FOLDER_NAME, description="default: <name>-<sampler>-seed<seed>")
    output_dir: str = "runs"
    seed: int = Field(default=0, ge=0, lt=2**32, description="NumPy's and Optuna's seeds are 32-bit")
    tiny: bool = Field(default=False, description="tiny random backbone and a few batches of data")

    def load_space(self) -> SkipSpace:
        return load_space(self.space, self.num_skip)

    @property
    def resolved_study_name(self) -> str:
        return self.study_name or f"{self.name}-{self.sampler.name}-seed{self.seed}"

    @field_validator("output_dir")
    @classmethod
    def _a_path(cls, value: str) -> str:
        if not value.strip() or "\0" in value:
            raise ValueError("expected a folder path")
        return value

    @property
    def run_dir(self) -> Path:
        """The run folder, absolute (resolved once, against the current folder)."""
        return (Path(self.output_dir).expanduser() / self.resolved_study_name).resolve()


def load_study_spec(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """A built-in study by name or a YAML file by path, with dotted-key overrides applied."""
    path = resources.resolve("studies", name_or_path)
    if path is None:
        known = ", ".join(resources.builtin_names("studies"))
        raise UserError(f"unknown study {str(name_or_path)!r}: expected a YAML file path or one of {known}")
    data = config.read_yaml(path)
    data.setdefault("name", path.stem)
    overrides = overrides or {}
    return _apply(data, overrides, str(path), tiny_budgets=bool(overrides.get("tiny", data.get("tiny"))))


def override_spec(spec: StudySpec, overrides: dict[str, Any], source: str) -> StudySpec:
    """A resolved spec (a run's ``study.yaml``) with more dotted-key overrides. Its budgets are kept:
    the tiny ones are applied only when the overrides turn ``tiny`` on."""
    turns_tiny_on = bool(overrides.get("tiny")) and not spec.tiny
    return _apply(spec.model_dump(), overrides, source, tiny_budgets=turns_tiny_on)


def _apply(data: dict[str, Any], overrides: dict[str, Any], source: str, *, tiny_budgets: bool) -> StudySpec:
    if tiny_budgets:
        for key, value in TINY_BUDGETS.items():
            _set_dotted(data, key, value)
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    return config.parse(StudySpec, data, source)


def default_study_for_space(space: str) -> str:
    """The built-in study of a space: the one named like it, else the only one that uses it."""
    load_space(space)  # an unknown space is reported as such
    names = resources.builtin_names("studies")
    if space in names:
        return space
    users = [n for n in names if config.read_yaml(resources.builtin_dir("studies") / f"{n}.yaml").get("space") == space]
    if len(users) == 1:
        return users[0]
    if not users:
        raise UserError(f"no built-in study uses space {space!r}; pass --study with a study file")
    raise UserError(f"several built-in studies use space {space!r} ({', '.join(users)}); pass --study")


# Budgets small enough that the whole pipeline of any space runs in seconds (``--tiny``); applied
# before the user's overrides, so ``--tiny --set search.search_epochs=4`` still means 4.
TINY_BUDGETS = {
    "search.batch_size": 4,
    "search.max_steps_per_epoch": 6,
    "search.observe_every": 2,
    "search.observation_batches": 1,
    "retrain.batch_size": 4,
    "retrain.max_steps_per_epoch": 6,
    "retrain.epochs": 1,
    "ray.num_trials": 4,
    "ray.steps_per_trial": 4,
    "ray.report_every": 1,
}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["search.warmup_epochs=2", "task.options.train_limit=500"]`` → a dict of YAML-typed values."""
    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. search.warmup_epochs=2")
        try:
            overrides[key.strip()] = config.load_yaml_text(raw) if raw else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            raise UserError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it for a string") from None
    return overrides


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[leaf] = value
