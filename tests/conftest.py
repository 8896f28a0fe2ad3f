import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: a second thread only contends on CI's 2 cores (and with the test's own process);
# inherited by the CLI subprocesses, which are most of the suite's time.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray keeps 127.0.0.1 as a node's address only with this (see das_tune/search/__init__.py); set
# before any test module imports Ray, and inherited by the CLI subprocesses.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray starts its workers at nice 15. Beside the other xdist worker's tests (nice 0) they get a few per
# cent of a core, and the serial group waits on them: the two-worker DDP test took over 600 s beside two
# busy processes, 86 s with this. das-tune's own local sessions set it too (ray_cluster.ray_session); this
# covers the nodes the multi-node tests start with `ray start`.
os.environ.setdefault("RAY_worker_niceness", "0")
LOOPBACK = "127.0.0.1"
# Run on one pytest-xdist worker, one test after another (``--dist loadgroup``): the tests that start
# Ray (each claims both CPUs), a PostgreSQL server or an OS package install (one dpkg lock).
SERIAL_MODULES = {"test_ray", "test_ray_cluster", "test_data_parallel", "test_postgresql", "test_dashboard"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__ in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("serial"))


FORKSERVER = Path(__file__).with_name("forkserver.py")
_forkserver: dict = {}
_forkserver_start = threading.Lock()  # tests that run the CLI from several threads at once


def python() -> list[str]:
    """The command line that runs ``python ARGS`` as a fresh process, forked from this xdist worker's fork
    server (tests/forkserver.py: the imports done once); a fresh interpreter if the server did not start."""
    with _forkserver_start:
        if not _forkserver:
            _start_forkserver()
    return _forkserver["command"]


def _start_forkserver() -> None:
    folder = Path(tempfile.mkdtemp(prefix="das-tune-forkserver-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the server exits with this process, its files with it
    path, log = folder / "socket", folder / "server.log"
    server = subprocess.Popen([sys.executable, str(FORKSERVER), "serve", str(path)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    if server.stdout.readline() != "ready\n":
        warnings.warn(f"no fork server, every CLI run imports again: {log.read_text()[-2000:]}")
    _forkserver.update(server=server, command=[sys.executable, "-S", str(FORKSERVER), str(path)])


def run_cli(*args: str, cwd: Path, timeout: int = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``das-tune ARGS`` in a subprocess, as a user would."""
    result = subprocess.run(
        [*python(), "-m", "das_tune.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"das-tune {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def cli(tmp_path):
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


# A tiny search lengthened to 9 observation rounds (27 trials; an observation after every one of its
# 3 × 3 training steps), the retrain cut to one step: the study that tests/test_resume.py kills and
# resumes and tests/test_bad_input.py feeds bad input to.
FINISHED_STUDY = "easyvqa_minilm-das-seed3-tiny"
FINISHED_RUN = [
    "run", "--space", "minilm_vqa", "--tiny", "--seed", "3", "--quiet",
    "--set", "search.search_epochs=3", "--set", "search.max_steps_per_epoch=3", "--set", "search.observe_every=1",
    "--set", "retrain.max_steps_per_epoch=1",
]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A folder in which FINISHED_RUN ran once, uninterrupted (das_tune.db, runs/)."""
    folder = tmp_path_factory.mktemp("finished")
    run_cli(*FINISHED_RUN, cwd=folder, timeout=1200, check=True)
    return folder


@pytest.fixture(scope="session")
def postgresql():
    """One throw-away PostgreSQL server on 127.0.0.1 for the whole session (skipped, saying why,
    only when it cannot be installed)."""
    import pg_server

    problem = pg_server.install()
    if problem:
        print(f"\nSKIPPING the PostgreSQL tests: {problem}")
        pytest.skip(problem)
    server = pg_server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster of two nodes on 127.0.0.1 (separate GCS and raylet processes), one CPU and
    one custom resource (``node_a``, ``node_b``) each; tests may add and kill their own nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": LOOPBACK, "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False,
    })
    cluster.add_node(node_ip_address=LOOPBACK, num_cpus=1, resources={"node_b": 1})
    yield cluster
    cluster.shutdown()
