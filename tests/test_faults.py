"""Faults of a real machine: an interrupt while the study lease is released, the SQLite file deleted under a
run, a full disk. Each is one line with the right exit code, leaves no partial file, and a rerun after the
fault is mended ends as an uninterrupted run does."""

import json
import os
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import FINISHED_RUN, FINISHED_STUDY, python, run_cli
from PIL import Image

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
    run = subprocess.Popen([*python(), str(WORKER), f"pause:7:only=tell:file={pause}", *args], cwd=tmp_path,
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


# -- a full disk -------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, unmounted afterwards (root only: skipped, saying why, elsewhere)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs here, and mounting one needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the file that does."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while f.write(bytes(1 << 16)):
                pass
        except OSError:
            pass
    return filler


def grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial")) or p.name.startswith(".")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """RUN, uninterrupted, on a disk with room; its folder."""
    folder = tmp_path_factory.mktemp("reference")
    run_cli(*RUN, cwd=folder, check=True)
    return folder / "runs" / "easyvqa_minilm-das-seed0-tiny"


def test_a_run_on_a_full_disk_says_so_in_one_line_and_resumes_once_there_is_room(small_disk, reference):
    one_line(run_cli(*RUN, cwd=small_disk), 1, "no space left on the device of", str(small_disk))
    assert not leftovers(small_disk)
    grow(small_disk)
    run_cli(*RUN, cwd=small_disk, check=True)
    done = small_disk / "runs" / reference.name
    assert (done / "adapters.safetensors").read_bytes() == (reference / "adapters.safetensors").read_bytes()
    for name, key in (("subnet.json", "skipped"), ("metrics.json", "value")):
        assert json.loads((done / name).read_text())[key] == json.loads((reference / name).read_text())[key]


def test_export_and_predict_onto_a_full_disk_say_so_and_leave_nothing(small_disk, reference, tmp_path):
    filler = fill(small_disk)
    one_line(run_cli("export", str(reference), "--out", str(small_disk / "x"), cwd=tmp_path), 1, "no space left", "disk/x")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    (tmp_path / "in.jsonl").write_text('{"question": "what?", "image": "red.png"}\n' * 200)
    predict = ["predict", str(reference), "--quiet", "--jsonl", "in.jsonl", "--out", str(small_disk / "answers.jsonl")]
    one_line(run_cli(*predict, cwd=tmp_path), 1, "no space left", "disk/answers.jsonl")
    assert [p.name for p in small_disk.iterdir()] == ["filler"]

    filler.unlink()
    grow(small_disk)
    run_cli("export", str(reference), "--out", str(small_disk / "x"), cwd=tmp_path, check=True)
    run_cli("export", str(reference), "--out", "y", cwd=tmp_path, check=True)
    assert (small_disk / "x" / "model.safetensors").read_bytes() == (tmp_path / "y" / "model.safetensors").read_bytes()
    run_cli(*predict, cwd=tmp_path, check=True)
    assert (small_disk / "answers.jsonl").read_text() == run_cli(*predict[:-2], cwd=tmp_path, check=True).stdout
