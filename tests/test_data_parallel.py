"""The data-parallel one-shot search (PyTorch DDP through Ray Train, gloo on CPU, on the test Ray
cluster: one worker per node): with 2 workers it gives the same trials, gates and chosen subnet as
one process with the same global batch; and its pieces (row split, gradient average) on their own."""

import numpy as np
import optuna
import pytest
import torch

from das_tune.components import build_components
from das_tune.progress import Reporter
from das_tune.runner import search
from das_tune.samplers.das import DASSampler
from das_tune.search.data_parallel import rows_of
from das_tune.search.ray_cluster import ray_session
from das_tune.study import RaySpec, load_study_spec
from das_tune.training import seed_everything

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


def test_rows_split_covers_the_batch_once():
    batch = {"inputs": {"input_ids": torch.arange(10).reshape(5, 2)}, "targets": torch.arange(5), "questions": list("abcde"), "n": 7}
    parts = [rows_of(batch, rank, 2) for rank in range(2)]
    assert [(mine, total) for _, mine, total in parts] == [(3, 5), (2, 5)]
    assert sorted(torch.cat([p["targets"] for p, _, _ in parts]).tolist()) == list(range(5))
    assert parts[1][0]["questions"] == ["b", "d"] and parts[1][0]["n"] == 7
    assert parts[0][0]["inputs"]["input_ids"].tolist() == [[0, 1], [4, 5], [8, 9]]


def test_workers_flag_bad_input(cli, tmp_path):
    result = cli("run", "--space", "minilm_vqa", "--tiny", "--workers", "0")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "search.workers" in result.stderr
    assert list(tmp_path.iterdir()) == []
