"""The run folder: every file name a run writes, and the one place that writes, reads, checks and clears them.

A run folder holds (each written atomically; ``metrics.json`` last, so that its presence means "done"):
    subnet.json          the space, the skipped layers and how they were found (``results.SubnetFile``)
    adapters.safetensors the trained adapters, skip-adapters and head (nothing frozen)
    metrics.json         the metric, additional FLOPs/MACs, trainable params, latency, wall-clock
                         (``results.RetrainMetrics``)
    study.yaml           the resolved study spec (what ``das-tune retrain RUN_DIR`` reads back)
and, while a search runs, its checkpoints (``search_state.pt``, ``warmup_state.pt``) and a data-parallel
search's Ray Train folder. A retrain of another budget or subnet never replaces a run's artifacts: it goes
to its own folder ``RUN_DIR/retrain-<subnet>-<budget hash>/`` (see ``artifacts_folder``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from das_tune.artifacts import atomic
from das_tune.artifacts.results import FoundBy, RetrainMetrics, SubnetFile, write_json
from das_tune.errors import UserError
from das_tune.spec import yaml_reader
from das_tune.spec.study import StudySpec, override_spec

SUBNET_FILE, METRICS_FILE, WEIGHTS_FILE, SPEC_FILE = "subnet.json", "metrics.json", "adapters.safetensors", "study.yaml"
RUN_FILES = (SPEC_FILE, SUBNET_FILE, WEIGHTS_FILE, METRICS_FILE)
CHECKED_FILES = (WEIGHTS_FILE, SUBNET_FILE, SPEC_FILE)  # metrics.json, written last, records their sha256
FRONT_DIR = "front"  # a num_skip range's run: a run folder per retrained subnet, front/skip<m> and front/full
CHECKPOINT = "search_state.pt"
WARMUP_CHECKPOINT = "warmup_state.pt"  # the supernet after the warm-up: shareable by other searches
PROGRESS_FILES = (CHECKPOINT, WARMUP_CHECKPOINT)
RAY_TRAIN_FOLDER = "ray_train"  # the data-parallel executor's Ray Train storage (its own checkpoints)


# --- the artifacts of a retrain


def write_artifacts(
    spec: StudySpec, weights: dict[str, torch.Tensor], skipped: frozenset[str], found_by: FoundBy, metrics: RetrainMetrics, run_dir: Path
) -> RetrainMetrics:
    """The four artifacts, each atomically; metrics.json last, so that its presence means "done". Returns
    the metrics as written (with the checksums of the other three)."""
    space = spec.load_space()
    info = SubnetFile(
        space=space.name, candidates=list(space.candidates), num_skip=space.num_skip, skipped=space.ordered(skipped),
        backbone=spec.backbone.model_dump(), task=spec.task.model_dump(), **found_by.model_dump(),
    )
    atomic.check_finite(metrics.model_dump(), METRICS_FILE)  # before the first file is written
    weights = {k: v.contiguous() for k, v in weights.items()}
    atomic.write_with(run_dir / WEIGHTS_FILE, lambda tmp: save_file(weights, tmp))
    write_json(info, run_dir / SUBNET_FILE)
    save_spec(spec, run_dir)
    checksums = {name: atomic.sha256_of(run_dir / name) for name in CHECKED_FILES}
    written = metrics.model_copy(update={"checksums": checksums})
    write_json(written, run_dir / METRICS_FILE)
    return written


def save_spec(spec: StudySpec, run_dir: Path | None = None) -> None:
    atomic.write_text((run_dir or spec.run_dir) / SPEC_FILE, yaml.safe_dump(spec.model_dump(), sort_keys=False))


def retrain_budget(spec: StudySpec) -> dict[str, Any]:
    """What a retrain's result depends on besides the subnet, as metrics.json stores it."""
    return {"seed": spec.seed, "task": spec.task.model_dump(mode="json"), "retrain": spec.retrain.recorded()}


