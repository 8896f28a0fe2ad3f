"""PostgreSQL as the storage of every command, on a throw-away server on 127.0.0.1 (conftest's
``postgresql``): Ray trials of one study, four one-shot studies written at once, the dashboard and
the benchmark reading and writing it, and a wrong password refused as bad input."""

import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from conftest import LOOPBACK, run_cli
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def oneshot_url(postgresql, tmp_path_factory):
    """Four one-shot studies (seeds 0-3) run at the same time on one fresh database."""
    url = postgresql.create_database("oneshot")
    work = tmp_path_factory.mktemp("oneshot")
    run = lambda seed: run_cli(  # noqa: E731
        "run", "--space", "minilm_vqa", "--tiny", "--seed", str(seed), "--storage", url, "--quiet", cwd=work, timeout=500
    )
    with ThreadPoolExecutor(len(SEEDS)) as pool:
        results = list(pool.map(run, SEEDS))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return url


def test_four_oneshot_studies_at_once(oneshot_url):
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(oneshot_url)}
    assert set(summaries) == {f"easyvqa_minilm-das-seed{seed}-tiny" for seed in SEEDS}
    for name in summaries:
        trials = optuna.load_study(study_name=name, storage=oneshot_url).trials
        assert len(trials) >= 3 and len(trials) % 3 == 0  # whole observation rounds of 3
        assert all(t.state == TrialState.COMPLETE and t.user_attrs["phase"] == "search" for t in trials)


def test_dashboard_reads_postgresql(oneshot_url):
    server = subprocess.Popen(
        [sys.executable, "-m", "das_tune.cli", "dashboard", "--storage", oneshot_url, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = server.stdout.readline()
        assert "das-tune-test" not in line  # the password is not shown
        base = line.split("http://", 1)[1].split("/dashboard", 1)[0]
        assert base.startswith(f"{LOOPBACK}:")
        with urllib.request.urlopen(f"http://{base}/api/studies", timeout=60) as response:
            studies = json.load(response)["study_summaries"]
        assert {s["study_name"] for s in studies} == {f"easyvqa_minilm-das-seed{seed}-tiny" for seed in SEEDS}
        study_id = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://{base}/api/studies/{study_id}?after=0", timeout=60) as response:
            detail = json.load(response)
        assert detail["trials"] and all(t["state"] == "Complete" for t in detail["trials"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ray_trials_of_one_study(postgresql, ray_cluster, tmp_path):
    url = postgresql.create_database("ray")
    result = run_cli(
        "run", "--space", "minilm_vqa", "--tiny", "--executor", "ray", "--address", ray_cluster.address, "--storage", url,
        "--set", "ray.num_trials=4", "--set", f"ray.storage_path={tmp_path / 'shared'}", "--quiet", cwd=tmp_path, timeout=500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="easyvqa_minilm-das-seed0-tiny", storage=url).trials
    assert len(trials) == 4 and all(t.state.is_finished() and t.user_attrs["phase"] == "ray" for t in trials)
    assert sum(t.state != TrialState.FAIL for t in trials) == 4
    assert all(t.user_attrs["node_ip"] == LOOPBACK for t in trials)


def test_bench_on_postgresql(postgresql, tmp_path):
    url = postgresql.create_database("bench")
    result = run_cli(
        "bench", "--space", "minilm_vqa", "--tiny", "--seeds", "1", "--retrain-seeds", "1", "--samplers", "das,random",
        "--methods", "", "--set", "search.search_epochs=1", "--set", "search.round_size=2", "--set", "search.observe_every=3",
        "--storage", url, "--out", "out", "--quiet", cwd=tmp_path, timeout=500,  # 4 of 15 subsets: a budget the bench accepts
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert len(names) == 2 and all("seed0" in n for n in names)
    assert (tmp_path / "out" / "results.json").is_file()


@pytest.mark.parametrize("command", [
    ["run", "--space", "minilm_vqa", "--tiny"],
    ["bench", "--space", "minilm_vqa", "--tiny", "--seeds", "1", "--retrain-seeds", "1", "--samplers", "das", "--methods", "",
     "--set", "search.search_epochs=1", "--set", "search.round_size=2", "--set", "search.observe_every=6"],  # no budget warning
    ["dashboard", "--port", "0"],
])
def test_wrong_password_is_bad_input(postgresql, tmp_path, command):
    url = postgresql.url("postgres", password="not-the-password")
    result = run_cli(*command, "--storage", url, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "password authentication failed" in result.stderr and "not-the-password" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
