"""``das-tune bench``: the statistics and layer scores on hand-made numbers, and the whole benchmark in
a subprocess on a tiny model (samplers, training-free methods, ground truth) with its outputs checked
against each other."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from das_tune.bench import BenchConfig, plan, stats
from das_tune.bench.baselines import angular_distance, block_influence
from das_tune.bench.report import fmt
from das_tune.errors import UserError
from das_tune.spaces import SkipSpace

# -- statistics -------------------------------------------------------------------------------------


def test_kendall_tau_on_hand_made_rankings():
    assert stats.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # 5 concordant pairs, 1 discordant: τ = (5 − 1) / 6
    assert stats.kendall_tau([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(4 / 6)
    assert stats.kendall_tau([1, 1, 1, 1], [1, 2, 3, 4]) is None


def test_paired_sign_flip_test_is_exact():
    # all 5 differences positive: only the all-positive and all-negative patterns are as extreme
    result = stats.paired_test([2, 3, 4, 5, 6], [1, 1, 1, 1, 1])
    assert result["n"] == 5 and result["wins"] == 5 and result["p_value"] == pytest.approx(2 / 32)
    # differences (+1, −1): mean 0, every pattern is as extreme
    assert stats.paired_test([2, 1], [1, 2])["p_value"] == pytest.approx(1.0)
    # differences (+3, +1, −1), |sum| = 3: of the 8 patterns ±3±1±1 only ±(3 − 1 − 1) have |sum| < 3
    assert stats.paired_test([3, 1, 0], [0, 0, 1])["p_value"] == pytest.approx(6 / 8)
    same = stats.paired_test([0.5, 0.7], [0.5, 0.7])
    assert same["p_value"] == 1.0 and same["ties"] == 2


def test_regret_rank_and_spread():
    truth = {"A": 0.70, "B": 0.75, "C": 0.75, "D": 0.60}
    assert stats.regret(truth, "B") == 0 and stats.rank(truth, "B") == 1 and stats.rank(truth, "C") == 1
    assert stats.regret(truth, "A") == pytest.approx(0.05) and stats.rank(truth, "A") == 3
    assert stats.rank(truth, "D") == 4
    s = stats.spread([1.0, 2.0, 3.0, 4.0, None])
    assert s == {"median": 2.5, "q25": 1.75, "q75": 3.25, "min": 1.0, "max": 4.0, "n": 4}
    assert stats.spread([None])["n"] == 0


# -- training-free layer scores -----------------------------------------------------------------------


def test_block_influence_and_angular_distance_on_hand_made_tokens():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])  # same direction, orthogonal, opposite
    assert block_influence(x, y).tolist() == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)
    assert angular_distance(x, y).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-3)
    assert block_influence(x, y).mean().item() == pytest.approx(1.0)


def test_pick_takes_the_highest_scores_ties_by_candidate_order():
    space = SkipSpace(candidates=("En0", "En1", "En2", "En3"), num_skip=2)
    assert space.top({"En0": 0.1, "En1": 0.9, "En2": 0.5, "En3": 0.2}) == {"En1", "En2"}
    assert space.top(dict.fromkeys(space.candidates, 1.0)) == {"En0", "En1"}
    assert space.top([0.0, 0.5, 0.5, 0.5]) == {"En1", "En2"}


# -- the command, end to end --------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def json_numbers(node, found=None):
    found = set() if found is None else found
    if isinstance(node, dict):
        for value in node.values():
            json_numbers(value, found)
    elif isinstance(node, list):
        for value in node:
            json_numbers(value, found)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        found.add(fmt(node))
    return found


@pytest.mark.slow
def test_tiny_bench_writes_agreeing_json_markdown_and_plots(tmp_path):
    args = ["bench", "--space", "minilm_vqa", "--samplers", "das,random,tpe", "--seeds", "2", "--tiny", "--quiet",
            "--ground-truth", "--set", "num_skip=1", "--set", "search.search_epochs=1", "--out", "out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only contend on 2 shared cores
    result = subprocess.run([sys.executable, "-m", "das_tune.cli", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert result.stdout.strip() == str(out.relative_to(tmp_path) / "results.json")
    results = json.loads((out / "results.json").read_text())

    methods = ["das", "random", "tpe", "block_influence", "angular", "last_k", "first_k"]
    assert list(results["summary"]) == methods and results["seeds"] == [0, 1]
    runs = results["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted((m, s) for m in methods for s in (0, 1))
    samplers = [r for r in runs if r["kind"] == "sampler"]
    # weight-sharing fairness: the same observations, steps and warm-up for every sampler of a seed
    assert len({r["observations"] for r in samplers}) == 1 and samplers[0]["observations"] > 0
    assert len({(r["seed"], r["warmup_seconds"]) for r in runs}) == 2
    assert len({r["total_steps"] for r in samplers}) == 1
    for r in runs:
        assert len(r["chosen"]) == 1 and 0 <= r["value"] <= 1 and 1 <= r["rank"] <= 6
        assert r["total_steps"] == r["warmup_steps"] + r["search_steps"] + r["retrain_steps"]
        assert len(r["observed"]) == r["observations"]
        truth = results["ground_truth"]["per_seed"][str(r["seed"])]
        assert r["value"] == truth[r["chosen"][0]]  # a pick's retrain is the ground truth's retrain
    assert {r["chosen"][0] for r in runs if r["method"] == "last_k"} == {"En5"}
    assert all(r["kendall_tau"] is None for r in runs if r["method"] in ("random", "tpe"))
    assert all(r["kendall_tau"] is not None for r in runs if r["method"] in ("das", "last_k"))
    assert set(results["paired_tests"]) == set(methods) - {"das"}
    assert all(t["n"] == 2 for t in results["paired_tests"].values())
    assert len(results["ground_truth"]["mean"]) == 6

    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'bench.db'}")
    names = {s.study_name for s in storage.get_all_studies()}
    assert names == {f"easyvqa_minilm-{s}-seed{k}" for s in ("das", "random", "tpe") for k in (0, 1)}

    markdown = (out / "results.md").read_text()
    assert "| das |" in markdown and "## Ground truth" in markdown
    allowed = json_numbers(results)
    strays = [n for n in NUMBER.findall(markdown) if n not in allowed]
    assert not strays, f"numbers in results.md that are not in results.json: {strays}"
    for name in results["files"]["plots"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert set(results["files"]["plots"]) == {"anytime.png", "metric_vs_gmacs.png"}

    again = subprocess.run([sys.executable, "-m", "das_tune.cli", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # searches and retrains are reused
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((out / "results.json").read_text())["runs"]
    assert [r for r in rerun if r["kind"] == "sampler"] == samplers
    assert [(r["method"], r["seed"], r["chosen"], r["value"]) for r in rerun] == [(r["method"], r["seed"], r["chosen"], r["value"]) for r in runs]
    assert len(storage.get_all_trials(storage.get_study_id_from_name("easyvqa_minilm-das-seed0"))) == samplers[0]["observations"]


@pytest.mark.slow
def test_bench_on_a_journal_file_storage(tmp_path):
    args = ["bench", "--space", "minilm_vqa", "--samplers", "das", "--methods", "", "--seeds", "1", "--tiny", "--quiet",
            "--storage", "bench.log", "--out", "out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "das_tune.cli", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["storage"] == "bench.log" and not (tmp_path / "out" / "bench.db").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "bench.log")))
    trials = optuna.load_study(study_name="easyvqa_minilm-das-seed0", storage=storage).trials
    assert len(trials) == results["runs"][0]["observations"] > 0


@pytest.mark.slow
def test_bench_rejects_bad_input_before_running(tmp_path):
    result = subprocess.run([sys.executable, "-m", "das_tune.cli", "bench", "--tiny", "--space", "minilm_vqa", "--samplers", "das,nope"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bench").exists()


def test_ground_truth_is_refused_for_large_spaces():
    with pytest.raises(UserError, match="--ground-truth"):
        plan(BenchConfig(study="easyvqa_minilm", overrides={"tiny": True, "space": "meter_global"}, ground_truth=True))
    assert plan(BenchConfig(study="easyvqa_minilm", overrides={"tiny": True}, ground_truth=True)).space.num_subsets == 15


def test_numbers_are_printed_one_way():
    assert fmt(None) == "—" and fmt(math.nan) == "—" and fmt(3) == "3" and fmt(0.123456) == "0.1235"


def test_readme_bench_numbers_come_from_the_committed_results():
    root = Path(__file__).resolve().parents[1]
    committed = sorted((root / "bench").glob("*/results.json"))
    assert committed, "no committed benchmark results under bench/"
    allowed = set()
    for path in committed:
        results = json.loads(path.read_text())
        assert not results["tiny"] and len(results["seeds"]) >= 5 and results["ground_truth"] is not None
        json_numbers(results, allowed)
    readme = (root / "README.md").read_text()
    tables = re.findall(r"<!-- bench-table -->(.*?)<!-- /bench-table -->", readme, re.S)
    assert tables, "README has no bench table"
    strays = [n for table in tables for n in NUMBER.findall(table) if n not in allowed]
    assert not strays, f"numbers in README's bench tables that are not in bench/*/results.json: {strays}"
