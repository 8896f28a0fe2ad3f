"""The data-parallel one-shot search (PyTorch DDP through Ray Train, gloo on CPU, on the test Ray
cluster: one worker per node): with 2 workers it gives the same trials, gates and chosen subnet as
one process with the same global batch, and a diverged search fails as itself. Killed and resumed, and
its pieces on their own, without Ray: tests/test_data_parallel_resume.py."""

import numpy as np
import optuna
import pytest

from das_tune.errors import RunFailure
from das_tune.jobs.runner import search
from das_tune.progress import Reporter
from das_tune.samplers.das import DASSampler
from das_tune.search.ray_cluster import ray_session
from das_tune.spec.study import RaySpec, load_study_spec
from das_tune.training.components import build_components
from das_tune.training.loop import seed_everything

# dropout off: a training step is then deterministic, so 2 workers must equal 1 process numerically
DETERMINISTIC = {"tiny": True, "backbone.options.dropout": 0.0, "search.search_epochs": 2}


def run_search(tmp_path, workers: int) -> optuna.Study:
    spec = load_study_spec("easyvqa_minilm", {
        **DETERMINISTIC, "search.workers": workers,
        "storage": f"sqlite:///{tmp_path / f'w{workers}.db'}", "output_dir": str(tmp_path / f"w{workers}"),
    })
    seed_everything(spec.seed)
    found = search(spec, build_components(spec), fresh=False, reporter=Reporter())
    assert found.found_by.workers == workers
    assert found.found_by.executor == ("data_parallel" if workers > 1 else "oneshot")
    return found.study


@pytest.mark.slow
def test_two_workers_equal_one_process(ray_cluster, tmp_path):
    one = run_search(tmp_path, 1)
    with ray_session(RaySpec(address=ray_cluster.address)):
        two = run_search(tmp_path, 2)
    assert len(one.trials) == len(two.trials) >= 6
    for a, b in zip(one.trials, two.trials):
        assert a.user_attrs["skipped"] == b.user_attrs["skipped"]  # the same subsets asked
        assert b.value == pytest.approx(a.value, rel=1e-4, abs=1e-5)  # scored alike
        assert b.user_attrs["round"] == a.user_attrs["round"]
    sampler = DASSampler(one.sampler.space, round_size=3)
    np.testing.assert_allclose(sampler.gates(two), sampler.gates(one), rtol=1e-3, atol=1e-6)
    assert sampler.chosen(two) == sampler.chosen(one)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_diverged_data_parallel_search_fails_as_itself(ray_cluster, tmp_path):
    """Every rank sees the whole batch's loss, so a NaN stops them all at one step (none is left
    waiting in a collective), and the driver raises the workers' RunFailure, not Ray's wrapper."""
    spec = load_study_spec("easyvqa_minilm", {
        "tiny": True, "search.workers": 2, "search.lr": 1e30,
        "storage": f"sqlite:///{tmp_path / 'nan.db'}", "output_dir": str(tmp_path / "nan"),
    })
    with ray_session(RaySpec(address=ray_cluster.address)), pytest.raises(RunFailure, match="diverged"):
        search(spec, build_components(spec), fresh=False, reporter=Reporter())
