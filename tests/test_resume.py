"""Nothing lost, nothing overwritten, one writer per study: the CLI killed at controlled points and
resumed, --fresh, two processes on one study or one run folder, several studies created at once.

Kill points are counted events (``kill_worker.py``), never a race with the clock."""

import hashlib
import json
import multiprocessing
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import FINISHED_RUN as RUN
from conftest import FINISHED_STUDY as STUDY
from conftest import python
from optuna.trial import TrialState

from das_tune.errors import UserError
from das_tune.spec.study import load_study_spec
from das_tune.storage.opener import open_storage
from das_tune.training.components import build_components

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "kill_worker.py"


def das_tune(*args, cwd, stop=None, check=False):
    """``das-tune ARGS`` in a subprocess; with ``stop`` (e.g. "kill:12") through the kill worker."""
    cmd = [*python(), str(WORKER), stop, *args] if stop else [*python(), "-m", "das_tune.cli", *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(f"das-tune {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def outcome(folder: Path) -> dict:
    """What a run folder's study ended with: its COMPLETE trials, every trial state, the choice."""
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder / 'das_tune.db'}")
    run = folder / "runs" / STUDY
    return {
        "complete": [
            (t.number, t.user_attrs["skipped"], t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))
        ],
        "states": [t.state for t in study.trials],
        "chosen": json.loads((run / "subnet.json").read_text())["skipped"],
        "metric": json.loads((run / "metrics.json").read_text())["value"],
    }


@pytest.fixture(scope="module")
def reference(finished_run) -> dict:
    """The same study run once without interruption."""
    result = outcome(finished_run)
    assert len(result["complete"]) == 27 and set(result["states"]) == {TrialState.COMPLETE}
    return result


@pytest.mark.timeout(1800)
def test_killed_at_random_points_then_resumed_and_fresh_equal_an_uninterrupted_run(finished_run, reference, tmp_path):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)  # a finished study
    # --fresh on the finished study, killed in its 3rd round: a partly run study
    partial = das_tune(*RUN, "--fresh", cwd=tmp_path, stop="kill:70")
    assert partial.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'das_tune.db'}")
    assert 0 < len(study.trials) < 27 and not (tmp_path / "runs" / STUDY / "metrics.json").exists()

    # an event: a trial asked, a key suggested, a trial told, a training step, a checkpoint renamed;
    # counted from each process's start. The first process starts the partly run study again with --fresh.
    points = random.Random(14).sample(range(1, 45), 4)
    for i, point in enumerate(points):
        killed = das_tune(*RUN, *(["--fresh"] if i == 0 else []), cwd=tmp_path, stop=f"kill:{point}")
        assert killed.returncode == -signal.SIGKILL, f"kill:{point} did not land: {killed.stderr[-2000:]}"
    das_tune(*RUN, cwd=tmp_path, check=True)
    # same trials (number, subset, value), choice and retrain: --fresh left nothing of the finished study or the
    # partly run one, and no kill lost or changed anything
    assert outcome(tmp_path) == reference


