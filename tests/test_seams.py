"""The seams between the pieces: the skip policy (the only view of a sampler the loops have), the round
size's one home, tiny mode owned by backbones and tasks with the user's --set winning, local paths."""

import ast
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from das_tune.errors import UserError
from das_tune.samplers import SkipPolicy, make_sampler, skip_policy, study_policy
from das_tune.spec import resources
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import load_study_spec
from das_tune.training.components import build_components

PACKAGE = Path(__file__).resolve().parents[1] / "das_tune"
SPACE = SkipSpace(candidates=[f"En{i}" for i in range(6)], num_skip=2, name="seams")


def objective(trial: optuna.Trial) -> float:
    return 0.1 * sum(int(layer[2:]) for layer in SPACE.suggest(trial))  # skipping En0, En1 is best


def study_of(name: str, n_trials: int = 12) -> optuna.Study:
    options = {"round_size": 3} if name == "das" else {}
    study = optuna.create_study(sampler=make_sampler(name, SPACE, seed=0, **options))
    study.optimize(objective, n_trials=n_trials)
    return study


def test_das_brings_its_own_policy():
    study = study_of("das")
    policy = skip_policy(study.sampler, SPACE, round_size=5)  # DAS's own round size wins: it is the same setting
    assert policy.round_size == 3 and policy.round_of(5) == 1 and policy.closes_round(5) and not policy.closes_round(4)
    p = policy.probabilities(study)
    assert set(p) == set(SPACE.candidates) and len(set(p.values())) > 1
    history = policy.history(study)
    assert history.shape == (1 + 12 // 3, 6) and np.allclose(history[0], 0.5)
    np.testing.assert_allclose(history[-1], [p[c] for c in SPACE.candidates])
    assert policy.chosen(study) == SPACE.top(p)


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_other_samplers_get_the_uniform_best_trial_policy(name):
    study = study_of(name)
    policy = skip_policy(study.sampler, SPACE, round_size=4)
    assert type(policy) is SkipPolicy and policy.round_size == 4 and policy.round_of(7) == 1
    assert policy.probabilities(study) is None and policy.history(study) is None
    assert policy.chosen(study) == SPACE.decode(study.best_trial.params)
    rng = np.random.default_rng(0)
    draws = [policy.draw(None, rng) for _ in range(3000)]
    counts = {c: sum(c in d for d in draws) for c in SPACE.candidates}
    assert all(abs(n / 3000 - 2 / 6) < 0.04 for n in counts.values())  # uniform: each layer in 1/3 of the draws


def test_a_stored_study_gets_its_recorded_samplers_policy(tmp_path):
    from das_tune.progress import Reporter
    from das_tune.samplers.das import DASPolicy
    from das_tune.search.prepare import open_spec_study

    spec = load_study_spec("easyvqa_minilm", {"tiny": True, "storage": f"sqlite:///{tmp_path}/s.db"})
    parts = build_components(spec)
    open_spec_study(spec, parts, fresh=False, reporter=Reporter())
    loaded = optuna.load_study(study_name=spec.resolved_study_name, storage=spec.storage)  # a default sampler
    policy = study_policy(loaded, parts.space)
    assert isinstance(policy, DASPolicy) and policy.round_size == spec.search.round_size
    assert policy.sampler.standardize  # the study file's DAS options, from the record


def _knows_das(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name in ("DASSampler", "draw_subset") for a in node.names):
            found.append(f"imports {[a.name for a in node.names]} from {node.module}")
        if isinstance(node, ast.Import) and any(a.name == "das_tune.samplers.das" for a in node.names):
            found.append("imports das_tune.samplers.das")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and "DASSampler" in ast.unparse(node):
            found.append(f"tests {ast.unparse(node)}")
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "das" for c in [node.left, *node.comparators]):
            found.append(f"compares {ast.unparse(node)}")
    return found


def test_nothing_outside_the_samplers_knows_how_das_decides():
    # das_tune/__init__.py only re-exports the public API (``from das_tune import DASSampler``).
    modules = [p for p in PACKAGE.rglob("*.py") if "samplers" not in p.parts and p != PACKAGE / "__init__.py"]
    assert len(modules) > 30
    offenders = {str(p.relative_to(PACKAGE)): found for p in modules if (found := _knows_das(ast.parse(p.read_text())))}
    assert not offenders
    assert _knows_das(ast.parse("from das_tune.samplers.das import DASSampler\nif name == 'das': pass"))  # the check bites


def test_round_size_has_one_home():
    assert load_study_spec("easyvqa_minilm", {"search.round_size": 4}).search.round_size == 4
    with pytest.raises(UserError, match=r"field 'sampler.options.das.round_size': the round size is set in one place, search.round_size"):
        load_study_spec("easyvqa_minilm", {"sampler.options.das.round_size": 4})