def same_retrain(metrics: RetrainMetrics, spec: StudySpec, skipped: frozenset[str]) -> bool:
    return set(metrics.skipped) == skipped and metrics.retrain_budget == retrain_budget(spec)


def finished_metrics(
    spec: StudySpec, skipped: frozenset[str], run_dir: Path | None = None, *, weights_required: bool = True
) -> RetrainMetrics | None:
    """The metrics of an earlier retrain of the same subnet, task and retrain budget in ``run_dir``
    (default: the run folder), if there is one."""
    metrics = read_metrics(run_dir or spec.run_dir, weights_required=weights_required)
    return metrics if metrics is not None and same_retrain(metrics, spec, skipped) else None


def artifacts_folder(run_dir: Path, spec: StudySpec, skipped: frozenset[str], *, own: bool = True) -> Path:
    """Where the retrain of ``skipped`` with ``spec``'s budget goes: the run folder if it holds no
    retrain yet (``own``: it is this retrain's own folder) or holds this same one; else its own
    folder ``RUN_DIR/retrain-<subnet>-<hash of the budget>``, so a finished run is never replaced."""
    metrics = read_metrics(run_dir)
    if metrics is not None and same_retrain(metrics, spec, skipped) or metrics is None and own:
        return run_dir
    label = "+".join(spec.load_space().ordered(skipped)) or "none"
    digest = hashlib.sha256(json.dumps(retrain_budget(spec), sort_keys=True).encode()).hexdigest()[:8]
    return run_dir / f"retrain-{label}-{digest}"


# --- reading a finished run back


@dataclass(frozen=True)
class RunFolder:
    """A finished run folder, read and checked: its spec, skipped layers and metrics."""

    path: Path
    spec: StudySpec
    skipped: tuple[str, ...]
    metrics: RetrainMetrics

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE


def not_a_run_folder(path: Path, reason: str) -> UserError:
    """``path: reason``; for the root of a num_skip range's run, where its subnets are instead."""
    subnets = sorted(p.name for p in (path / FRONT_DIR).glob("*") if (p / SUBNET_FILE).is_file())
    if not subnets:
        return UserError(f"{path}: {reason}")
    example = next((name for name in subnets if name.startswith("skip")), subnets[0])
    return UserError(
        f"{path}: a num_skip range's run, with a run folder per subnet: give one of them, e.g. {path / FRONT_DIR / example} "
        f"({FRONT_DIR}/ holds {', '.join(subnets)})"
    )


def is_run_folder(path: Path) -> bool:
    """Holds any of a run's files (a partial one is then reported by what it lacks)."""
    return any((path / name).is_file() for name in RUN_FILES)


def read_run_folder(path: str | Path, overrides: dict[str, Any] | None = None) -> RunFolder:
    """The run in ``path`` with ``overrides`` (``{"task.data_dir": ...}``) applied to its study."""
    path = Path(path)
    missing = [name for name in RUN_FILES if not (path / name).is_file()]
    if missing:
        raise not_a_run_folder(path, f"not a das-tune run folder (missing {', '.join(missing)})")
    spec, subnet = read_run(path)
    if overrides:
        spec = override_spec(spec, overrides, str(path / SPEC_FILE))
    metrics = read_metrics(path)
    if metrics is None:
        raise UserError(f"{path / METRICS_FILE}: written by another version of das-tune; retrain the run or pass --fresh")
    return RunFolder(path=path, spec=spec, skipped=tuple(subnet.skipped), metrics=metrics)


def read_run(run_dir: Path) -> tuple[StudySpec, SubnetFile]:
    """The spec and subnet of a finished run folder, for ``das-tune retrain RUN_DIR``."""
    spec_path, subnet_path = run_dir / SPEC_FILE, run_dir / SUBNET_FILE
    for path in (spec_path, subnet_path):
        if not path.is_file():
            raise not_a_run_folder(run_dir, f"not a das-tune run folder (expected {path.name} in it)")
    try:
        subnet = SubnetFile.model_validate(_read_json(subnet_path))
    except ValidationError as err:
        raise UserError(yaml_reader.validation_message(str(subnet_path), err)) from None
    spec = yaml_reader.load(StudySpec, spec_path)
    read_metrics(run_dir)
    return spec, subnet


