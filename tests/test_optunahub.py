"""The OptunaHub package: loads with optunahub, runs its example, needs no das-tune, and draws the very
same trials as das-tune's own DASSampler (so the two editions cannot drift apart unnoticed)."""

import math
import subprocess
import sys
from pathlib import Path

import optuna
import optunahub
import pytest

from das_tune import DASSampler, SkipSpace

REGISTRY = Path(__file__).resolve().parents[1] / "optunahub-registry" / "package"
PACKAGE = REGISTRY / "samplers" / "das"
LAYERS = ["En0", "En1", "En2", "En3", "En4", "En5"]
IMPORTANCE = dict(zip(LAYERS, [0.9, 0.1, 0.6, 0.8, 0.05, 0.7]))


@pytest.fixture(scope="module")
def hub():
    return optunahub.load_local_module(package="samplers/das", registry_root=str(REGISTRY))


def test_package_has_the_registry_layout():
    assert {p.name for p in PACKAGE.iterdir() if not p.name.startswith("__pycache__")} >= {
        "__init__.py", "sampler.py", "README.md", "example.py", "LICENSE",
    }
    front = PACKAGE.joinpath("README.md").read_text().split("---")[1]
    for field in ("author:", "title:", "description:", "tags: [sampler", "optuna_versions:", "license:"):
        assert field in front


def test_example_runs_without_das_tune(tmp_path):
    # das_tune made unimportable: the package must stand on Optuna and NumPy alone
    code = f"import runpy, sys; sys.modules['das_tune'] = None; runpy.run_path({str(PACKAGE / 'example.py')!r}, run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "chosen: ['L1', 'L4']" in result.stdout


def noisy_objective(space):
    def objective(trial: optuna.Trial) -> float:
        skipped = space.suggest(trial)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # the fallback's parameter
        return sum(IMPORTANCE[name] for name in skipped) + 0.05 * math.sin(trial.number) + abs(math.log10(lr) + 2) / 10

    return objective


@pytest.mark.parametrize("options", [{}, {"standardize": True, "round_size": 4, "lr": 0.5}])
def test_same_trials_as_das_tunes_sampler(hub, options):
    ours_space = SkipSpace(candidates=LAYERS, num_skip=2)
    hub_space = hub.SkipSpace(candidates=LAYERS, num_skip=2)
    ours = optuna.create_study(sampler=DASSampler(ours_space, seed=7, **options))
    theirs = optuna.create_study(sampler=hub.DASSampler(hub_space, seed=7, **options))
    ours.optimize(noisy_objective(ours_space), n_trials=48)
    theirs.optimize(noisy_objective(hub_space), n_trials=48)

    assert [t.params for t in ours.trials] == [t.params for t in theirs.trials]
    assert [t.user_attrs["skipped"] for t in ours.trials] == [t.user_attrs["skipped"] for t in theirs.trials]
    assert ours.sampler.probabilities(ours) == theirs.sampler.probabilities(theirs)
    assert ours.sampler.chosen(ours) == theirs.sampler.chosen(theirs)
    assert (ours.sampler.gate_history(ours) == theirs.sampler.gate_history(theirs)).all()
    assert len(set(ours.sampler.probabilities(ours).values())) > 1  # the gates moved: the comparison means something


def test_space_encodes_like_das_tunes(hub):
    ours, theirs = SkipSpace(candidates=LAYERS, num_skip=3), hub.SkipSpace(candidates=LAYERS, num_skip=3)
    assert ours.param_names == theirs.param_names and ours.num_subsets == theirs.num_subsets
    for subset in ours.all_subsets():
        assert ours.encode(subset) == theirs.encode(subset)
        assert theirs.decode(ours.encode(subset)) == subset
    with pytest.raises(ValueError, match="num_skip"):
        hub.SkipSpace(candidates=LAYERS, num_skip=6)