def test_tiny_mode_is_the_backbones_and_the_tasks_and_set_wins():
    tiny = load_study_spec("easyvqa_minilm", {"tiny": True})
    assert tiny.task.options["train_limit"] == 64 and "max_text_len" not in tiny.backbone.options  # the study's 3000 and 24 go
    assert tiny.search.batch_size == 4 and tiny.retrain.epochs == 1
    spec = load_study_spec("easyvqa_minilm", {"tiny": True, "task.options.train_limit": 200, "backbone.options.max_text_len": 16})
    parts = build_components(spec)
    assert len(parts.task.examples("train")) == 200 and len(parts.task.examples("val")) == 32
    assert parts.model.max_text_len == 16



def test_tiny_mode_drops_a_studys_vl_weights_and_set_wins(tmp_path):
    # the study names MiniLM-sized pre-trained weights; the tiny model has neither their sizes nor the file
    missing = str(tmp_path / "missing.safetensors")
    data = yaml.safe_load((resources.builtin_dir("studies") / "easyvqa_minilm.yaml").read_text())
    data["backbone"]["options"]["vl_weights"] = missing
    study = tmp_path / "vl.yaml"
    study.write_text(yaml.safe_dump(data))
    assert load_study_spec(study).backbone.options["vl_weights"] == missing
    tiny = load_study_spec(study, {"tiny": True})
    assert "vl_weights" not in tiny.backbone.options
    build_components(tiny)  # the tiny model, without the study's weights
    with pytest.raises(UserError, match="vision-language weights .*missing.safetensors not found"):
        build_components(load_study_spec(study, {"tiny": True, "backbone.options.vl_weights": missing}))

def test_local_paths_are_listed_once_and_made_absolute_for_ray_workers(tmp_path, monkeypatch):
    from das_tune.search.ray_tune import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    monkeypatch.setenv("DATA", str(tmp_path / "data"))
    spec = load_study_spec("easyvqa_minilm", {"backbone.options.tokenizer": "tok", "task.data_dir": "$DATA"})
    assert spec.local_paths() == {"backbone.options.tokenizer": "tok", "task.data_dir": str(tmp_path / "data")}
    with pytest.raises(UserError, match=r"task.data_dir = .*data \(put it there"):
        build_components(spec)
    worker = absolute_paths(spec)
    assert worker.backbone.options["tokenizer"] == str(tmp_path / "tok") and worker.task.data_dir == "$DATA"  # missing: kept
    assert worker.output_dir == str(tmp_path / "runs") and worker.storage == f"sqlite:///{tmp_path / 'das_tune.db'}"
    assert load_study_spec("easyvqa_minilm", {"tiny": True, "backbone.options.tokenizer": "tok"}).local_paths() == {
        "backbone.options.tokenizer": "tok"  # explicit, so it wins over tiny mode
    }


# The house, top floor first: a module may import its own package and the floors below it, nothing above and
# nothing beside it. `das_tune/__init__.py` is the public facade over all of them and stands outside.
LAYERS = (
    ("cli",),
    ("bench",),
    ("jobs",),
    ("subnet", "report"),
    ("search",),
    ("training",),
    ("samplers", "storage", "artifacts"),
    ("spec",),
    ("tasks",),
    ("backbones",),
    ("errors", "progress"),
)
FLOOR = {room: floor for floor, rooms in enumerate(reversed(LAYERS)) for room in rooms}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every das_tune module ``path`` imports, at the top or inside a function (a lazy import is still a
    dependency); ``from das_tune.x import name`` counts as ``das_tune.x.name`` when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names)
    return {name for name in found if name in modules}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items() if name != "das_tune"}


def room(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a room to one on the same floor or higher (its own room excepted), and imports of the facade."""
    bad = []
    for module, imports in graph.items():
        for target in imports:
            if target == "das_tune" or room(target) != room(module) and FLOOR[room(target)] >= FLOOR[room(module)]:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_room_has_a_floor():
    assert {room(m) for m in import_graph()} <= set(FLOOR)


def test_imports_run_one_way_down_the_floors():
    graph = import_graph()
    assert upward_imports(graph) == []
    assert circles(graph) == []


def test_the_structure_check_sees_a_circle_and_an_upward_import(tmp_path):
    package = tmp_path / "das_tune"
    for path, source in {
        "spec/study.py": "from das_tune.search import base\n",
        "search/__init__.py": "",
        "search/base.py": "def f():\n    from das_tune.search import oneshot\n",
        "search/oneshot.py": "import das_tune.search.base\n",
        "spec/__init__.py": "",
    }.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(source)
    graph = import_graph(package)
    assert upward_imports(graph) == ["das_tune.spec.study -> das_tune.search.base"]
    assert circles(graph) == [["das_tune.search.base", "das_tune.search.oneshot"]]
