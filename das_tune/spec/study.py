"""Declared studies: ``studies/NAME.yaml`` validated into a ``StudySpec``, with CLI overrides."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from das_tune.errors import UserError, shorten
from das_tune.spec import resources, yaml_reader
from das_tune.spec.spaces import SkipSpace, load_space, parse_num_skip, size_label

# The fields that name local files or folders, listed once: checked before a run, made absolute for
# Ray workers, dropped in tiny mode (a tiny model and its data need no files).
DEFAULT_STORAGE = "sqlite:///das_tune.db"
LOCAL_PATHS = ("backbone.checkpoint", "backbone.options.tokenizer", "task.data_dir")
# the ray settings a Ray search's outcome depends on (not where or how many at once its trials run)
RAY_OUTCOME = {"num_trials", "steps_per_trial", "report_every", "scheduler", "grace_period"}


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


# The names of das_tune.samplers.SAMPLERS (a test keeps them equal), here so that the CLI's help needs no optuna.
SAMPLER_NAMES = ("das", "random", "tpe", "cmaes", "qmc", "gp", "nsga2")


class SamplerSpec(_Strict):
    """The sampler by name, and options per sampler name (so ``--sampler tpe`` keeps DAS's aside)."""

    name: str = "das"
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="{sampler name: {option: value}}")

    @property
    def own_options(self) -> dict[str, Any]:
        return dict(self.options.get(self.name, {}))


class OptimSpec(_Strict):
    """AdamW (0.9, 0.98) with linear warm-up then linear decay, as METER/ViLT/DAS train.

    ``batch_size`` is the micro-batch; the optimizer steps once every ``accumulate`` micro-batches, so
    the total batch is ``batch_size × accumulate`` (the reference: METER 32 × 16, ViLT 64 × 4).
    """

    lr: float = Field(default=1e-3, gt=0)
    head_lr_multiplier: float = Field(default=1.0, gt=0)
    cross_modal_lr_multiplier: float = Field(
        default=5.0, gt=0, description="lr multiplier of a backbone's cross-modal modules (METER's poolers and fusion adapters)"
    )
    weight_decay: float = Field(default=0.01, ge=0, description="not applied to biases and LayerNorm weights")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    batch_size: int = Field(strict=True, default=32, gt=0, description="micro-batch size")
    accumulate: int = Field(strict=True, default=1, gt=0, description="micro-batches per optimizer step")

    # Fields added after results were recorded: a record leaves them out at their default, so that results
    # recorded before them (a bench's committed retrains and plan, a run's retrain folders, a study's search
    # settings) match.
    ADDED_LATER: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def added_later_defaults(cls) -> dict[str, Any]:
        """The fields added later, each at its default (what a record that leaves one out had)."""
        return {name: cls.model_fields[name].default for name in cls.ADDED_LATER}

    @property
    def total_batch_size(self) -> int:
        return self.batch_size * self.accumulate

    def recorded(self) -> dict[str, Any]:
        """These settings as metrics.json, a study's search settings and a bench's plan.yaml record them."""
        defaults = self.added_later_defaults()
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in defaults or defaults[k] != v}


class ObservationSpec(_Strict):
    """How a redundancy observation scores a subnet: in ``train`` mode (dropout on, as the reference,
    inside its training step) or ``eval`` mode; on the ``fixed`` first batch of ``split`` (the
    reference: ``next(iter(val_loader))``) or cycling over ``search.observation_batches`` of them."""

    mode: Literal["train", "eval"] = "eval"
    batches: Literal["fixed", "cycle"] = "cycle"
    split: Literal["train", "val"] = "val"


# Named observation settings (``search.observation: reference``).
OBSERVATION_PRESETS = {
    "reference": ObservationSpec(mode="train", batches="fixed", split="val"),  # DoubtedSteam/DAS
    "held_out": ObservationSpec(mode="eval", batches="cycle", split="val"),  # das-tune's default
}


