import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest

from das_tune.errors import UserError
from das_tune.report import dashboard
from das_tune.samplers import SAMPLER_ATTR, make_sampler
from das_tune.spec.spaces import SkipSpace

SPACE = SkipSpace(candidates=[f"En{i}" for i in range(6)], num_skip=2, name="tiny")
ROUND_SIZE = 3
RESULT = {"metric": "accuracy", "value": 0.81, "additional_gmacs": -0.42, "skipped": ["En0", "En1"]}
INSTALL_CHROMIUM = Path(__file__).with_name("install_chromium.sh")
SCREENSHOT = Path(__file__).parents[1] / "docs" / "dashboard.png"


def objective(trial: optuna.Trial) -> float:
    """Skipping En<i> costs 0.1·i: the search should learn to skip En0 and En1."""
    skipped = SPACE.suggest(trial)
    trial.set_user_attr("round", trial.number // ROUND_SIZE)
    trial.set_user_attr("phase", "search")
    trial.set_user_attr("additional_gmacs", -0.21 * len(skipped))
    trial.set_user_attr("trainable_params", 1000 - 10 * len(skipped))
    return 0.1 * sum(int(layer.removeprefix("En")) for layer in skipped)


def make_study(url: str, name: str, sampler_name: str, n_trials: int = 30) -> optuna.Study:
    """Run the search in memory, then store its trials in ``url`` (one transaction per trial: fast)."""
    options = {"round_size": ROUND_SIZE, "lr": 1.0} if sampler_name == "das" else {}
    sampler = make_sampler(sampler_name, SPACE, seed=0, **options)
    search = optuna.create_study(sampler=sampler)
    search.optimize(objective, n_trials=n_trials)
    study = optuna.create_study(study_name=name, storage=url, sampler=sampler)
    study._storage.set_study_system_attr(study._study_id, SAMPLER_ATTR, {"name": sampler_name, "seed": 0, **options})
    study.add_trials(search.trials)
    return study


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'studies.db'}"
    das = make_study(url, "tiny-das-seed0", "das")
    dashboard.save_study_report(das, SPACE, result={**RESULT, "value": 0.5}, artifacts_dir="/old")
    dashboard.save_study_report(das, SPACE, result=RESULT, artifacts_dir="runs/tiny-das-seed0")
    dashboard.save_study_report(make_study(url, "tiny-random-seed0", "random", n_trials=12), SPACE)
    return url


@pytest.fixture(scope="module")
def server(storage_url):
    srv = dashboard.make_server(storage_url, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def study_ids(base: str) -> dict[str, int]:
    return {s["study_name"]: s["study_id"] for s in get_json(f"{base}/api/studies")["study_summaries"]}


def test_dashboard_serves_trials_plots_and_note(server):
    ids = study_ids(server)
    assert set(ids) == {"tiny-das-seed0", "tiny-random-seed0"}
    detail = get_json(f"{server}/api/studies/{ids['tiny-das-seed0']}?after=0")

    assert len(detail["trials"]) == 30
    attrs = {a["key"]: a["value"] for a in detail["trials"][4]["user_attrs"]}
    assert set(attrs) == {"skipped", "round", "phase", "additional_gmacs", "trainable_params"}
    assert len(json.loads(attrs["skipped"])) == 2 and attrs["round"] == "1" and attrs["phase"] == "search"

    plots = {p["id"]: json.loads(p["graph_object"]) for p in detail["plotly_graph_objects"]}
    assert sorted(plots) == sorted(dashboard.PLOT_IDS.values())  # saved three times, not duplicated
    gates = plots["das-tune-layers"]
    assert [t["name"] for t in gates["data"]] == ["En0 (skipped)", "En1 (skipped)", "En2", "En3", "En4", "En5"]
    assert plots["das-tune-result"]["data"][0]["y"] == [0.81]

    body = detail["note"]["body"]
    assert "En0, En1" in body and "runs/tiny-das-seed0" in body and "accuracy = 0.81" in body
    assert "/old" not in body


def test_random_study_gets_skip_frequencies_and_no_result_plot(server):
    detail = get_json(f"{server}/api/studies/{study_ids(server)['tiny-random-seed0']}?after=0")
    plots = {p["id"]: json.loads(p["graph_object"]) for p in detail["plotly_graph_objects"]}
    assert sorted(plots) == ["das-tune-layers", "das-tune-loss"]
    assert plots["das-tune-layers"]["data"][0]["type"] == "heatmap"
    assert "**sampler**: random (seed 0)" in detail["note"]["body"]


def test_gate_history_replays_the_sampler_round_by_round(storage_url):
    study = optuna.load_study(study_name="tiny-das-seed0", storage=storage_url)
    sampler = make_sampler("das", SPACE, seed=0, round_size=ROUND_SIZE)
    history = sampler.gate_history(study)
    assert history.shape == (1 + 30 // ROUND_SIZE, 6)
    assert not history[0].any()
    np.testing.assert_allclose(history[-1], sampler.gates(study))
    truncated = optuna.create_study()
    truncated.add_trials(study.trials[: 4 * ROUND_SIZE])
    np.testing.assert_allclose(history[4], sampler.gates(truncated))


def test_plots_stay_small_for_long_searches():
    gates = np.cumsum(np.random.default_rng(0).normal(size=(5001, 6)), axis=0)
    fig = dashboard.probability_figure(SPACE, gates, frozenset({"En0"}))
    assert all(len(trace.x) <= dashboard.MAX_POINTS and trace.x[-1] == 5000 for trace in fig.data)


def test_serve_rejects_a_missing_storage_and_a_taken_port(tmp_path, storage_url):
    with pytest.raises(UserError, match="does not exist"):
        dashboard.serve(f"sqlite:///{tmp_path / 'nothing.db'}")
    assert not (tmp_path / "nothing.db").exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            dashboard.serve(storage_url, port=taken.getsockname()[1])


def test_serve_refuses_a_file_that_is_not_an_optuna_storage_and_leaves_it_untouched(tmp_path):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text)")
    (tmp_path / "notes.log").write_text("not a journal\n")
    for url, path in [(f"sqlite:///{foreign}", foreign), (str(tmp_path / "notes.log"), tmp_path / "notes.log")]:
        before = path.read_bytes()
        result = subprocess.run([sys.executable, "-m", "das_tune.cli", "dashboard", "--storage", url, "--port", "0"],
                                capture_output=True, text=True, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "is not an Optuna storage" in lines[0], result.stderr
        assert path.read_bytes() == before


def chromium() -> str:
    if not Path("/usr/bin/chromium").exists():
        try:
            subprocess.run(["sh", str(INSTALL_CHROMIUM)], check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as err:
            pytest.skip(f"headless Chromium is not installed and {INSTALL_CHROMIUM.name} failed: {err}")
    return "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.browser
def test_study_page_shows_the_gate_plot(server, tmp_path):
    browser = chromium()
    study_id = study_ids(server)["tiny-das-seed0"]
    shot = tmp_path / "study.png"
    subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2300", "--hide-scrollbars",
            "--virtual-time-budget=20000", f"--screenshot={shot}", f"{server}/dashboard/studies/{study_id}",
        ],
        check=True, capture_output=True, timeout=180,
    )
    assert shot.stat().st_size > 50_000  # a rendered page with plots, not a blank one
    if os.environ.get("DAS_TUNE_UPDATE_SCREENSHOT"):  # refresh the README's picture on request only
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
