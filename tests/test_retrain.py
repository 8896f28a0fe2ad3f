"""The final retrain on a tiny model: it stops on a validation plateau and keeps its best epoch."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from das_tune.artifacts.results import FoundBy, RetrainMetrics
from das_tune.artifacts.run_folder import METRICS_FILE, WEIGHTS_FILE, read_run, retrain_budget
from das_tune.jobs.runner import run
from das_tune.progress import Reporter
from das_tune.spec.study import RetrainSpec, load_study_spec
from das_tune.training import loop
from das_tune.training.components import build_components
from das_tune.training.retrain import Trained, budget_warning, full_model_latency, retrain


class Warnings(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(message)


def tiny_spec(tmp_path, *, sets=None, **retrain_fields):
    overrides = {"tiny": True, "output_dir": str(tmp_path / "runs"), "storage": f"sqlite:///{tmp_path}/s.db", **(sets or {})}
    overrides.update({f"retrain.{k}": v for k, v in retrain_fields.items()})
    return load_study_spec("easyvqa_minilm", overrides)


@pytest.mark.slow
def test_retrain_stops_on_a_plateau_and_restores_the_best_epoch(tmp_path):
    # min_delta 1.0: no epoch after the first can count as better, so patience 1 stops after epoch 2
    spec = tiny_spec(tmp_path, epochs=4, patience=1, min_delta=1.0)
    parts = build_components(spec)
    warnings = Warnings()
    metrics = retrain(spec, parts, frozenset({"En1", "En2"}), FoundBy(sampler="test"), warnings)
    assert metrics.epochs_run == 2 and metrics.best_epoch == 1
    assert len(metrics.val_history) == 2 and metrics.val_history[0] == metrics.val  # every epoch's val; the kept one is epoch 1's
    assert warnings.lines == [warnings.lines[0]] and "stopped at epoch 2 of 4 on a plateau from epoch 1" in warnings.lines[0]

    loop.seed_everything(spec.seed)  # the same tiny random frozen weights as the retrain's
    full = parts.fresh_backbone()
    parts.task.attach(full)
    subnet = full.export({"En1", "En2"})
    subnet.load_state_dict(load_file(spec.run_dir / WEIGHTS_FILE), strict=False)
    val = loop.evaluate(subnet, parts.task, "val", spec.retrain.batch_size)
    assert val == pytest.approx(metrics.val)  # the saved weights are epoch 1's, not epoch 2's
    assert metrics.retrain_budget["retrain"]["patience"] == 1
    assert RetrainMetrics.read(spec.run_dir / METRICS_FILE) == metrics  # the typed file carries the epochs


@pytest.mark.slow
def test_patience_stops_no_retrain_before_min_epochs(tmp_path):
    # as above, patience 1 would stop after epoch 2; min_epochs 3 keeps it going to epoch 3
    spec = tiny_spec(tmp_path, epochs=4, patience=1, min_delta=1.0, min_epochs=3)
    metrics = retrain(spec, build_components(spec), frozenset({"En1", "En2"}), FoundBy(sampler="test"), Warnings())
    assert (metrics.best_epoch, metrics.epochs_run) == (1, 3)
    assert metrics.retrain_budget["retrain"]["min_epochs"] == 3


def test_a_budget_at_the_default_min_epochs_matches_results_written_before_it_existed(tmp_path):
    budget = retrain_budget(tiny_spec(tmp_path, patience=3))
    assert "min_epochs" not in budget["retrain"] and budget["retrain"]["patience"] == 3  # as earlier metrics.json hold it
    assert retrain_budget(tiny_spec(tmp_path, patience=3, min_epochs=2))["retrain"]["min_epochs"] == 2


@pytest.mark.slow
def test_a_retrain_whose_val_metric_reaches_its_maximum_stops_there_without_a_warning(tmp_path):
    spec = tiny_spec(tmp_path, epochs=4, patience=None)
    parts = build_components(spec)
    parts.task.metric_max = 0.0  # any val accuracy reaches it
    warnings = Warnings()
    metrics = retrain(spec, parts, frozenset({"En1"}), FoundBy(sampler="test"), warnings)
    assert (metrics.best_epoch, metrics.epochs_run, warnings.lines) == (1, 1, [])


def test_budget_warning_names_the_fix():
    spec = RetrainSpec(epochs=8, patience=3)
    val = {"accuracy": 0.8}
    learning = budget_warning(spec, Trained(val, best_epoch=8, epochs_run=8), "accuracy", last_gain=0.05)
    assert "still learning" in learning and "raise retrain.epochs" in learning
    assert budget_warning(spec, Trained(val, best_epoch=8, epochs_run=8), "accuracy", last_gain=0.002) is None  # converged
    plateau = budget_warning(spec, Trained(val, best_epoch=2, epochs_run=5), "accuracy", last_gain=0.1)
    assert "stopped at epoch 5 of 8 on a plateau from epoch 2" in plateau and "raise retrain.min_epochs" in plateau
    assert budget_warning(spec, Trained(val, best_epoch=4, epochs_run=7), "accuracy", last_gain=0.1) is None
    perfect = Trained({"accuracy": 1.0}, best_epoch=2, epochs_run=2)  # stopped at the ceiling, not on a plateau
    assert budget_warning(spec, perfect, "accuracy", last_gain=0.1) is None
    by_kind = {"accuracy": 0.85, "loss": 0.4, "accuracy[yes/no]": 0.794, "accuracy[shape]": 0.99, "accuracy[colour]": 1.0}
    plateau = budget_warning(spec, Trained(by_kind, best_epoch=2, epochs_run=5), "accuracy", last_gain=0.1)
    assert "(val accuracy 0.8500; by group: yes/no 0.79, shape 0.99, colour 1.00)" in plateau  # which answers it misses


@pytest.mark.slow
def test_latency_has_its_spread_and_the_full_model_is_measured_once(tmp_path):
    spec = tiny_spec(tmp_path, epochs=1, max_steps_per_epoch=1)
    parts = build_components(spec)
    full = full_model_latency(parts)
    assert full.q25 <= full.median <= full.q75
    metrics = retrain(spec, parts, frozenset({"En1"}), FoundBy(sampler="test"), Reporter(), full_latency=full)
    assert metrics.latency_full_ms == full.median * 1e3 and metrics.latency_full_iqr_ms == (full.q25 * 1e3, full.q75 * 1e3)
    low, high = metrics.latency_subnet_iqr_ms
    assert low <= metrics.latency_subnet_ms <= high
    assert metrics.speedup_within_noise == (low <= full.q75 * 1e3 and full.q25 * 1e3 <= high)
    reference = retrain(spec, parts, frozenset(), FoundBy(sampler="test"), Reporter(), out_dir=tmp_path / "full", full_latency=full)
    assert reference.speedup == 1.0 and reference.speedup_within_noise is None  # the full model against itself


@pytest.mark.slow
def test_a_choice_among_tied_gates_says_it_was_a_tie_break(tmp_path):
    # a gate step of 0: DAS's gates never leave 0 (p = 0.50), as the reference rule's can on a short budget
    spec = tiny_spec(tmp_path, sets={"sampler.options.das.lr": 0.0}, epochs=1, max_steps_per_epoch=1)
    done = run(spec)
    assert done.tie_break.startswith("En0, En1, En2, En3, En4, En5 ended with equal skip probabilities (0.50)")
    assert "candidate order picked En0, En1 among them for the 2 to skip" in done.tie_break
    assert read_run(spec.run_dir)[1].tie_break == ["En0", "En1", "En2", "En3", "En4", "En5"]  # subnet.json says it too
