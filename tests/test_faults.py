"""Faults of a real machine: an interrupt while the study lease is released, the SQLite file deleted under a
run, a full disk. Each is one line with the right exit code, leaves no partial file, and a rerun after the
fault is mended ends as an uninterrupted run does."""

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import FINISHED_RUN, FINISHED_STUDY, run_cli

from das_tune.storage.lease import StudyLease
from das_tune.storage.opener import OpenedStorage

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "kill_worker.py"
RUN = ["run", "--space", "minilm_vqa", "--tiny", "--quiet"]


def one_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_releasing_the_lease_never_hides_what_ended_the_run(tmp_path):
    """Ctrl-C while the storage cannot delete the lease (here: its file is gone) stays a KeyboardInterrupt."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    with pytest.raises(KeyboardInterrupt):
        with StudyLease(OpenedStorage.open(url), "s"):
            (tmp_path / "studies.db").unlink()
            raise KeyboardInterrupt


def test_a_storage_deleted_under_a_run_is_one_line_and_the_rerun_writes_nothing(tmp_path):
    # paused at the 7th trial told (its round's checkpoint written), its SQLite file deleted, then let go
    pause, args = tmp_path / "go", FINISHED_RUN
    run = subprocess.Popen([sys.executable, str(WORKER), f"pause:7:only=tell:file={pause}", *args], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not Path(f"{pause}.paused").exists() and run.poll() is None:
        time.sleep(0.1)
    assert (tmp_path / "runs" / FINISHED_STUDY / "search_state.pt").is_file()
    (tmp_path / "das_tune.db").unlink()
    pause.touch()
    _, stderr = run.communicate(timeout=300)
    one_line(subprocess.CompletedProcess(args, run.returncode, "", stderr), 1, "SQLite file was deleted", "--fresh")

    rerun = run_cli(*args, cwd=tmp_path)
    one_line(rerun, 2, "search_state.pt", "does not hold", "--fresh")
    assert not (tmp_path / "das_tune.db").exists()  # checked before anything was written
    run_cli(*args, "--fresh", cwd=tmp_path, check=True)
    study = optuna.load_study(study_name=FINISHED_STUDY, storage=f"sqlite:///{tmp_path / 'das_tune.db'}")
    assert len(study.trials) == 27 and (tmp_path / "runs" / FINISHED_STUDY / "metrics.json").is_file()