def snapshot(folder: Path, db: Path) -> tuple:
    """Every trial of every study in ``db`` and the bytes of every file under ``folder``."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    trials = {
        s.study_name: [(t.number, t.state, t.params, t.values, t.user_attrs) for t in storage.get_all_trials(s._study_id)]
        for s in storage.get_all_studies()
    }
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}
    return trials, files


@pytest.mark.timeout(1800)
def test_a_second_writer_is_refused_and_changes_nothing(tmp_path):
    release = tmp_path / "go"
    args = ["run", "--space", "minilm_vqa", "--tiny", "--quiet", "--set", "search.search_epochs=1",
            "--set", "retrain.max_steps_per_epoch=1"]
    first = subprocess.Popen(
        [*python(), str(WORKER), f"pause:5:file={release}:only=tell", *args], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 300
        while not Path(f"{release}.paused").exists():  # paused before telling a trial (RUNNING)
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.2)
        runs = tmp_path / "runs"
        before = snapshot(runs, tmp_path / "das_tune.db")
        assert [t[1] for t in before[0]["easyvqa_minilm-das-seed0-tiny"]][-2:] == [TrialState.COMPLETE, TrialState.RUNNING]

        for intruder, message in [
            ([], "run folder"),  # the same command: the same run folder
            (["--set", "output_dir=runs2"], "is being run by another das-tune process (pid"),  # the same study
            (["--storage", "sqlite:///other.db"], "run folder"),  # another study in the same run folder
        ]:
            refused = das_tune(*args, *intruder, cwd=tmp_path)
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 2 and len(lines) == 1 and message in lines[0], refused.stderr[-2000:]
        assert snapshot(runs, tmp_path / "das_tune.db") == before  # the live run's trials untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["das_tune.db", "go.paused", "runs"]  # nothing else

        release.touch()
        out, errors = first.communicate(timeout=1200)
        assert first.returncode == 0, errors[-3000:]
        study = optuna.load_study(study_name="easyvqa_minilm-das-seed0-tiny", storage=f"sqlite:///{tmp_path / 'das_tune.db'}")
        assert len(study.trials) == 9 and all(t.state == TrialState.COMPLETE for t in study.trials)
        assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'das_tune.db'}") == ["easyvqa_minilm-das-seed0-tiny"]  # lease gone
    finally:
        if first.poll() is None:
            first.kill()


def _open_at_once(url: str, name: str, barrier) -> None:
    barrier.wait()
    optuna.create_study(study_name=name, storage=open_storage(url))


def test_processes_creating_one_new_sqlite_file_at_once_all_succeed(tmp_path):
    url, n = f"sqlite:///{tmp_path / 'new.db'}", 6
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(n)
    workers = [context.Process(target=_open_at_once, args=(url, f"seed{i}", barrier)) for i in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * n
    assert sorted(optuna.get_all_study_names(url)) == [f"seed{i}" for i in range(n)]


@pytest.mark.timeout(1800)
def test_four_seeds_started_at_once_on_a_new_storage(tmp_path):
    short = ["--set", "search.search_epochs=1", "--set", "search.max_steps_per_epoch=2", "--set", "retrain.max_steps_per_epoch=1"]
    procs = [
        subprocess.Popen(
            [*python(), "-m", "das_tune.cli", "run", "--space", "minilm_vqa", "--tiny", "--quiet", "--seed", str(seed),
             "--storage", "sqlite:///shared/new.db", *short],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for seed in range(4)
    ]
    results = [(p.wait(timeout=1200), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0] * 4, [err[-1500:] for _, err in results]
    names = sorted(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'shared' / 'new.db'}"))
    assert names == [f"easyvqa_minilm-das-seed{seed}-tiny" for seed in range(4)]


def test_fresh_clears_every_checkpoint_and_artifact_but_leaves_other_files(tmp_path):
    from das_tune.artifacts.run_folder import clear_run_folder

    names = ["search_state.pt", "warmup_state.pt", "metrics.json", "subnet.json", "adapters.safetensors", "study.yaml"]
    for name in [*names, "notes.txt", "retrain-En1-abc/metrics.json", "ray_train/run/checkpoint_000001/state.pt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    removed = clear_run_folder(tmp_path)
    assert sorted(removed) == sorted([*names, "retrain-En1-abc/", "ray_train/"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_study_resumes_only_with_the_settings_it_was_run_with(tmp_path):
    from das_tune.progress import Reporter
    from das_tune.search.prepare import open_spec_study

    overrides = {"tiny": True, "storage": f"sqlite:///{tmp_path}/s.db"}
    spec = load_study_spec("easyvqa_minilm", overrides)
    parts = build_components(spec)
    open_spec_study(spec, parts, fresh=False, reporter=Reporter())
    open_spec_study(spec, parts, fresh=False, reporter=Reporter())  # the same settings resume
    changed = load_study_spec("easyvqa_minilm", {**overrides, "search.observe_every": 3})
    with pytest.raises(UserError, match=r"other settings \(search\.observe_every = 2 → 3\); pass --fresh"):
        open_spec_study(changed, parts, fresh=False, reporter=Reporter())
    real = spec.model_copy(update={"tiny": False})
    assert real.resolved_study_name != spec.resolved_study_name  # a real run's study is never a tiny one's
    with pytest.raises(UserError, match=r"tiny = True → False"):  # not even when named alike
        open_spec_study(real.model_copy(update={"study_name": spec.resolved_study_name}), parts, fresh=False, reporter=Reporter())
    assert open_spec_study(changed, parts, fresh=True, reporter=Reporter()).trials == []
    ray = load_study_spec("easyvqa_minilm", {**overrides, "search.executor": "ray", "study_name": "r"})
    open_spec_study(ray, parts, fresh=False, reporter=Reporter())
    open_spec_study(ray.model_copy(update={"ray": ray.ray.model_copy(update={"max_concurrent_trials": 4})}), parts,
                    fresh=False, reporter=Reporter())  # where trials run is not what they find
    longer = ray.model_copy(update={"ray": ray.ray.model_copy(update={"steps_per_trial": 40})})
    with pytest.raises(UserError, match=r"ray\.steps_per_trial = \d+ → 40"):
        open_spec_study(longer, parts, fresh=False, reporter=Reporter())
