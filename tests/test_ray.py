"""The Ray Tune executor with real Ray on 2 CPUs: a CLI run killed and resumed, ASHA pruning,
an injected failing trial, and what Optuna is told."""

import json
import logging
import math
import os
import pickle
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
import ray
import ray.tune
from conftest import LOOPBACK, python
from optuna.trial import TrialState

from das_tune.progress import Reporter
from das_tune.search.prepare import prepare_search
from das_tune.search.ray_tune import PHASE, RaySearch, SkipSearcher, StudyProgress, SuggestSkip, trial_outcome
from das_tune.spec.study import load_study_spec
from das_tune.training.components import build_components

pytestmark = pytest.mark.slow

STUDY = "easyvqa_minilm-das-seed0-tiny"
WORKER = Path(__file__).parent / "kill_worker.py"
RUN = ["run", "--space", "minilm_vqa", "--tiny", "--executor", "ray", "--set", "ray.num_trials=6"]


def load(db) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").trials


def finished_trials(db) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_outcome_rule():
    assert trial_outcome({"loss": 1.5, "step": 4}, False, 4) == (TrialState.COMPLETE, 1.5)
    assert trial_outcome({"loss": 1.5, "step": 1}, False, 4) == (TrialState.PRUNED, None)  # stopped by ASHA
    assert trial_outcome({"loss": math.nan, "step": 4}, False, 4) == (TrialState.FAIL, None)
    assert trial_outcome({"loss": math.inf, "step": 1}, False, 4) == (TrialState.FAIL, None)
    assert trial_outcome({"loss": 1.5, "step": 2}, True, 4) == (TrialState.FAIL, None)
    assert trial_outcome(None, False, 4) == (TrialState.PRUNED, None)


def test_cli_run_killed_then_resumed(tmp_path):
    """A hard kill of the driver and its Ray processes right after the 2nd Ray trial is told to
    Optuna (a controlled point, not a race with the clock), then the same command: the experiment continues."""
    db = tmp_path / "das_tune.db"
    cmd = [*python(), "-m", "das_tune.cli", *RUN]
    kill = [*python(), str(WORKER), "killgroup:3:only=on_trial_complete", *RUN, "--quiet"]
    first = subprocess.run(kill, cwd=tmp_path, start_new_session=True, capture_output=True, text=True, timeout=400)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    before = finished_trials(db)
    assert before == 2
    told_before = {t.user_attrs["ray_trial_id"] for t in load(db) if t.state.is_finished()}

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the Ray Tune experiment" in again.stderr
    assert (tmp_path / "runs" / STUDY / "subnet.json").exists()

    trials = load(db)
    by_number = {t.number: t for t in trials}
    assert finished_trials(db) > before
    assert all(t.state.is_finished() for t in trials)
    outcomes = [t for t in trials if t.state != TrialState.FAIL]  # FAIL: in flight at the kill
    experiment = tmp_path / "runs" / "ray" / STUDY
    ray_trials = {t.trial_id for t in ray.tune.ExperimentAnalysis(str(experiment)).trials}
    told = Counter(t.user_attrs["ray_trial_id"] for t in outcomes)
    assert len(ray_trials) == 6 and all(told[i] == 1 for i in ray_trials)  # each Ray trial told once
    # Told before the kill but after Ray last saved its state: kept, and Ray ran another in its place.
    assert set(told) - ray_trials <= told_before and max(told.values()) == 1
    assert all(t.user_attrs["phase"] == "ray" and len(t.user_attrs["skipped"]) == 2 for t in outcomes)
    assert {"round", "additional_gmacs", "trainable_params"} <= set(outcomes[0].user_attrs)
    assert all(len(list(folder.glob("checkpoint_*"))) <= 1 for folder in experiment.glob("optuna*"))
    assert any(t.state == TrialState.PRUNED for t in outcomes), "ASHA stopped no trial early"
    for t in trials:  # an interrupted trial Ray resumed: the same subset under a new Optuna trial
        if "retry_of" in t.user_attrs:
            assert by_number[t.user_attrs["retry_of"]].state == TrialState.FAIL
            assert t.user_attrs["skipped"] == by_number[t.user_attrs["retry_of"]].user_attrs["skipped"]


