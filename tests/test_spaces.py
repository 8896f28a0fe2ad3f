import optuna
import pytest

from das_tune import SkipSpace, UserError, load_space
from das_tune.spec.resources import builtin_names

PAPER_SPACES = {
    "meter_fusion": (12, 4),
    "meter_global": (24, 4),
    "vilt_global": (12, 1),
    "roberta_global": (12, 2),
    "minilm_vqa": (6, 2),
}


@pytest.mark.parametrize("name", sorted(PAPER_SPACES))
def test_builtin_spaces_have_the_papers_layers(name):
    space = load_space(name)
    n, m = PAPER_SPACES[name]
    assert (len(space.candidates), space.num_skip, space.name) == (n, m, name)
    assert set(builtin_names("search_spaces")) >= set(PAPER_SPACES)


def test_meter_global_names_follow_the_paper():
    space = load_space("meter_global")
    assert space.candidates[:6] == tuple(f"FL{i}" for i in range(6))
    assert space.candidates[6:12] == tuple(f"FV{i}" for i in range(6))
    assert space.candidates[12:] == tuple(f"LEn{i}" for i in range(12))
    assert space.groups["LEn"] == space.candidates[12:]


def test_num_skip_override():
    assert load_space("meter_fusion", num_skip=8).num_skip == 8


def test_decode_takes_largest_keys_with_ties_in_candidate_order():
    space = SkipSpace(candidates=["a", "b", "c", "d"], num_skip=2)
    params = {"skip.a": 0.1, "skip.b": 0.9, "skip.c": 0.5, "skip.d": 0.5}
    assert space.decode(params) == {"b", "c"}
    assert space.decode(space.encode({"a", "d"})) == {"a", "d"}


def test_suggest_records_the_subset_on_the_trial(tmp_path):
    space = SkipSpace(candidates=["En0", "En1", "En2", "En3"], num_skip=2)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask()
    skipped = space.suggest(trial)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert len(skipped) == 2 and frozen.user_attrs["skipped"] == space.ordered(skipped)
    assert space.subset_of(frozen) == skipped


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"candidates": ["En0", "En1"], "num_skip": 2}, "num_skip"),
        ({"candidates": ["En0", "En1"], "num_skip": 0}, "num_skip"),
        ({"candidates": ["En0", "En0", "En1"], "num_skip": 1}, "distinct"),
        ({"candidates": ["En0", "1bad"], "num_skip": 1}, "layer names"),
        ({"candidates": ["En0", "En1"], "num_skip": 1, "groups": {"g": ["En7"]}}, "En7"),
        ({"candidates": ["En0", "En1"], "num_skip": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_space_files_name_the_file_and_field(tmp_path, fields, message):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(fields))
    with pytest.raises(UserError) as err:
        load_space(str(path))
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_and_unknown_space(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("candidates: [En0, En1\nnum_skip: 1\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_space(str(path))
    with pytest.raises(UserError, match="unknown search space 'nope'.*meter_fusion"):
        load_space("nope")


def test_unknown_layer_in_a_skip_set():
    space = load_space("minilm_vqa")
    with pytest.raises(UserError, match="FV0"):
        space.encode({"FV0", "En1"})


def test_ties_at_the_cut_are_named():
    space = SkipSpace(candidates=["A", "B", "C", "D"], num_skip=2)
    assert space.tied_at_cut(dict.fromkeys("ABCD", 0.5)) == ["A", "B", "C", "D"]
    assert space.tied_at_cut({"A": 0.9, "B": 0.6, "C": 0.6, "D": 0.1}) == ["B", "C"]  # one of B and C goes in
    assert space.tied_at_cut({"A": 0.9, "B": 0.6, "C": 0.6, "D": 0.6}) == ["B", "C", "D"]
    assert space.tied_at_cut({"A": 0.9, "B": 0.8, "C": 0.5, "D": 0.5}) == []  # the tie is below the cut
    assert space.tied_at_cut({"A": 0.9, "B": 0.9, "C": 0.5, "D": 0.1}) == []  # both tied ones are in


@pytest.mark.parametrize(
    ("space", "num_skip", "draws"), [("minilm_vqa_sublayers", 11, 36), ("minilm_vqa", 2, 9), ("minilm_vqa", "1-3", 12)]
)
def test_balanced_subsets_skip_every_candidate_equally_often(space, num_skip, draws):
    import itertools
    from types import SimpleNamespace

    from das_tune.search.supernet import _balanced_draw

    s = load_space(space, num_skip)
    subsets = list(itertools.islice(s.balanced_subsets(seed=0), draws))
    assert all(len(x) in s.sizes and x <= set(s.candidates) for x in subsets)
    kept = [sum(c not in x for x in subsets) for c in s.candidates]
    if not s.is_range:  # a fixed size: after whole cycles every candidate was kept exactly as often
        assert len(set(kept)) == 1
    assert max(kept) - min(kept) <= max(s.sizes)
    assert subsets == list(itertools.islice(s.balanced_subsets(seed=0), draws)) != list(itertools.islice(s.balanced_subsets(seed=1), draws))
    # the warm-up's draw is the step's balanced subset: the same after a resume at any step
    net = SimpleNamespace(seed=0, position=SimpleNamespace(global_step=0))
    draw = _balanced_draw(net, SimpleNamespace(space=s))
    for step in [*range(draws), 3, 0, draws - 1]:
        net.position.global_step = step
        assert draw() == subsets[step]
