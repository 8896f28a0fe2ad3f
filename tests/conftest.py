import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args: str, cwd: Path, timeout: int = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``das-tune ARGS`` in a subprocess, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "das_tune.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"das-tune {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def cli(tmp_path):
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


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
