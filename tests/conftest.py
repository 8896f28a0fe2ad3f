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