def read_metrics(run_dir: Path, *, weights_required: bool = True) -> RetrainMetrics | None:
    """``run_dir``'s metrics.json if it has one (of this version) and its artifacts are intact (the sha256 it
    records, for runs that record them; readable weights); a damaged one is an error. Without
    ``weights_required`` (a benchmark needs only the numbers, and commits them without the weights) absent
    weights are allowed, damaged ones still are not."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    data = _read_json(path)
    if isinstance(data.get("checksums"), dict):  # absent in runs of older versions
        atomic.check_checksums(run_dir, data["checksums"], METRICS_FILE, "remove it or pass --fresh")
    weights = run_dir / WEIGHTS_FILE
    if weights.is_file():
        check_weights(weights)
    elif weights_required:
        raise UserError(f"{run_dir}: {METRICS_FILE} without {WEIGHTS_FILE}; remove {path.name} or pass --fresh")
    try:
        return RetrainMetrics.model_validate(data)
    except ValidationError:  # written by another version: retrain
        return None


def check_weights(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a complete safetensors file ({' '.join(str(err).split())}); remove it or pass --fresh") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); remove it or pass --fresh") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; remove it or pass --fresh")
    return data


# --- search checkpoints

CHECKPOINT_KEYS = {"position", "model", "trainer", "rng", "torch_rng", "cuda_rng", "study_name"}
RANKS_KEY = "ranks"  # a data-parallel checkpoint's per-rank states; its length is the number of workers


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic.write_with(path, lambda tmp: _save(state, tmp))


def _save(state: dict[str, Any], path: Path) -> None:
    with path.open("wb") as f:  # through a Python file: a full disk is then an OSError, not torch's bare stream error
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A supernet checkpoint, or a one-line error naming the file if it is truncated or not one."""
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as err:
        raise UserError(f"{path}: not a readable search checkpoint ({type(err).__name__}); remove it or pass --fresh") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise UserError(f"{path}: not a das-tune search checkpoint; remove it or pass --fresh")
    return state


def checkpoint_workers(state: dict[str, Any]) -> int:
    """How many workers wrote a search checkpoint (1: one process)."""
    return len(state.get(RANKS_KEY) or [None])


def checkpoint_workers_message(path: Path, written: int, workers: int) -> str:
    by = "one process" if written == 1 else f"{written} data-parallel workers"
    return (
        f"{path}: the search was checkpointed by {by}, so it resumes exactly only with search.workers={written} "
        f"(not {workers}); pass --workers {written}, or --fresh to start again"
    )


# --- checking and clearing a folder before a run writes


def check_run_folder(run_dir: Path) -> None:
    """Every file a run would read back is intact (else a one-line error naming it); called before
    anything is written, so a damaged folder is reported, not built on."""
    for name in PROGRESS_FILES:
        if (run_dir / name).is_file():
            load_checkpoint(run_dir / name)
    for folder in (run_dir, *sorted(run_dir.glob("retrain-*"))):
        if (folder / SUBNET_FILE).is_file():
            _read_json(folder / SUBNET_FILE)
        if (folder / SPEC_FILE).is_file():
            yaml_reader.load(StudySpec, folder / SPEC_FILE)
        read_metrics(folder)


def clear_run_folder(run_dir: Path) -> list[str]:
    """``--fresh``: remove the run's progress and artifacts, its ``retrain-*`` folders and a data-parallel
    run's Ray Train folder included (other files stay); returns what was removed."""
    removed = []
    for name in (*PROGRESS_FILES, *reversed(RUN_FILES)):  # metrics.json first: a half-cleared run is not "done"
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    for folder in [*sorted(run_dir.glob("retrain-*")), run_dir / RAY_TRAIN_FOLDER]:
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(folder.name + "/")
    return removed
