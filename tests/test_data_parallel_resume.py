"""The data-parallel one-shot search without Ray, beside the other tests (only the modules that start Ray
run on the one serial worker, tests/conftest.py): its ranks each in their own process in a gloo group on
127.0.0.1 (``data_parallel_rank.py``), killed at controlled points and resumed, give the same trials as an
uninterrupted run; and its pieces (row split, the --workers flag) on their own."""

import hashlib
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from data_parallel_rank import OVERRIDES

from das_tune.search.data_parallel import rows_of

RANK = Path(__file__).parent / "data_parallel_rank.py"


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


def run_ranks(folder: Path, kill_at: int | None = None, workers: int = 2) -> int:
    """The ranks of one data-parallel search, each in its own process (``data_parallel_rank.py``);
    returns rank 0's exit code. A killed rank 0 leaves the others waiting in a collective: ended too."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder.mkdir(exist_ok=True)
    logs = [open(folder.parent / f"{folder.name}-rank{rank}.log", "a") for rank in range(workers)]
    extra = [str(kill_at)] if kill_at else []
    ranks = [
        subprocess.Popen([sys.executable, str(RANK), str(rank), str(workers), str(port), str(folder), *extra], stdout=log, stderr=log)
        for rank, log in enumerate(logs)
    ]
    try:
        code = ranks[0].wait(timeout=1200)
        if code != 0:
            for rank in ranks[1:]:
                rank.kill()
        assert all(rank.wait(timeout=600) == (0 if code == 0 else -signal.SIGKILL) for rank in ranks[1:])
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
        for log in logs:
            log.close()
    return code


def trials_of(folder: Path) -> list:
    study = optuna.load_study(study_name="easyvqa_minilm-das-seed0-tiny", storage=f"sqlite:///{folder / 'das_tune.db'}")
    return [(t.number, t.state, t.user_attrs["skipped"], t.value) for t in study.trials]


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_killed_data_parallel_search_resumes_exactly(cli, tmp_path):
    """Rank 0 SIGKILLed at seeded points of its events (a trial asked, a key suggested, a trial told, a
    training step, a checkpoint renamed), then run again: the same trials as an uninterrupted run;
    meanwhile the one-process search refuses the 2-worker checkpoint, changing nothing."""
    assert run_ranks(tmp_path / "reference") == 0
    reference = trials_of(tmp_path / "reference")
    assert len(reference) == 27 and {state for _, state, _, _ in reference} == {optuna.trial.TrialState.COMPLETE}

    killed = tmp_path / "killed"
    for i, point in enumerate(random.Random(14).sample(range(5, 70), 3)):
        assert run_ranks(killed, kill_at=point) == -signal.SIGKILL, f"kill:{point} did not land"
        if i == 0:
            before = checksums(killed)
            sets = [arg for key, value in OVERRIDES.items() if key != "tiny" for arg in ("--set", f"{key}={value}")]
            refused = cli("run", "--study", "easyvqa_minilm", "--tiny", *sets, "--storage", f"sqlite:///{killed / 'das_tune.db'}",
                          "--set", f"output_dir={killed / 'runs'}")
            assert refused.returncode == 2 and "checkpointed by 2 data-parallel workers" in refused.stderr, refused.stderr[-2000:]
            assert len(refused.stderr.strip().splitlines()) == 1 and checksums(killed) == before
    assert run_ranks(killed) == 0
    assert trials_of(killed) == reference
