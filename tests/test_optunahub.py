"""The OptunaHub package: loads with optunahub, runs its example, needs no das-tune, and draws the very
same trials as das-tune's own DASSampler (so the two editions cannot drift apart unnoticed)."""

import ast
import importlib
import importlib.metadata
import inspect
import math
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import optunahub
import pytest

from das_tune import DASSampler, SkipSpace

REGISTRY = Path(__file__).resolve().parents[1] / "optunahub-registry" / "package"
PACKAGE = REGISTRY / "samplers" / "das"
LAYERS = ["En0", "En1", "En2", "En3", "En4", "En5"]
IMPORTANCE = dict(zip(LAYERS, [0.9, 0.1, 0.6, 0.8, 0.05, 0.7]))


@pytest.fixture(scope="module")
def hub():
    return optunahub.load_local_module(package="samplers/das", registry_root=str(REGISTRY))


def test_package_has_the_registry_layout():
    assert {p.name for p in PACKAGE.iterdir() if not p.name.startswith("__pycache__")} >= {
        "__init__.py", "sampler.py", "README.md", "example.py", "LICENSE",
    }
    front = PACKAGE.joinpath("README.md").read_text().split("---")[1]
    for field in ("author:", "title:", "description:", "tags: [sampler", "optuna_versions:", "license:"):
        assert field in front


def test_example_runs_without_das_tune(tmp_path):
    # das_tune made unimportable: the package must stand on Optuna and NumPy alone
    code = f"import runpy, sys; sys.modules['das_tune'] = None; runpy.run_path({str(PACKAGE / 'example.py')!r}, run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "chosen: ['L1', 'L4']" in result.stdout


def noisy_objective(space):
    def objective(trial: optuna.Trial) -> float:
        skipped = space.suggest(trial)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # the fallback's parameter
        return sum(IMPORTANCE[name] for name in skipped) + 0.05 * math.sin(trial.number) + abs(math.log10(lr) + 2) / 10

    return objective


@pytest.mark.parametrize("options", [{}, {"standardize": True, "round_size": 4, "lr": 0.5},
                                     {"standardize": True, "initial_gates": {LAYERS[0]: -1.0, LAYERS[-1]: 1.5}}])
def test_same_trials_as_das_tunes_sampler(hub, options):
    ours_space = SkipSpace(candidates=LAYERS, num_skip=2)
    hub_space = hub.SkipSpace(candidates=LAYERS, num_skip=2)
    ours = optuna.create_study(sampler=DASSampler(ours_space, seed=7, **options))
    theirs = optuna.create_study(sampler=hub.DASSampler(hub_space, seed=7, **options))
    ours.optimize(noisy_objective(ours_space), n_trials=48)
    theirs.optimize(noisy_objective(hub_space), n_trials=48)

    assert [t.params for t in ours.trials] == [t.params for t in theirs.trials]
    assert [t.user_attrs["skipped"] for t in ours.trials] == [t.user_attrs["skipped"] for t in theirs.trials]
    assert ours.sampler.probabilities(ours) == theirs.sampler.probabilities(theirs)
    assert ours.sampler.chosen(ours) == theirs.sampler.chosen(theirs)
    assert (ours.sampler.gate_history(ours) == theirs.sampler.gate_history(theirs)).all()
    assert len(set(ours.sampler.probabilities(ours).values())) > 1  # the gates moved: the comparison means something


def test_space_encodes_like_das_tunes(hub):
    ours, theirs = SkipSpace(candidates=LAYERS, num_skip=3), hub.SkipSpace(candidates=LAYERS, num_skip=3)
    assert ours.param_names == theirs.param_names and ours.num_subsets == theirs.num_subsets
    for subset in ours.all_subsets():
        assert ours.encode(subset) == theirs.encode(subset)
        assert theirs.decode(ours.encode(subset)) == subset
    with pytest.raises(ValueError, match="num_skip"):
        hub.SkipSpace(candidates=LAYERS, num_skip=6)