class SearchSpec(OptimSpec):
    executor: str = Field(default="oneshot", description="a search executor by name (das_tune.search.EXECUTORS; checked with the study)")
    warmup_epochs: int = Field(strict=True, default=1, ge=0, description="epochs of random subnets (see warmup_draw)")
    warmup_draw: Literal["uniform", "balanced"] = Field(
        default="uniform", description="the warm-up's subnets: uniformly random, or balanced (each keeps the candidates kept "
        "least so far, ties at random: every candidate is skipped equally often)"
    )
    search_epochs: int = Field(strict=True, default=2, ge=1, description="epochs with redundancy observations")
    observe_every: int = Field(strict=True, default=10, gt=0, description="training micro-batches between observation rounds (das_turn)")
    round_size: int = Field(strict=True, default=3, gt=0, description="trials per observation round (DAS: distinct subsets); its only home")
    observation: ObservationSpec = Field(
        default_factory=ObservationSpec, description=f"a mapping or a preset: {', '.join(OBSERVATION_PRESETS)}"
    )
    observation_batches: int = Field(strict=True, default=4, gt=0, description="batches the observations cycle over (batches: cycle)")
    max_steps_per_epoch: int | None = Field(strict=True, default=None, gt=0)
    workers: int = Field(
        strict=True, default=1, gt=0, description="data-parallel workers of the one-shot search (PyTorch DDP via Ray Train)"
    )

    @model_validator(mode="after")
    def _workers_fit(self) -> SearchSpec:
        if self.workers > self.batch_size:
            raise ValueError(
                f"workers: expected at most batch_size ({self.batch_size}) workers, each takes a share of every batch; got {self.workers}"
            )
        return self

    @field_validator("observation", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in OBSERVATION_PRESETS:
                raise ValueError(f"unknown observation preset {value!r}; expected one of {', '.join(OBSERVATION_PRESETS)} or a mapping")
            return OBSERVATION_PRESETS[value]
        return value

    ADDED_LATER: ClassVar[tuple[str, ...]] = ("warmup_draw",)

    @property
    def observation_batch_count(self) -> int:
        return 1 if self.observation.batches == "fixed" else self.observation_batches


class RetrainSpec(OptimSpec):
    """Training of the chosen subnet. After every epoch the val metric is read; the best epoch's weights are
    the result, and with ``patience`` the retrain stops once that many epochs in a row did not improve it."""

    epochs: int = Field(strict=True, default=10, gt=0, description="the most epochs")
    max_steps_per_epoch: int | None = Field(strict=True, default=None, gt=0)
    patience: int | None = Field(strict=True, default=None, gt=0, description="stop after this many epochs without a better val metric")
    min_delta: float = Field(default=0.0, ge=0, description="the least val gain that counts as better")
    min_epochs: int = Field(strict=True, default=1, gt=0, description="patience stops no retrain before this epoch (a "
                            "small subnet can sit on a val plateau for several epochs before it improves)")

    ADDED_LATER: ClassVar[tuple[str, ...]] = ("min_epochs",)


class RaySpec(_Strict):
    """Ray Tune executor settings (used when ``search.executor`` is ``ray``)."""

    address: str | None = Field(default=None, description="an existing cluster ('auto' or host:port)")
    num_trials: int = Field(strict=True, default=12, gt=0)
    steps_per_trial: int = Field(strict=True, default=20, gt=0)
    report_every: int = Field(strict=True, default=5, gt=0)
    cpus_per_trial: float = Field(default=1, gt=0)
    gpus_per_trial: float = Field(default=0, ge=0)
    max_concurrent_trials: int = Field(strict=True, default=2, gt=0)
    scheduler: Literal["asha", "median"] | None = Field(default="asha", description="a Ray Tune scheduler by name, or null (FIFO)")
    grace_period: int = Field(strict=True, default=1, gt=0, description="reports before a scheduler may stop a trial")
    max_failures: int = Field(strict=True, default=1, ge=0)
    storage_path: str | None = Field(default=None, description="absolute; shared storage on a cluster")


# A study name is also a folder name under output_dir: no path separators, no leading dot.
_FOLDER_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+=,@-]{0,119}$"  # a folder name, at most 120 characters


