"""Input built to hurt: YAML alias bombs, deep nesting, huge values and names, absurd seed ranges. Each is one
UserError naming what was refused, found before anything is allocated or written."""

import pytest

from das_tune.bench.runs import parse_seeds
from das_tune.errors import UserError
from das_tune.spec.study import load_study_spec, parse_overrides

# 600 bytes that expand to 9^9 strings: "billion laughs"
BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 9)}]\n" for i in range(9))


def test_a_yaml_alias_bomb_is_refused_in_a_study_file(tmp_path):
    study = tmp_path / "bomb.yaml"
    study.write_text("extends: easyvqa_minilm\ntask:\n  options:\n" + "".join(f"    {line}\n" for line in BOMB.splitlines()))
    assert len(study.read_bytes()) < 1000
    with pytest.raises(UserError, match=r"bomb\.yaml: not valid YAML at line \d+, column \d+: aliases \(\*name\) are not accepted"):
        load_study_spec(study)


def test_a_yaml_alias_bomb_is_refused_in_a_set_value():
    with pytest.raises(UserError, match=r"--set 'task\.options=.*': the value is not valid YAML \(aliases"):
        parse_overrides(["task.options={a: &a [1, 1], b: [*a, *a]}"])


def test_deep_nesting_and_huge_values_are_refused():
    with pytest.raises(UserError, match=r"nested deeper than 32 levels"):
        parse_overrides(["backbone.options=" + "[" * 20_000 + "]" * 20_000])
    with pytest.raises(UserError, match=r"1,000,001 characters"):
        parse_overrides(["study_name=" + "x" * 1_000_001])


def test_a_huge_name_is_refused_in_one_short_line(tmp_path):
    with pytest.raises(UserError) as refused:
        load_study_spec("x" * 100_000)
    assert "(100,000 characters)" in str(refused.value) and len(str(refused.value)) < 1000
    with pytest.raises(UserError, match=r"study_name"):
        load_study_spec("easyvqa_minilm", {"study_name": "y" * 10_000})


def test_a_seed_range_too_large_to_run_is_refused_before_it_is_built():
    with pytest.raises(UserError, match=r"10,000,000,000 seeds; expected at most 10,000"):
        parse_seeds("10000000000")
    assert parse_seeds("0-2") == (0, 1, 2)


@pytest.mark.parametrize("field, value", [("retrain.epochs", True), ("seed", True), ("search.batch_size", 2.5)])
def test_a_count_is_a_whole_number_not_a_boolean(field, value):
    with pytest.raises(UserError, match=rf"field '{field}': Input should be a valid integer"):
        load_study_spec("easyvqa_minilm", {field: value})


@pytest.mark.parametrize("value", [-5, 0, True, 2.5])
def test_a_split_limit_is_a_positive_count(value):
    from das_tune.tasks import build_task

    with pytest.raises(UserError, match=r"task\.options\.train_limit: expected a whole number of examples ≥ 1"):
        build_task("easyvqa", tiny=True, train_limit=value)


def test_pretraining_counts_are_checked_as_the_run_checks_them():
    from das_tune.jobs.pretrain import PretrainSpec
    from das_tune.spec.yaml_reader import parse

    with pytest.raises(UserError, match=r"field 'seed': Input should be greater than or equal to 0"):
        parse(PretrainSpec, {"seed": -1}, "pretrain")
    with pytest.raises(UserError, match=r"align_steps \(10\) must be fewer than steps \(3\)"):
        parse(PretrainSpec, {"steps": 3, "align_steps": 10}, "pretrain")