# before the module's in-process Ray starts: its CLI starts a local Ray of its own
def test_a_race_picks_its_best_finished_trial_not_the_samplers_choice(tmp_path):
    """The keep-one-block study races every subset in one round of DAS (which learns nothing while they run): `das-tune run`
    keeps the best subset that trained every step, as the bench measured it, and reports no skip probabilities."""
    race = ["--set", "ray.num_trials=4", "--set", "search.round_size=4", "--set", "ray.steps_per_trial=6",
            "--set", "ray.report_every=2", "--set", "ray.grace_period=1", "--set", "retrain.epochs=1", "--set", "retrain.min_epochs=1"]
    done = subprocess.run([*python(), "-m", "das_tune.cli", "run", "--study", "easyvqa_minilm_keep_one_block", "--tiny", "--quiet", *race],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    name = "easyvqa_minilm_keep_one_block-das-seed0-tiny"
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'das_tune.db'}").trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 4 and len({tuple(t.user_attrs["skipped"]) for t in trials}) == 4  # four distinct subsets
    assert any(t.state == TrialState.PRUNED for t in trials), "ASHA stopped no trial early"
    best = min(finished, key=lambda t: t.value)
    subnet = json.loads((tmp_path / "runs" / name / "subnet.json").read_text())
    assert sorted(subnet["skipped"]) == sorted(best.user_attrs["skipped"])
    assert subnet["probabilities"] is None and subnet["tie_break"] is None


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray on 127.0.0.1; the environment is put back afterwards (``ray.init`` writes e.g.
    ``RAY_AUTH_MODE=token``, which would reach the multi-node tests' cluster nodes and driver)."""
    environment = dict(os.environ)
    ray.init(address="local", num_cpus=2, _node_ip_address=LOOPBACK, log_to_driver=False, logging_level=logging.WARNING,
             include_dashboard=False)
    yield
    ray.shutdown()
    os.environ.clear()
    os.environ.update(environment)


class Recorder(Reporter):
    def __init__(self):
        self.phases, self.advances = [], 0

    def phase(self, name, total):
        self.phases.append((name, total))

    def advance(self, loss=None, probabilities=None):
        self.advances += self.phases[-1][0] == "ray trials"


def test_failing_trial_is_retried_then_failed(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = {"tiny": True, "search.executor": "ray", "ray.num_trials": 3, "ray.scheduler": None, "ray.max_failures": 1}
    spec = load_study_spec("easyvqa_minilm", overrides)
    progress = Recorder()
    search = prepare_search(spec, build_components(spec), reporter=progress)
    study = search.study
    grid = RaySearch(search, fail_trials=frozenset({1})).run()  # trial 1 raises after each attempt's first report

    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    errors = [str(r.error) for r in grid if r.error]
    assert len(errors) == 1 and "injected failure of trial 1 at step 2 (resumed from step 1)" in errors[0]  # retried once
    assert ("ray trials", 3) in progress.phases and progress.advances == 3
    assert (spec.run_dir / "warmup_state.pt").exists()
    kept = [[str(c) for c in Path(r.path).glob("checkpoint_*")] for r in grid]  # each trial reported every step
    assert kept == [[r.checkpoint.path] for r in grid]  # only the last one of each trial is left


def test_progress_counts_a_trial_that_finishes_between_two_reads_of_the_storage():
    """The poller once read the trials twice per update: a trial finished in between was marked seen, then
    its advance raised KeyError and was lost (2 advances of 3, a flaky retry test)."""
    finished = optuna.trial.create_trial(value=1.0, user_attrs={"phase": PHASE})
    finished.number = 0

    class StudyWhereATrialFinishes:
        reads = 0

        def get_trials(self, deepcopy, states):
            self.reads += 1
            return [] if self.reads <= 2 else [finished]  # the progress's first read, then one more, then done

    progress = Recorder()
    progress.phase("ray trials", 1)
    poller = StudyProgress(StudyWhereATrialFinishes(), progress)
    poller._update()
    poller._update()
    assert progress.advances == 1


def test_searcher_pickles_with_std_pickle(tmp_path):
    spec = load_study_spec("easyvqa_minilm", {"tiny": True, "storage": f"sqlite:///{tmp_path}/s.db"})
    search = prepare_search(spec, build_components(spec), reporter=Reporter())
    suggest = SuggestSkip.build(search.parts.space, search.policy, search.costs)
    searcher = SkipSearcher(study=search.study, suggest=suggest, steps_per_trial=4)
    at_start = pickle.dumps(searcher)  # Tune pickles the searcher into the experiment when it starts
    config = searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_result("t0", {"loss": 1.5, "training_iteration": 1})
    searcher.on_trial_complete("t1", {"loss": 1.0, "step": 4})
    checkpoint = tmp_path / "searcher.pkl"
    searcher.save(str(checkpoint))
    trial = search.study.trials[0]
    assert search.parts.space.decode(config) == frozenset(trial.user_attrs["skipped"])
    assert config["trial_number"] == 0 and trial.user_attrs["round"] == 0 and trial.user_attrs["phase"] == "ray"
    assert trial.intermediate_values == {1: 1.5}

    intact = pickle.loads(at_start)
    intact.restore(str(checkpoint))
    assert set(intact.trials) == {"t0", "t1"} and intact.told == {"t1"}

    # A new driver: the trial in flight is marked FAIL, Tune unpickles the searcher it started with and
    # restores it from its file, here cut short as a kill mid-copy leaves it; Ray resumes both trials.
    search.study.tell(0, state=TrialState.FAIL)
    whole = pickle.loads(at_start)
    whole.restore(str(checkpoint))
    assert set(whole.trials) == {"t1"} and whole.told == {"t1"}  # t0 is attached again when Ray reports it
    restored = pickle.loads(at_start)
    checkpoint.write_bytes(checkpoint.read_bytes()[:3])
    restored.restore(str(checkpoint))
    restored.on_trial_complete("t1", {"loss": 0.5, "step": 4})  # told before: not told twice
    restored.on_trial_result("t0", {"loss": 1.4, "training_iteration": 2})
    restored.on_trial_complete("t0", {"loss": 1.25, "step": 4})
    first, told, retry = search.study.trials
    assert first.state == TrialState.FAIL and told.value == 1.0
    assert first.user_attrs["ray_trial_id"] == retry.user_attrs["ray_trial_id"] == "t0"
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["skipped"] == first.user_attrs["skipped"]
    assert retry.state == TrialState.COMPLETE and retry.value == 1.25 and retry.intermediate_values == {2: 1.4}
    assert pickle.loads(pickle.dumps(suggest)).policy.round_size == 3


def test_a_local_ray_session_runs_its_workers_at_the_drivers_priority(monkeypatch):
    from das_tune.search.ray_cluster import WORKER_NICENESS, ray_session
    from das_tune.spec.study import RaySpec

    monkeypatch.delenv(WORKER_NICENESS, raising=False)  # conftest sets it for the suite's own Ray nodes
    @ray.remote(num_cpus=1)
    def niceness():
        return os.nice(0)

    with ray_session(RaySpec()):
        assert ray.get(niceness.remote()) == os.nice(0)  # Ray's default: 15 levels lower, and starved under load