# -- "Copied from": the package's copied functions are the very code of das-tune's (as Hugging Face checks
# its model files), laid out by the registry's formatter (so compared as syntax trees); the parts that differ
# by design (a single num_skip, single-objective) are marked nothing and kept equal in behaviour by the tests above.
COPIED = re.compile(r"^(\s*)# Copied from (das_tune(?:\.\w+)+)(?: with (.+))?$")
MUST_BE_MARKED = {
    "_default_reward", "_sigmoid", "random_log_keys", "DASSampler.__init__", "DASSampler._apply_round", "DASSampler._keys_for",
}


def copied_functions(source: str) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(qualified name in the package, its source, the das-tune original's dotted path, replacements) per marker."""
    tree = ast.parse(source)
    defs = {node.lineno: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    owners = {id(f): c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
    found = []
    lines = source.splitlines()
    for number, line in enumerate(lines, start=1):
        match = COPIED.match(line)
        if match:
            node = defs[number + 1]
            name = f"{owners[id(node)]}.{node.name}" if id(node) in owners else node.name
            replacements = [tuple(part.strip().split("->")) for part in (match.group(3) or "").split(",") if part.strip()]
            found.append((name, textwrap.dedent(ast.get_source_segment(source, node, padded=True)), match.group(2), replacements))
    return found


def original_source(dotted: str) -> str:
    """The source of ``das_tune.<modules>.<name>[.<method>]``: the longest importable prefix is the module."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part)
        return textwrap.dedent(inspect.getsource(obj))
    raise ModuleNotFoundError(dotted)


def copy_mismatches(source: str) -> list[str]:
    bad = []
    for name, copied, dotted, replacements in copied_functions(source):
        expected = original_source(dotted)
        for old, new in replacements:
            expected = expected.replace(old, new)
        if ast.dump(ast.parse(copied)) != ast.dump(ast.parse(expected)):  # the code, whatever its layout
            bad.append(f"{name} differs from {dotted}")
    return bad


def test_copied_functions_are_das_tunes_own_code():
    source = (PACKAGE / "sampler.py").read_text()
    assert {name for name, *_ in copied_functions(source)} >= MUST_BE_MARKED
    assert copy_mismatches(source) == []


def test_the_copy_check_sees_an_edited_copy():
    source = (PACKAGE / "sampler.py").read_text()
    edited = source.replace("gates += self.lr * delta * p * (1.0 - p)", "gates += 2 * self.lr * delta * p * (1.0 - p)")
    assert edited != source
    assert copy_mismatches(edited) == ["DASSampler._apply_round differs from das_tune.samplers.das.DASSampler._apply_round"]


# -- the registry's own checks (its pre-commit hooks and header check), offline, with its configuration files
# committed beside the package: optunahub-registry/pyproject.toml, .pre-commit-config.yaml, header_confirm.py

ROOT = REGISTRY.parent


def run_tool(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [
    ("ruff", "check", "--no-cache", "package"),
    ("ruff", "format", "--check", "--no-cache", "package"),
    # as the registry's hook runs it, in an environment of its own without optuna and numpy (with them it passes
    # too, in 80 s instead of 3)
    ("mypy", "--no-incremental", "--cache-dir=/dev/null", "--no-site-packages", "package"),
    ("mdformat", "--check", "package/samplers/das/README.md"),
])
def test_package_passes_the_registry_checks(command):
    pytest.importorskip(command[0], reason=f"{command[0]} is in the test extra: pip install -e '.[test]'")
    result = run_tool(*command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_front_matter_passes_the_registry_header_check():
    pytest.importorskip("frontmatter", reason="python-frontmatter is in the test extra: pip install -e '.[test]'")
    checker = runpy.run_path(str(ROOT / "optunahub-registry" / "header_confirm.py"))
    checker["header_confirm"](str(PACKAGE / "README.md"))  # raises AssertionError naming the missing field
    tested_on = ".".join(importlib.metadata.version("optuna").split(".")[:2])  # the release series the tests ran on
    listed = checker["frontmatter"].load(PACKAGE / "README.md")["optuna_versions"]
    assert any(str(v).startswith(tested_on + ".") for v in listed), f"front matter lists Optuna {listed}, tested on {tested_on}"
