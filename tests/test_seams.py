"""The seams between the pieces: the skip policy (the only view of a sampler the loops have), the round
size's one home, tiny mode owned by backbones and tasks with the user's --set winning, local paths."""

import ast
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from das_tune.spec import resources
from das_tune.training.components import build_components
from das_tune.errors import UserError
from das_tune.samplers import SkipPolicy, make_sampler, skip_policy, study_policy
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import load_study_spec

PACKAGE = Path(__file__).resolve().parents[1] / "das_tune"
SPACE = SkipSpace(candidates=[f"En{i}" for i in range(6)], num_skip=2, name="seams")


def objective(trial: optuna.Trial) -> float:
    return 0.1 * sum(int(layer[2:]) for layer in SPACE.suggest(trial))  # skipping En0, En1 is best


def study_of(name: str, n_trials: int = 12) -> optuna.Study:
    options = {"round_size": 3} if name == "das" else {}
    study = optuna.create_study(sampler=make_sampler(name, SPACE, seed=0, **options))
    study.optimize(objective, n_trials=n_trials)
    return study


def test_das_brings_its_own_policy():
    study = study_of("das")
    policy = skip_policy(study.sampler, SPACE, round_size=5)  # DAS's own round size wins: it is the same setting
    assert policy.round_size == 3 and policy.round_of(5) == 1 and policy.closes_round(5) and not policy.closes_round(4)
    p = policy.probabilities(study)
    assert set(p) == set(SPACE.candidates) and len(set(p.values())) > 1
    history = policy.history(study)
    assert history.shape == (1 + 12 // 3, 6) and np.allclose(history[0], 0.5)
    np.testing.assert_allclose(history[-1], [p[c] for c in SPACE.candidates])
    assert policy.chosen(study) == SPACE.top(p)


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_other_samplers_get_the_uniform_best_trial_policy(name):
    study = study_of(name)
    policy = skip_policy(study.sampler, SPACE, round_size=4)
    assert type(policy) is SkipPolicy and policy.round_size == 4 and policy.round_of(7) == 1
    assert policy.probabilities(study) is None and policy.history(study) is None
    assert policy.chosen(study) == SPACE.decode(study.best_trial.params)
    rng = np.random.default_rng(0)
    draws = [policy.draw(None, rng) for _ in range(3000)]
    counts = {c: sum(c in d for d in draws) for c in SPACE.candidates}
    assert all(abs(n / 3000 - 2 / 6) < 0.04 for n in counts.values())  # uniform: each layer in 1/3 of the draws


def test_a_stored_study_gets_its_recorded_samplers_policy(tmp_path):
    from das_tune.progress import Reporter
    from das_tune.jobs.runner import open_spec_study
    from das_tune.samplers.das import DASPolicy

    spec = load_study_spec("easyvqa_minilm", {"tiny": True, "storage": f"sqlite:///{tmp_path}/s.db"})
    parts = build_components(spec)
    open_spec_study(spec, parts, fresh=False, reporter=Reporter())
    loaded = optuna.load_study(study_name=spec.resolved_study_name, storage=spec.storage)  # a default sampler
    policy = study_policy(loaded, parts.space)
    assert isinstance(policy, DASPolicy) and policy.round_size == spec.search.round_size
    assert policy.sampler.standardize  # the study file's DAS options, from the record


def _knows_das(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name in ("DASSampler", "draw_subset") for a in node.names):
            found.append(f"imports {[a.name for a in node.names]} from {node.module}")
        if isinstance(node, ast.Import) and any(a.name == "das_tune.samplers.das" for a in node.names):
            found.append("imports das_tune.samplers.das")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and "DASSampler" in ast.unparse(node):
            found.append(f"tests {ast.unparse(node)}")
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "das" for c in [node.left, *node.comparators]):
            found.append(f"compares {ast.unparse(node)}")
    return found


def test_nothing_outside_the_samplers_knows_how_das_decides():
    # das_tune/__init__.py only re-exports the public API (``from das_tune import DASSampler``).
    modules = [p for p in PACKAGE.rglob("*.py") if "samplers" not in p.parts and p != PACKAGE / "__init__.py"]
    assert len(modules) > 30
    offenders = {str(p.relative_to(PACKAGE)): found for p in modules if (found := _knows_das(ast.parse(p.read_text())))}
    assert not offenders
    assert _knows_das(ast.parse("from das_tune.samplers.das import DASSampler\nif name == 'das': pass"))  # the check bites


def test_round_size_has_one_home():
    assert load_study_spec("easyvqa_minilm", {"search.round_size": 4}).search.round_size == 4
    with pytest.raises(UserError, match=r"field 'sampler.options.das.round_size': the round size is set in one place, search.round_size"):
        load_study_spec("easyvqa_minilm", {"sampler.options.das.round_size": 4})


def test_tiny_mode_is_the_backbones_and_the_tasks_and_set_wins():
    tiny = load_study_spec("easyvqa_minilm", {"tiny": True})
    assert tiny.task.options["train_limit"] == 64 and "max_text_len" not in tiny.backbone.options  # the study's 3000 and 24 go
    assert tiny.search.batch_size == 4 and tiny.retrain.epochs == 1
    spec = load_study_spec("easyvqa_minilm", {"tiny": True, "task.options.train_limit": 200, "backbone.options.max_text_len": 16})
    parts = build_components(spec)
    assert len(parts.task.examples("train")) == 200 and len(parts.task.examples("val")) == 32
    assert parts.model.max_text_len == 16



def test_tiny_mode_drops_a_studys_vl_weights_and_set_wins(tmp_path):
    # the study names MiniLM-sized pre-trained weights; the tiny model has neither their sizes nor the file
    missing = str(tmp_path / "missing.safetensors")
    data = yaml.safe_load((resources.builtin_dir("studies") / "easyvqa_minilm.yaml").read_text())
    data["backbone"]["options"]["vl_weights"] = missing
    study = tmp_path / "vl.yaml"
    study.write_text(yaml.safe_dump(data))
    assert load_study_spec(study).backbone.options["vl_weights"] == missing
    tiny = load_study_spec(study, {"tiny": True})
    assert "vl_weights" not in tiny.backbone.options
    build_components(tiny)  # the tiny model, without the study's weights
    with pytest.raises(UserError, match="vision-language weights .*missing.safetensors not found"):
        build_components(load_study_spec(study, {"tiny": True, "backbone.options.vl_weights": missing}))

def test_local_paths_are_listed_once_and_made_absolute_for_ray_workers(tmp_path, monkeypatch):
    from das_tune.search.ray_tune import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    monkeypatch.setenv("DATA", str(tmp_path / "data"))
    spec = load_study_spec("easyvqa_minilm", {"backbone.options.tokenizer": "tok", "task.data_dir": "$DATA"})
    assert spec.local_paths() == {"backbone.options.tokenizer": "tok", "task.data_dir": str(tmp_path / "data")}
    with pytest.raises(UserError, match=r"task.data_dir = .*data \(put it there"):
        build_components(spec)
    worker = absolute_paths(spec)
    assert worker.backbone.options["tokenizer"] == str(tmp_path / "tok") and worker.task.data_dir == "$DATA"  # missing: kept
    assert worker.output_dir == str(tmp_path / "runs") and worker.storage == f"sqlite:///{tmp_path / 'das_tune.db'}"
    assert load_study_spec("easyvqa_minilm", {"tiny": True, "backbone.options.tokenizer": "tok"}).local_paths() == {
        "backbone.options.tokenizer": "tok"  # explicit, so it wins over tiny mode
    }
