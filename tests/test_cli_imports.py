"""The CLI's parsing is fast: its help and its refusals of a typo import none of the heavy libraries."""

import json
import subprocess
import sys

import pytest

from das_tune.samplers import SAMPLERS
from das_tune.spec.study import SAMPLER_NAMES

HEAVY = ("torch", "optuna", "ray", "transformers")

# Runs the CLI in a fresh interpreter, then prints its exit code and the heavy modules it imported.
HARNESS = f"""
import json, sys
from das_tune.cli import app
try:
    app(args=sys.argv[1:], prog_name="das-tune")
except SystemExit as done:
    code = done.code
print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))
"""


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["run", "--study", "nonexistent"], 2),
    (["run", "--study", "easyvqa_minilm", "--set", "search.nope=1"], 2),
    (["bench", "--study", "nonexistent"], 2),
    (["retrain"], 2),
    (["runn"], 2),
])
def test_help_and_refusals_import_no_heavy_library(tmp_path, args, code):
    result = subprocess.run([sys.executable, "-c", HARNESS, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [code, []]


def test_the_help_names_every_sampler():
    assert SAMPLER_NAMES == tuple(SAMPLERS)


@pytest.mark.parametrize("args", [
    ["--sampler", ""],
    ["--set", "search.round_size=100"],
    ["--set", "search.observe_every=1000"],
    ["--set", "output_dir=/proc/x"],
])
def test_a_run_refused_on_its_space_or_task_builds_no_model(tmp_path, args):
    """What needs the space and the task's data but no model is refused before the backbone's imports
    (transformers) and weights."""
    result = subprocess.run([sys.executable, "-c", HARNESS, "run", "--space", "minilm_vqa", "--tiny", *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    code, heavy = json.loads(result.stdout.splitlines()[-1])
    assert code == 2 and "transformers" not in heavy, result.stderr[-3000:]