class StudySpec(_Strict):
    name: str = Field(pattern=_FOLDER_NAME)
    description: str = ""
    space: str
    num_skip: int | str | list[int] | dict[str, int] | None = Field(
        default=None, description="overrides the space's num_skip: a number or a range (1-3, '2,4,6,8', [2, 4], {min: 2, max: 8})"
    )
    backbone: BackboneSpec
    task: TaskSpec
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    storage: str = Field(default=DEFAULT_STORAGE, description="an Optuna storage URL or a journal file path")
    study_name: str | None = Field(default=None, pattern=_FOLDER_NAME, description="default: <name>-<sampler>-seed<seed>")
    output_dir: str = "runs"
    seed: int = Field(strict=True, default=0, ge=0, lt=2**32, description="NumPy's and Optuna's seeds are 32-bit")
    tiny: bool = Field(default=False, description="tiny random backbone and a few batches of data")

    @field_validator("num_skip", mode="before")
    @classmethod
    def _plain_number(cls, value: Any) -> Any:
        """``--num-skip 2`` arrives as text: a plain number stays a number (the range forms stay text)."""
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return value

    @model_validator(mode="after")
    def _round_size_in_one_place(self) -> StudySpec:
        for sampler, options in self.sampler.options.items():
            if "round_size" in options:
                raise ValueError(
                    f"field 'sampler.options.{sampler}.round_size': the round size is set in one place, "
                    f"search.round_size (now {self.search.round_size}); remove it from the sampler's options"
                )
        return self

    def load_space(self) -> SkipSpace:
        return load_space(self.space, self.num_skip)

    def search_settings(self) -> dict[str, Any]:
        """What a search's outcome depends on besides its sampler and seed, flat (``search.lr``: 0.002): the
        space, backbone, task, search budget (with the Ray executor, its trials' budget and scheduler) and tiny
        mode — local file paths and the worker count aside. A
        study records them, and resuming it with other settings is refused."""
        data = {**self.model_dump(mode="json", include={"backbone", "task", "tiny"}), "search": self.search.recorded()}
        data["space"] = self.load_space().model_dump(mode="json")
        if self.search.executor == "ray":  # a Ray trial's outcome depends on its budget and scheduler, not where it runs
            data["ray"] = self.ray.model_dump(mode="json", include=RAY_OUTCOME)
        for field in (*LOCAL_PATHS, "search.workers"):
            _pop_dotted(data, field)
        return _flat(data)

    @property
    def resolved_study_name(self) -> str:
        """``study_name``, else ``<name>-<sampler>-seed<seed>``; a num_skip range given as an override adds
        ``-skip<range>`` (``…-das-skip1-3-seed0``), so it does not collide with the single-size study, and a tiny
        run ends in ``-tiny``: its study and run folder are never the real run's."""
        if self.study_name:
            return self.study_name
        return f"{self.name}-{self.sampler.name}{_range_suffix(self.num_skip)}-seed{self.seed}" + ("-tiny" if self.tiny else "")

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

    def local_paths(self) -> dict[str, str]:
        """``{field: path}`` of the declared local files (see ``LOCAL_PATHS``), $VARS and ~ expanded."""
        data = self.model_dump()
        paths = {field: _get_dotted(data, field) for field in LOCAL_PATHS}
        return {field: os.path.expanduser(os.path.expandvars(p)) for field, p in paths.items() if isinstance(p, str)}

    def with_paths(self, paths: dict[str, str]) -> StudySpec:
        """This spec with the local-path fields in ``paths`` replaced."""
        data = self.model_dump()
        for field, path in paths.items():
            _set_dotted(data, field, path)
        return StudySpec.model_validate(data)


def _range_suffix(num_skip: Any) -> str:
    """``-skip1-3`` for a range override, ``""`` for none, a number, or a bad value (refused by the space later)."""
    if num_skip is None or isinstance(num_skip, int):
        return ""
    try:
        sizes = parse_num_skip(num_skip)
    except ValueError:
        return ""
    return f"-skip{size_label(sizes)}" if isinstance(sizes, tuple) else ""


