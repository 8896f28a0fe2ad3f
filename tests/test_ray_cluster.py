"""Ray Tune on a real multi-node cluster (every node on 127.0.0.1): trials spread over the nodes,
the warm-up state and the checkpoints on a storage every node reads, and a node killed in the
middle of a trial: its trial is retried on another node, nothing lost or duplicated in the study."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import LOOPBACK
from optuna.trial import TrialState

from das_tune.search.ray_trainable import WARMUP_FILE

pytestmark = pytest.mark.slow

STUDY = "easyvqa_minilm-das-seed0-tiny"
NUM_TRIALS = 6


@dataclass
class Experiment:
    study: optuna.Study
    shared: Path
    killed_trial: int
    nodes: dict[str, str]  # node id -> its custom resource


def run_command(address: str, db: Path, shared: Path, held_node: str, pause: Path) -> list[str]:
    """The Ray search of `das-tune run --space minilm_vqa --tiny --executor ray`, holding the trials
    that start on ``held_node`` (a test driver: fault injection is never part of a run)."""
    return [
        sys.executable, str(Path(__file__).with_name("ray_hold_driver.py")), held_node, str(pause),
        f"ray.address={address}", f"storage=sqlite:///{db}", f"ray.num_trials={NUM_TRIALS}", "ray.max_concurrent_trials=3",
        "ray.scheduler=null", "ray.max_failures=2", f"ray.storage_path={shared}",
    ]


def what_happened(log: Path, shared: Path) -> str:
    """The driver's log and the trials' own errors (Ray writes them beside the trials' results)."""
    errors = [f"{path.parent.name}: {path.read_text()[-1500:]}" for path in sorted(shared.glob("*/*/error.txt"))]
    return "\n".join([log.read_text()[-3000:], *errors[:2]])


def wait_for_pause(pause: Path, db: Path, run: subprocess.Popen, log: Path, shared: Path) -> int:
    """The Optuna trial held on the doomed node, once the driver has recorded its first report."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert run.poll() is None, what_happened(log, shared)
        for marker in pause.glob("trial*"):
            number = int(marker.name.removeprefix("trial"))
            trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").trials
            if len(trials) > number and trials[number].intermediate_values:
                return number
        time.sleep(0.5)
    raise AssertionError("no trial was held on the doomed node:\n" + what_happened(log, shared))


@pytest.fixture(scope="module")
def experiment(ray_cluster, tmp_path_factory) -> Experiment:
    work = tmp_path_factory.mktemp("cluster")
    shared, pause, db, log = work / "shared", work / "pause", work / "study.db", work / "run.log"
    pause.mkdir()
    doomed = ray_cluster.add_node(node_ip_address=LOOPBACK, num_cpus=1, resources={"node_c": 1})
    nodes = {ray_cluster.head_node.node_id: "node_a", doomed.node_id: "node_c"}
    nodes.update({n.node_id: "node_b" for n in ray_cluster.worker_nodes if n is not doomed})
    with log.open("w") as out:
        command = run_command(ray_cluster.address, db, shared, doomed.node_id, pause)
        run = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        killed = wait_for_pause(pause, db, run, log, shared)
        ray_cluster.remove_node(doomed, allow_graceful=False)  # its raylet and the trial's worker die
        run.wait(timeout=400)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, what_happened(log, shared)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    return Experiment(study, shared / STUDY, killed, nodes)


def test_trials_spread_over_the_nodes(experiment):
    ran_on = set()
    for trial in experiment.study.trials:
        assert trial.user_attrs["node_ip"] == LOOPBACK
        ran_on |= {trial.user_attrs["node_id"], *trial.user_attrs.get("previous_node_ids", [])}
    assert {experiment.nodes[n] for n in ran_on} == {"node_a", "node_b", "node_c"}


def test_warmup_and_checkpoints_on_the_shared_storage(experiment):
    assert (experiment.shared / WARMUP_FILE).is_file()
    for trial in experiment.study.trials:
        folders = list(experiment.shared.glob(f"optuna{trial.number}_*"))
        assert len(folders) == 1, folders  # one Ray trial per Optuna trial
        assert list(folders[0].glob("checkpoint_*/state.pt")), f"no checkpoint of trial {trial.number}"


def test_killed_node_trial_retried_elsewhere_nothing_lost_or_duplicated(experiment):
    trials = experiment.study.trials
    assert [t.number for t in trials] == list(range(NUM_TRIALS))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * NUM_TRIALS
    assert not any("retry_of" in t.user_attrs for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == NUM_TRIALS
    killed = trials[experiment.killed_trial]
    assert [experiment.nodes[n] for n in killed.user_attrs["previous_node_ids"]] == ["node_c"]
    assert experiment.nodes[killed.user_attrs["node_id"]] in ("node_a", "node_b")  # retried elsewhere
    assert max(killed.intermediate_values) == 4  # and ran to the end (ray.steps_per_trial in tiny mode)


def test_unreachable_address_is_bad_input(tmp_path, cli):
    with socket.socket() as s:  # a port nothing listens on
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    result = cli("run", "--space", "minilm_vqa", "--tiny", "--executor", "ray", "--address", f"{LOOPBACK}:{port}", timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no Ray cluster answers" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no storage, no run folder


def test_driver_address_is_loopback_unless_the_cluster_is_elsewhere():
    from das_tune.errors import UserError
    from das_tune.search.ray_cluster import driver_ip

    assert driver_ip(None) == LOOPBACK and driver_ip(f"{LOOPBACK}:6379") == LOOPBACK and driver_ip("localhost:6379") == LOOPBACK
    assert driver_ip("10.1.2.3:6379") is None and driver_ip("auto") is None  # the address of this machine's node
    with pytest.raises(UserError, match="HOST:PORT"):
        driver_ip("no-port")