def load_study_spec(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """A built-in study by name or a YAML file by path, with dotted-key overrides applied."""
    path = resources.resolve("studies", name_or_path)
    if path is None:
        known = ", ".join(resources.builtin_names("studies"))
        raise UserError(f"unknown study {shorten(str(name_or_path))!r}: expected a YAML file path or one of {known}")
    data = read_study_yaml(path)
    data.setdefault("name", path.stem)
    overrides = overrides or {}
    return _apply(data, overrides, str(path), tiny=bool(overrides.get("tiny", data.get("tiny"))))


def read_study_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A study file's fields; ``extends: STUDY`` (a built-in name or a path relative to the file) starts
    from that study's fields and replaces the ones this file declares (sections merge key by key), so a
    variant such as a sublayer study stays in step with the study it varies."""
    data = yaml_reader.read_yaml(path)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    relative = str(base_name).endswith((".yaml", ".yml")) and (path.parent / str(base_name)).is_file()
    base_path = path.parent / str(base_name) if relative else resources.resolve("studies", base_name)
    if base_path is None or base_path.resolve() in seen:
        problem = "extends itself" if base_path is not None else "is not a built-in study or a study file"
        raise UserError(f"{path}: field 'extends': {base_name!r} {problem}")
    return _merged(read_study_yaml(base_path, (*seen, path.resolve())), data)


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_sections else value
    return merged


def override_spec(spec: StudySpec, overrides: dict[str, Any], source: str) -> StudySpec:
    """A resolved spec (a run's ``study.yaml``) with more dotted-key overrides. Its settings are kept:
    tiny mode is applied only when the overrides turn ``tiny`` on."""
    turns_tiny_on = bool(overrides.get("tiny")) and not spec.tiny
    return _apply(spec.model_dump(), overrides, source, tiny=turns_tiny_on)


def _apply(data: dict[str, Any], overrides: dict[str, Any], source: str, *, tiny: bool) -> StudySpec:
    """The study file's fields, then tiny mode's (if on), then the user's overrides: an explicit
    ``--set`` always wins."""
    if tiny:
        final = copy.deepcopy(data)
        for key, value in overrides.items():
            _set_dotted(final, key, value)
        _make_tiny(data, backbone=_get_dotted(final, "backbone.name"), task=_get_dotted(final, "task.name"))
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    return yaml_reader.parse(StudySpec, data, source)


def _make_tiny(data: dict[str, Any], *, backbone: str | None, task: str | None) -> None:
    """Tiny mode, as each piece owns it: the backbone (named ``backbone`` once overridden) drops the
    options its tiny model sets itself, the task applies its small sizes, no local files are read, and
    the budgets are cut to a few steps."""
    from das_tune.backbones import REGISTRY, backbone_class
    from das_tune.tasks import TASKS

    for field in LOCAL_PATHS:
        _pop_dotted(data, field)
    options = _get_dotted(data, "backbone.options")
    if backbone in REGISTRY and isinstance(options, dict):
        for key in backbone_class(backbone).tiny_ignores:
            options.pop(key, None)
    if task in TASKS and isinstance(data.get("task"), dict):
        options = data["task"].get("options")
        data["task"]["options"] = {**(options if isinstance(options, dict) else {}), **TASKS[task].tiny_defaults}
    for key, value in TINY_BUDGETS.items():
        _set_dotted(data, key, value)


def default_study_for_space(space: str) -> str:
    """The built-in study of a space: the one named like it, else the only one that uses it, else the only one of
    those that extends none of the others (its variants say ``extends:`` it)."""
    load_space(space)  # an unknown space is reported as such
    names = resources.builtin_names("studies")
    if space in names:
        return space
    folder = resources.builtin_dir("studies")
    users = [n for n in names if read_study_yaml(folder / f"{n}.yaml").get("space") == space]
    if len(users) == 1:
        return users[0]
    bases = [n for n in users if yaml_reader.read_yaml(folder / f"{n}.yaml").get("extends") not in users]
    if len(bases) == 1:
        return bases[0]
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
    "retrain.min_epochs": 1,
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
            overrides[key.strip()] = yaml_reader.load_yaml_text(raw) if raw else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            raise UserError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it for a string") from None
    return overrides


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _pop_dotted(data: dict[str, Any], key: str) -> None:
    *parents, leaf = key.split(".")
    parent = _get_dotted(data, ".".join(parents)) if parents else data
    if isinstance(parent, dict):
        parent.pop(leaf, None)
