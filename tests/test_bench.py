"""``das-tune bench``: the statistics and layer scores on hand-made numbers, and the whole benchmark in
a subprocess on a tiny model (samplers, training-free methods, ground truth) with its outputs checked
against each other."""

import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import python

from das_tune.artifacts.results import LadderResults, SearchRecord
from das_tune.bench import BenchConfig, SupernetBudget, parse_seeds, plan, report, run_bench, stats
from das_tune.bench.baselines import angular_distance, block_influence
from das_tune.bench.report import fmt
from das_tune.bench.runs import budget_losses_path, check_plan_file, check_same_plan, ground_truth_order, plan_document
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.samplers import SAMPLER_ATTR
from das_tune.spec.spaces import SkipSpace
from das_tune.spec.study import RetrainSpec, load_study_spec
from das_tune.storage.lease import folder_lock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_tables  # noqa: E402
import recollect  # noqa: E402
import supernet_val_scores  # noqa: E402

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
    assert stats.paired_test([2], [1])["p_value"] == 1.0 and stats.paired_test([], [])["p_value"] is None
    same = stats.paired_test([0.5, 0.7], [0.5, 0.7])
    assert same["p_value"] == 1.0 and same["ties"] == 2


def test_paired_test_permutes_the_differing_pairs_and_samples_above_twenty():
    # a tied pair flips to itself: with or without ties, the same exact p-value
    assert stats.paired_test([3, 1, 0, 5, 5], [0, 0, 1, 5, 5])["p_value"] == pytest.approx(6 / 8)
    assert stats.paired_test([3, 5, 5], [0, 5, 5])["p_value"] == 1.0  # one pair differs: both its signs are as extreme
    # 24 differing pairs with integer differences: the exact p-value from the distribution of the sum of ±d,
    # built by convolution, against the test's Monte Carlo estimate (its standard error here is about 0.0015)
    d = np.array([3, 1, 2, 2, 1, 3, 1, 1, 2, 1, -1, 2, 1, -2, 1, 3, -1, 1, 2, -3, 1, 1, -2, 1])
    counts = np.ones(1, dtype=np.int64)  # counts[i]: the patterns whose sum is i − (len(counts) − 1) / 2
    for k in np.abs(d):
        counts = np.convolve(counts, np.r_[1, np.zeros(2 * k - 1, dtype=np.int64), 1])
    sums = np.arange(len(counts)) - (len(counts) - 1) // 2
    exact = counts[np.abs(sums) >= abs(d.sum())].sum() / counts.sum()
    result = stats.paired_test(d, np.zeros(len(d)))
    assert "Monte Carlo" in result["test"] and 0.01 < exact < 0.2
    assert result["p_value"] == pytest.approx(exact, abs=0.006)
    assert stats.paired_test(d, np.zeros(len(d)))["p_value"] == result["p_value"]  # seeded: the same every time


def test_spread():
    s = stats.spread([1.0, 2.0, 3.0, 4.0, None])
    assert s == {"median": 2.5, "q25": 1.75, "q75": 3.25, "min": 1.0, "max": 4.0, "n": 4}
    assert stats.spread([None])["n"] == 0


def test_percentile_regret_and_top10_on_hand_made_numbers():
    ten = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    assert stats.percentile(ten, 0.9) == 100 and stats.in_top10(ten, 0.9) and stats.regret(ten, 0.9) == 0
    # the second best of 10 is beaten by 1 of 10 = 10 %: not in the top 10 %
    assert stats.percentile(ten, 0.8) == 90 and not stats.in_top10(ten, 0.8)
    assert stats.regret(ten, 0.8) == pytest.approx(0.1) and stats.top10_threshold(ten) == 0.9
    # a pick outside the reference sample: between the best two, and above all of them
    assert stats.percentile(ten, 0.85) == 90 and not stats.in_top10(ten, 0.85)
    assert stats.in_top10(ten, 0.95) and stats.regret(ten, 0.95) == pytest.approx(-0.05)
    assert stats.percentile(ten, -1.0) == 0
    twenty = [i / 20 for i in range(20)]
    assert stats.in_top10(twenty, twenty[-2]) and not stats.in_top10(twenty, twenty[-3])
    assert stats.top10_threshold(twenty) == twenty[-2]
    # 0.1 × 30 is 3.0000000000000004 in floating point: the third best of 30 is still in the top 10 %
    thirty = [i / 30 for i in range(30)]
    assert stats.in_top10(thirty, thirty[-3]) and not stats.in_top10(thirty, thirty[-4])
    assert stats.top10_threshold(thirty) == thirty[-3]
    ties = [1.0, 1.0, 1.0, 0.5]
    assert stats.percentile(ties, 1.0) == 100 and stats.in_top10(ties, 1.0) and stats.percentile(ties, 0.5) == 25


@pytest.mark.parametrize("seed", range(5))
def test_top10_percentile_and_threshold_agree(seed):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 12, size=int(rng.integers(3, 60))).tolist()  # small integers: many ties
    threshold = stats.top10_threshold(reference)
    for value in range(-1, 13):
        top = stats.in_top10(reference, value)
        assert top == (stats.percentile(reference, value) > 90) == (value >= threshold)


def test_spearman_on_hand_made_rankings():
    assert stats.spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats.spearman_rho([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert stats.spearman_rho([1, 1, 1], [1, 2, 3]) is None


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


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only contend on 2 shared cores


def bench(tmp_path, *args, timeout=900):
    return subprocess.run([*python(), "-m", "das_tune.cli", "bench", *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def retrain_files(out):
    return {path: path.stat().st_mtime_ns for path in (out / "retrain").glob("seed*/*/metrics.json")}


@pytest.mark.slow
def test_tiny_bench_in_two_pieces_writes_agreeing_json_markdown_and_plots(tmp_path):
    # skip 1 of 6 (6 subsets), observing 2 subsets every 3 of 6 steps: 4 observations per sampler; at retrain.lr
    # 2e-3 the tiny subsets retrain to values apart beyond their noise, so that every ranking figure is a number
    args = ["--space", "minilm_vqa", "--tiny", "--quiet", "--ground-truth", "--set", "num_skip=1", "--set", "search.search_epochs=1",
            "--set", "retrain.lr=2e-3",
            "--set", "search.round_size=2", "--set", "search.observe_every=3", "--out", "out"]
    first = bench(tmp_path, *args, "--seeds", "1")  # a count: seed 0
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    assert first.stdout.strip() == str(out.relative_to(tmp_path) / "results.json")
    assert "4 of 6 subsets" in first.stderr  # the observation budget warning
    piece_one = retrain_files(out)
    assert len(piece_one) == 6 * 2  # every subset at retrain seeds 0 and 1; the picks are among them
    # seed 0 again (reused) and seed 1; uniform supernets of seed 1 only, 6 steps an epoch: 1 and 2 epochs
    second = bench(tmp_path, *args, "--seeds", "2", "--supernet-seeds", "1-1", "--supernet-steps", "6,12")
    assert second.returncode == 0, second.stderr[-3000:]
    assert retrain_files(out) == piece_one  # nothing retrained again: the ground truth is shared by all seeds
    results = json.loads((out / "results.json").read_text())
    budgets = results["supernet_budgets"]
    assert list(budgets) == ["6", "12"] and all(b["seeds"] == [1] and b["retrains"] == b["steps"] / 6 for b in budgets.values())
    for b in budgets.values():
        assert -1 <= b["sparse_kendall_tau"]["median"] <= 1 and 0 <= b["separation_auc"]["median"] <= 1
    assert "| supernet steps | × one retrain |" in (out / "results.md").read_text()

    samplers = ["das", "das_std", "random", "tpe"]
    methods = [*samplers, "block_influence", "angular", "last_k", "first_k"]
    assert list(results["summary"]) == methods and results["seeds"] == [0, 1] and results["reference"] == "das"
    runs = results["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted((m, s) for m in methods for s in (0, 1))
    gt = results["ground_truth"]
    assert gt["kind"] == "all" and gt["retrain_seeds"] == [0, 1] and len(gt["subsets"]) == 6 and gt["retrains"] == 12
    reference = [t["mean"] for t in gt["subsets"].values()]
    for r in runs:
        truth = gt["subsets"][",".join(r["chosen"])]
        assert len(r["chosen"]) == 1 and r["retrained"] == truth["values"] and r["value"] == truth["mean"]
        assert r["percentile"] == stats.percentile(reference, r["value"]) and r["top10"] == stats.in_top10(reference, r["value"])
        assert r["regret"] == pytest.approx(max(reference) - r["value"])
        assert r["cost_steps"] == r["warmup_steps"] + r["search_steps"] + r["retrain_steps"]
        assert len(r["observed"]) == r["observations"] and set(r["supernet_losses"]) == set(gt["subsets"])
    by_kind = {kind: [r for r in runs if r["kind"] == kind] for kind in ("sampler", "training-free")}
    # weight-sharing fairness: the same observations, steps and warm-up for every sampler of a seed
    assert {r["observations"] for r in by_kind["sampler"]} == {results["budget"]["observations"]} == {4}
    assert len({r["cost_steps"] for r in by_kind["sampler"]}) == 1
    assert len({(r["seed"], r["warmup_seconds"]) for r in runs}) == 2
    # the training-free methods score the warm-up supernet, which is what its ranking measures
    for r in by_kind["training-free"]:
        warmup = json.loads((out / "runs" / f"easyvqa_minilm-warmup-seed{r['seed']}" / "warmup.json").read_text())
        assert r["supernet_losses"] == warmup["supernet_losses"]
    assert {tuple(r["chosen"]) for r in runs if r["method"] == "last_k"} == {("En5",)}
    assert all(r["layer_scores"] is None for r in runs if r["method"] in ("random", "tpe"))
    assert all(set(r["layer_scores"]) == set(results["candidates"]) for r in runs if r["method"] in ("das", "das_std"))
    assert set(results["paired_tests"]) == set(methods) - {"das"}
    for method, test in results["paired_tests"].items():  # one pick at every seed: its 2 retrains against das's 2 seeds
        picks = {tuple(r["chosen"]) for r in runs if r["method"] == method}
        assert (test["n"], "unpaired" in test["test"]) == ((4, True) if len(picks) == 1 else (2, False))
    share = results["summary"]["das"]["top10_share"]
    assert share == sum(r["top10"] for r in runs if r["method"] == "das") / 2

    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'bench.db'}")
    names = {s.study_name for s in storage.get_all_studies()}
    assert names == {f"easyvqa_minilm-{s}-seed{k}" for s in samplers for k in (0, 1)}
    for method, standardize in (("das", False), ("das_std", True)):  # the study itself standardises: das is the reference rule
        study_id = storage.get_study_id_from_name(f"easyvqa_minilm-{method}-seed0")
        recorded = storage.get_study_system_attrs(study_id)[SAMPLER_ATTR]
        assert recorded["name"] == "das" and recorded["standardize"] is standardize

    markdown = (out / "results.md").read_text()
    assert "| das_std |" in markdown and "## Ground truth" in markdown and "top 10 % share" in markdown
    allowed = json_numbers(results)
    strays = [n for n in NUMBER.findall(markdown) if n not in allowed]
    assert not strays, f"numbers in results.md that are not in results.json: {strays}"
    assert set(results["files"]["plots"]) == {"picks.png", "anytime.png", "metric_vs_gmacs.png"}
    for name in results["files"]["plots"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")

    # another reference method: the same runs, judged and compared from random search's side
    judged = bench(tmp_path, *args, "--seeds", "2", "--reference-method", "random")
    assert judged.returncode == 0, judged.stderr[-3000:]
    rejudged = json.loads((out / "results.json").read_text())
    assert rejudged["runs"] == runs and rejudged["reference"] == "random"
    assert set(rejudged["paired_tests"]) == set(methods) - {"random"}
    assert "random, the reference method" in (out / "results.md").read_text()

    changed = bench(tmp_path, *args, "--seeds", "2", "--retrain-seeds", "3")
    assert changed.returncode == 2 and "retrain seeds" in changed.stderr

    # benchmarks/supernet_val_scores.py: every subset of each seed's warm-up supernet on the whole val split
    scores = supernet_val_scores.score_folder(out, tmp_path / "scores.json")
    assert set(scores) == {"0", "1"} and all(set(row) == set(gt["subsets"]) for row in scores.values())
    assert all({"accuracy", "loss"} <= set(metrics) for row in scores.values() for metrics in row.values())
    assert len({row[subset]["loss"] for row in scores.values() for subset in row}) > 1  # the subnets, not one model
    assert supernet_val_scores.score_folder(out, tmp_path / "scores.json") == scores  # resumed: nothing scored again


@pytest.mark.slow
def test_killed_sublayer_bench_resumes_from_a_clone_reusing_finished_retrains(tmp_path):
    args = ["--space", "minilm_vqa_sublayers", "--tiny", "--quiet", "--ground-truth", "--reference-size", "4",
            "--samplers", "das,random", "--methods", "last_k", "--seeds", "1", "--set", "search.search_epochs=1", "--out", "out"]
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "das_tune.cli", "bench", *args], cwd=tmp_path, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while len(retrain_files(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    before = retrain_files(out)
    assert len(before) >= 3 and not (out / "results.json").exists()
    for metrics in before:  # as a clone has them: a benchmark's retrain weights are not committed
        (metrics.parent / "adapters.safetensors").unlink()
    again = bench(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    after = retrain_files(out)
    assert all(after[path] == mtime for path, mtime in before.items())  # finished retrains were reused
    results = json.loads((out / "results.json").read_text())
    gt = results["ground_truth"]
    assert gt["kind"] == "sample" and len(gt["subsets"]) == 4 and results["num_subsets"] == 495
    assert any("small for a verdict" in w for w in results["warnings"])
    assert [r["method"] for r in results["runs"]] == ["das", "random", "last_k"]
    for r in results["runs"]:
        assert len(r["chosen"]) == 4 and all(name[0] in "AF" for name in r["chosen"])
        assert 0 <= r["percentile"] <= 100 and r["top10"] is not None and len(r["retrained"]) == 2
    assert results["runs"][2]["chosen"] == ["A4", "F4", "A5", "F5"]
    assert len(after) == 2 * len({",".join(r["chosen"]) for r in results["runs"]} | set(gt["subsets"]))


class LogCollector(Reporter):
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)


@pytest.mark.slow
def test_a_second_bench_process_skips_the_retrains_another_one_holds(tmp_path):
    # one ground-truth retrain's folder is held, as a second `das-tune bench` on the same folder holds
    # the retrain it works on: this process does every other retrain and leaves that one to its holder;
    # a ground truth alone (no sampler, no method) trains no warm-up
    config = BenchConfig(study="easyvqa_minilm", samplers=(), methods=(), seeds=(0,), ground_truth=True,
                         overrides={"tiny": True, "num_skip": 1}, out=tmp_path / "out")
    held = tmp_path / "out" / "retrain" / "seed1" / "En3"
    reporter = LogCollector()
    with folder_lock(held):
        results = run_bench(config, reporter)
    assert not (held / "metrics.json").exists()
    assert len(retrain_files(tmp_path / "out")) == 6 * 2 - 1
    assert results.ground_truth is None  # partial: the results wait for the held retrain
    assert any("1 retrains were running in other processes" in line for line in reporter.lines)
    # every subset at retrain seed 0 before any at seed 1: a ground truth stopped part-way covers them all
    seeds = [line.split(" at retrain seed ")[1][0] for line in reporter.lines if line.startswith("retraining ")]
    assert seeds == ["0"] * 6 + ["1"] * 5
    again = run_bench(config, LogCollector())
    assert (held / "metrics.json").is_file() and len(again.ground_truth.subsets) == 6
    assert again.runs == [] and not (tmp_path / "out" / "runs").exists() and not (tmp_path / "out" / "records").exists()
    report = (tmp_path / "out" / "results.md").read_text()  # a ground truth alone: no empty method tables
    assert "Rankable" in report and "## Summary" not in report and "No method has searched yet" in report


@pytest.mark.slow
def test_a_second_bench_process_skips_the_seeds_another_one_runs(tmp_path):
    config = BenchConfig(study="easyvqa_minilm", samplers=("random",), methods=("first_k",), seeds=(0, 1), retrain_seeds=1,
                         overrides={"tiny": True, "num_skip": 1, "search.search_epochs": 1, "search.round_size": 2,
                                    "search.observe_every": 3}, out=tmp_path / "out")
    reporter = LogCollector()
    with folder_lock(tmp_path / "out" / "runs" / "easyvqa_minilm-warmup-seed0"):  # another process runs seed 0
        results = run_bench(config, reporter)
    assert sorted({(r.method, r.seed) for r in results.runs}) == [("first_k", 1), ("random", 1)]
    assert "seed 0: running in another process; skipped here" in reporter.lines
    assert sorted({r.seed for r in run_bench(config, LogCollector()).runs}) == [0, 1]
    # seed 1's searches are saved and another process, running seed 1, retrains its picks: this one helps
    picks = {tuple(SearchRecord.read(tmp_path / "out" / "records" / f"{m}-seed1.json").chosen) for m in ("first_k", "random")}
    for pick in picks:
        shutil.rmtree(tmp_path / "out" / "retrain" / "seed0" / "+".join(pick))
    helper = LogCollector()
    with folder_lock(tmp_path / "out" / "runs" / "easyvqa_minilm-warmup-seed1"):
        helped = run_bench(dataclasses.replace(config, seeds=(1,)), helper)
    assert sorted({(r.method, r.seed) for r in helped.runs}) == [(m, s) for m in ("first_k", "random") for s in (0, 1)]
    assert sum("beside the process that runs the seed" in line for line in helper.lines) == len(picks)
    (tmp_path / "out" / "records" / "random-seed1.json").unlink()  # seed 1 as a piece stopped during its random search
    partial = report.collect(plan(config))
    assert sorted({(r.method, r.seed) for r in partial.runs}) == [("first_k", 0), ("random", 0)]  # the same seeds for every method
    assert "seed 1: left out, random not searched or retrained yet (run that seed again)" in partial.warnings


@pytest.mark.slow
def test_bench_on_a_journal_file_storage(tmp_path):
    # 4 observations of 15 subsets: a budget the bench accepts
    result = bench(tmp_path, "--space", "minilm_vqa", "--samplers", "das", "--methods", "", "--seeds", "1", "--retrain-seeds", "1",
                   "--tiny", "--set", "search.search_epochs=1", "--set", "search.round_size=2",
                   "--set", "search.observe_every=3", "--storage", "bench.log", "--out", "out", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results: out/results.md (the tables), out/results.json (every number)" in result.stdout.splitlines()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["storage"] == "bench.log" and not (tmp_path / "out" / "bench.db").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "bench.log")))
    trials = optuna.load_study(study_name="easyvqa_minilm-das-seed0", storage=storage).trials
    assert len(trials) == results["runs"][0]["observations"] > 0


@pytest.mark.slow
def test_bench_rejects_bad_input_before_running(tmp_path):
    for args, message in [
        (["--space", "minilm_vqa", "--samplers", "das,nope"], "nope"),
        (["--space", "minilm_vqa", "--samplers", "das_angular@-1"], "das_angular@1, above 0"),
        (["--space", "minilm_vqa", "--set", "num_skip=1"], "observe 18 subsets of only 6"),
        (["--space", "minilm_vqa", "--seeds", "3-x"], "--seeds"),
        (["--space", "minilm_vqa", "--ground-truth", "--retrain-seeds", "1"], "--retrain-seeds"),
        (["--space", "minilm_vqa", "--samplers", "", "--methods", ""], "nothing to measure"),
        (["--space", "minilm_vqa", "--samplers", "das,random", "--reference-method", "asha"], "--reference-method 'asha'"),
    ]:
        result = bench(tmp_path, "--tiny", *args, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_a_bench_refused_by_its_folder_says_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    skip2 = plan(BenchConfig(study="easyvqa_minilm", overrides={"tiny": True, "num_skip": 2, "search.search_epochs": 1}, out=out))
    out.mkdir()
    (out / "plan.yaml").write_text(plan_document(skip2))
    result = bench(tmp_path, "--space", "minilm_vqa", "--tiny", "--num-skip", "3", "--out", "out", timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "holds a benchmark of another study" in lines[0], result.stderr
    assert [p.name for p in out.iterdir()] == ["plan.yaml"]  # no bench.db either

def test_a_bench_folder_takes_other_search_settings_until_a_search_that_depends_on_them_has_started(tmp_path):
    base = {"tiny": True, "num_skip": 2, "search.search_epochs": 1}
    first = plan(BenchConfig(study="easyvqa_minilm", samplers=(), methods=("first_k",), ground_truth=True, overrides=base, out=tmp_path))
    check_plan_file(first)  # a piece of ground truth only
    other_search = plan(BenchConfig(study="easyvqa_minilm", overrides={**base, "search.observe_every": 6}, out=tmp_path))
    check_plan_file(other_search)  # no search has run: the ground truth is kept, the plan takes the new search
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["search"]["search"]["observe_every"] == 6
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "das-seed0.json").write_text("{}")
    with pytest.raises(UserError, match="holds searches with other search settings"):
        check_plan_file(first)
    race = {**base, "search.observe_every": 6, "ray.steps_per_trial": 40}
    check_plan_file(plan(BenchConfig(study="easyvqa_minilm", overrides=race, out=tmp_path)))  # no race yet: ray settings may change
    (tmp_path / "records" / "asha-seed0.json").write_text("{}")
    with pytest.raises(UserError, match="holds searches with other ray settings"):
        check_plan_file(other_search)
    with pytest.raises(UserError, match="another study, retrain budget"):
        check_plan_file(plan(BenchConfig(study="easyvqa_minilm", overrides={**base, "search.observe_every": 6, "retrain.lr": 3e-3},
                                         out=tmp_path)))


def test_plan_validates_the_budget_and_draws_a_fixed_reference_sample():
    tiny = {"tiny": True, "search.search_epochs": 1}
    with pytest.raises(UserError, match="nothing separates samplers"):
        plan(BenchConfig(study="easyvqa_minilm", overrides={**tiny, "num_skip": 1}))
    assert plan(BenchConfig(study="easyvqa_minilm", overrides={**tiny, "num_skip": 1}, samplers=())).observations == 9
    with pytest.raises(UserError, match="--supernet-steps"):  # supernet seeds without a budget would do nothing
        plan(BenchConfig(study="easyvqa_minilm", overrides={**tiny, "num_skip": 1}, samplers=(), supernet_seeds=(0,)))
    small = plan(BenchConfig(study="easyvqa_minilm", overrides=tiny, ground_truth=True))
    assert small.reference_kind == "all" and len(small.reference) == 15 and small.observations == 9
    assert small.warnings and "9 of 15" in small.warnings[0]
    large = plan(BenchConfig(study="easyvqa_minilm_sublayers", overrides=tiny, reference_size=40))
    assert large.reference_kind == "sample" and len(set(large.reference)) == 40
    # 9 observations, all within TPE's 10 random start-up trials: said, unless the study lowers them
    assert len(large.warnings) == 1 and "tpe draws its first 10 trials at random" in large.warnings[0]
    startup = {**tiny, "sampler.options.tpe": {"n_startup_trials": 4}}
    assert not plan(BenchConfig(study="easyvqa_minilm_sublayers", overrides=startup, reference_size=40)).warnings
    assert not plan(BenchConfig(study="easyvqa_minilm_sublayers", overrides=tiny, samplers=("das", "random"))).warnings
    assert all(len(s) == 4 and s <= set(large.space.candidates) for s in large.reference)
    again = plan(BenchConfig(study="easyvqa_minilm_sublayers", overrides=tiny, reference_size=40, seeds=(5, 6)))
    assert again.reference == large.reference  # the same sample in every piece
    assert plan(BenchConfig(study="easyvqa_minilm_sublayers", overrides=tiny, reference_size=10)).reference == large.reference[:10]
    order = ground_truth_order(small)  # retrained in a fixed random order: a ground truth done in part is a random sample
    assert sorted(map(sorted, order)) == sorted(map(sorted, small.reference)) and order != list(small.reference)
    assert order == ground_truth_order(plan(BenchConfig(study="easyvqa_minilm", overrides=tiny, ground_truth=True)))


def test_supernet_budgets_parse_counts_and_ensembles():
    assert SupernetBudget.parse("90, 300,2x300,300") == (SupernetBudget(90), SupernetBudget(300), SupernetBudget(300, 2))
    assert [b.label for b in SupernetBudget.parse("600,3X200")] == ["600", "3x200"]
    for bad in ("x300", "2x", "300,-1", "0x300", "2x0", "ninety"):
        with pytest.raises(UserError, match="--supernet-steps"):
            SupernetBudget.parse(bad)
    tiny = {"tiny": True, "num_skip": 1, "search.search_epochs": 1}
    with pytest.raises(UserError, match="an ensemble of 3 supernets needs at least 3 supernet seeds"):
        plan(BenchConfig(study="easyvqa_minilm", overrides=tiny, samplers=(), supernet_budgets=SupernetBudget.parse("3x6"),
                         supernet_seeds=(0, 1)))


def test_an_ensemble_of_supernets_ranks_by_their_mean_loss(tmp_path):
    from das_tune.artifacts.results import GroundTruth, Retrained, SupernetLosses, write_json

    p = plan(BenchConfig(study="easyvqa_minilm", overrides={"tiny": True, "num_skip": 1, "search.search_epochs": 1}, samplers=(),
                         ground_truth=True, supernet_budgets=SupernetBudget.parse("6,2x6"), supernet_seeds=(0, 1, 2, 3, 4), out=tmp_path))
    truth = {f"En{k}": 0.5 + 0.1 * k for k in range(6)}  # apart far beyond the noise: every pair is ordered
    subsets = {k: Retrained(metric="accuracy", values={"0": v, "1": v}, mean=v, std=0.0, additional_gmacs=-0.1, flops_saved=0.3,
                            steps=10, seconds=1.0) for k, v in truth.items()}
    gt = GroundTruth(kind="all", retrain_seeds=[0, 1], sample_seed=None, subsets=subsets, noise_std=0.01, best=1.0,
                     top10_threshold=1.0, retrains=12, retrain_seconds=12.0, rankable=20.0, rankable_goal=report.RANKABLE,
                     good_set=["En5"], good_width=stats.GOOD_WIDTH)
    # each supernet of a pair mistakes the best two subsets the other way round, so that only their mean is right
    for seed in range(5):
        sign = 1 if seed % 2 == 0 else -1
        losses = {k: -v + sign * 0.06 * (k == "En5") - sign * 0.06 * (k == "En4") for k, v in truth.items()}
        write_json(SupernetLosses(steps=6, seconds=1.0, split="val", losses=losses), budget_losses_path(p, seed, 6))
    single, pair = report._budget_rankings(p, gt).values()
    assert single.seeds == [0, 1, 2, 3, 4] and single.supernets == 1 and single.retrains == 6 / p.retrain_steps
    assert pair.seeds == [0, 1, 2, 3] and pair.supernets == 2 and pair.retrains == 12 / p.retrain_steps  # seed 4 has no partner
    assert single.separation_auc.median == pytest.approx(0.8) and single.kendall_tau.median < 1  # seeds 0, 2, 4 put En4 first
    assert pair.separation_auc.median == 1 and pair.kendall_tau.median == pytest.approx(1.0) and pair.top3_recall.median == 1
    assert report._budget_label(pair) == "2 × 6 (mean loss)" and report._budget_label(single) == "6"


def test_a_search_field_added_later_is_recorded_only_away_from_its_default():
    """Studies and bench plans recorded before ``search.warmup_draw`` existed still match at its default."""
    from das_tune.spec.study import SearchSpec

    uniform, balanced = (load_study_spec("easyvqa_minilm", {"search.warmup_draw": d}) for d in ("uniform", "balanced"))
    assert "warmup_draw" not in SearchSpec().recorded() and SearchSpec(warmup_draw="balanced").recorded()["warmup_draw"] == "balanced"
    assert "search.warmup_draw" not in uniform.search_settings()
    assert balanced.search_settings() == {**uniform.search_settings(), "search.warmup_draw": "balanced"}
    docs = [yaml.safe_load(plan_document(plan(BenchConfig(study="easyvqa_minilm", overrides={"tiny": True, "search.search_epochs": 1,
                                                                "search.warmup_draw": d}))))
            for d in ("uniform", "balanced")]
    assert "warmup_draw" not in docs[0]["search"]["search"] and docs[1]["search"]["search"]["warmup_draw"] == "balanced"


def test_observation_rounds_count_global_steps_as_the_search_does():
    from das_tune.bench.runs import observation_rounds
    from das_tune.spec.study import SearchSpec

    # the main study: 47 steps per epoch, a round every 10 global steps: steps 50, 60, …, 140
    assert observation_rounds(SearchSpec(warmup_epochs=1, search_epochs=2, observe_every=10), 47) == 10
    assert observation_rounds(SearchSpec(warmup_epochs=1, search_epochs=1, observe_every=3), 6) == 2
    assert observation_rounds(SearchSpec(warmup_epochs=1, search_epochs=1, observe_every=7), 6) == 1


def test_das_is_the_reference_rule_and_das_std_standardises_whatever_the_study_says():
    p = plan(BenchConfig(study="easyvqa_minilm", overrides={"tiny": True, "search.search_epochs": 1}))
    assert p.base.sampler.options["das"]["standardize"] is True  # the study's own choice
    das, std, tpe = p.spec(3, "das"), p.spec(3, "das_std"), p.spec(3, "tpe")
    assert (das.sampler.name, das.sampler.own_options) == ("das", {"standardize": False})
    assert (std.sampler.name, std.sampler.own_options) == ("das", {"standardize": True})
    assert tpe.sampler.name == "tpe" and tpe.sampler.own_options == {}
    assert len({das.resolved_study_name, std.resolved_study_name, tpe.resolved_study_name}) == 3
    assert das.resolved_study_name == "easyvqa_minilm-das-seed3"


def test_seeds_are_a_count_a_range_or_a_list():
    assert parse_seeds("5") == (0, 1, 2, 3, 4) and parse_seeds("5-9") == (5, 6, 7, 8, 9) and parse_seeds("0,3,7") == (0, 3, 7)
    for bad in ("x", "0", "3-1", "1,1"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_numbers_are_printed_one_way():
    assert fmt(None) == "—" and fmt(math.nan) == "—" and fmt(3) == "3" and fmt(0.123456) == "0.1235"


def test_readme_bench_blocks_are_rendered_from_the_committed_results():
    benches = readme_tables.committed()
    assert benches, "no committed benchmark results under bench/"
    for results in benches.values():
        assert not results.tiny
        if isinstance(results, LadderResults):  # a range of num_skip: one search for every size against one per size
            assert len(results.seeds) >= 5
            assert results.cost_ratio is not None and results.full is not None and not results.warnings
        elif results.summary:  # searches, against a ground truth
            assert len(results.seeds) >= 5 and results.ground_truth is not None
        else:  # a ground truth alone: every subset, its noise measured
            assert len(results.ground_truth.retrain_seeds) >= 3
    docs = {path: path.read_text() for path in readme_tables.FILES}
    tables = {folder for text in docs.values() for _, kind, folder, _, _ in readme_tables.BLOCK.findall(text) if kind == "table"}
    assert tables == set(benches), "every committed bench has one docs/benchmarks.md block"
    for path, text in docs.items():
        assert readme_tables.render(text, benches) == text, f"{path.name}'s bench blocks differ: run benchmarks/readme_tables.py"
        for block in readme_tables.BLOCK.finditer(text):  # a number changed in a block's text is found
            mutated = text[:block.start(4)] + block.group(4).replace("0.", "1.", 1) + text[block.end(4):]
            assert readme_tables.render(mutated, benches) != mutated


def test_recollect_rebuilds_a_committed_bench_from_its_folder(tmp_path):
    """benchmarks/recollect.py reads the plan, the records and the retrains of a clone and gives the committed numbers
    (the supernets' losses of this older bench stay in runs/, which a clone lacks: their rankings are kept)."""
    committed = ROOT / "bench" / "minilm_vqa_sublayers-skip11"
    out = tmp_path / "bench" / committed.name
    shutil.copytree(committed, out, ignore=shutil.ignore_patterns("*.png"))
    assert not (out / "runs").exists()
    recollect.recollect(out)
    before, after = (json.loads(path.read_text()) for path in (committed / "results.json", out / "results.json"))
    for key in ("summary", "paired_tests", "verdict", "ground_truth", "runs", "warmup_ranking"):
        assert after[key] == before[key], key
    assert {k: {**b, "supernets": 1} for k, b in before["supernet_budgets"].items()} == after["supernet_budgets"]
    assert set(before["warnings"]) <= set(after["warnings"]) and (out / "picks.png").is_file()


def test_recollect_keeps_the_method_a_bench_was_judged_by(tmp_path):
    committed = ROOT / "bench" / "minilm_vqa_sublayers-skip11-warm300-race-seeds10-19"  # judged by the race, not das
    out = tmp_path / "bench" / committed.name
    shutil.copytree(committed, out, ignore=shutil.ignore_patterns("*.png"))
    recollect.recollect(out)
    before, after = (json.loads(path.read_text()) for path in (committed / "results.json", out / "results.json"))
    assert after["reference"] == before["reference"] == "asha"
    assert after["paired_tests"] == before["paired_tests"] and after["verdict"] == before["verdict"]


def test_committed_supernet_losses_rebuild_their_rankings(tmp_path):
    """A supernets bench commits its uniform supernets' losses (runs/*/losses.json): a clone recomputes every
    budget's ranking from them, the ensemble's included, and gets the committed figures."""
    committed = ROOT / "bench" / "minilm_vqa-skip5-e24-min12-supernets"
    out = tmp_path / "bench" / committed.name
    shutil.copytree(committed, out, symlinks=True)
    (out / "retrain").unlink()  # a link to another folder's retrains, relative to bench/
    (out / "retrain").symlink_to((committed / "retrain").resolve())
    before = json.loads((committed / "results.json").read_text())["supernet_budgets"]
    shutil.rmtree(out / "runs" / "easyvqa_minilm-uniform600-seed9")  # a lost one is missed, not kept from the results
    recollect.recollect(out)
    after = json.loads((out / "results.json").read_text())["supernet_budgets"]
    assert after["300"] == before["300"] and after["2x300"] == before["2x300"] and list(after) == ["300", "600", "2x300"]
    assert after["600"]["seeds"] == list(range(9)) and after["600"] != before["600"]


def test_balanced_supernets_are_found_under_their_draws_name(tmp_path):
    """A budget supernet's folder is named by its draw (``-balanced300-``): a clone of a balanced bench rebuilds its
    rankings from the losses in those folders."""
    committed = ROOT / "bench" / "minilm_vqa_sublayers-skip11-balanced"
    out = tmp_path / "bench" / committed.name
    shutil.copytree(committed, out, symlinks=True, ignore=shutil.ignore_patterns("*.png"))
    (out / "retrain").unlink()
    (out / "retrain").symlink_to((committed / "retrain").resolve())
    assert {p.name.split("-")[1] for p in (out / "runs").iterdir()} == {"balanced300"}
    shutil.rmtree(out / "runs" / "easyvqa_minilm_sublayers-balanced300-seed9")  # read from the folders, not kept
    recollect.recollect(out)
    before, after = (json.loads(path.read_text())["supernet_budgets"]["300"] for path in (committed / "results.json", out / "results.json"))
    assert before["seeds"] == list(range(10)) and after["seeds"] == list(range(9))


def test_picks_plot_and_summary_on_hand_made_results(tmp_path):
    from das_tune.artifacts.results import BenchResults, GroundTruth, Retrained
    from das_tune.bench import plots

    truth = {f"En{i},En{j}": 0.5 + 0.01 * (i + 2 * j) for i in range(6) for j in range(i + 1, 6)}
    subsets = {k: Retrained(metric="accuracy", values={"0": v - 0.01, "1": v + 0.01}, mean=v, std=0.01,
                            additional_gmacs=-0.1, flops_saved=0.3, steps=10, seconds=1.0) for k, v in truth.items()}
    values = list(truth.values())
    gt = GroundTruth(kind="all", retrain_seeds=[0, 1], sample_seed=None, subsets=subsets, noise_std=0.01, best=max(values),
                     top10_threshold=stats.top10_threshold(values), retrains=30, retrain_seconds=30.0,
                     rankable=(max(values) - statistics.median(values)) / 0.01, rankable_goal=report.RANKABLE,
                     good_set=sorted(stats.good_set(truth, 0.01)), good_width=stats.GOOD_WIDTH)
    runs = []
    for method, picks in (("das", ["En4,En5", "En3,En5", "En0,En1"]), ("random", ["En0,En2", "En1,En2", "En3,En4"])):
        for seed, key in enumerate(picks):
            record = SearchRecord(method=method, kind="sampler", seed=seed, study_name=None, chosen=key.split(","),
                                  layer_scores={f"En{i}": float(i) for i in range(6)} if method == "das" else None,
                                  observations=9, observed=[1.0, 0.9, 0.8], scoring_batches=0, warmup_steps=6,
                                  warmup_seconds=1.0, search_steps=6, search_seconds=2.0,
                                  supernet_losses={k: -v for k, v in truth.items()})
            runs.append(report._run_result(record, subsets[key], gt))
    # das's layer scores (En5 most skippable) rank the subsets exactly as the truth does (value grows with i + 2j)
    assert all(r.kendall_tau > 0.5 for r in runs if r.method == "das") and all(r.kendall_tau is None for r in runs if r.method == "random")
    assert all(r.supernet_ranking.kendall_tau == pytest.approx(1.0) and r.supernet_ranking.n == 15 for r in runs)
    assert [r.top10 for r in runs] == [True, True, False, False, False, False]  # En4,En5 and En3,En5 are the best two of 15
    assert runs[0].percentile == 100 and runs[0].regret == 0 and runs[1].regret == pytest.approx(0.01)
    summary = report._summary([r for r in runs if r.method == "das"])
    assert summary.top10_share == pytest.approx(2 / 3) and summary.regret.median == pytest.approx(0.01)
    results = BenchResults.model_validate({
        "study": "hand", "space": "minilm_vqa", "candidates": [f"En{i}" for i in range(6)], "num_candidates": 6, "num_skip": 2,
        "num_subsets": 15, "top_percent": 10, "metric": "accuracy", "seeds": [0, 1, 2], "samplers": ["das", "random"], "methods": [],
        "reference": "das", "storage": "none", "tiny": True,
        "budget": {"warmup_epochs": 1, "search_epochs": 1, "steps_per_epoch": 6, "observe_every": 2, "round_size": 3,
                   "observation_batches": 1, "observations": 9, "retrain_epochs": 1, "retrain_seeds": [0, 1]},
        "warnings": [], "summary": {"das": summary, "random": report._summary(runs[3:])},
        "paired_tests": {"random": report._paired(runs, "das", "random")}, "ground_truth": gt, "runs": runs,
    })
    results.verdict = report.verdict(runs, gt, "das", results.paired_tests)
    assert results.verdict.rankable and results.verdict.good_counts["das"].good == 2  # En4,En5 and En3,En5: within 2 sd
    assert [(g.kind, g.met) for g in results.verdict.goals] == [("good_set", False), ("ahead_of", False)]  # 2 < 3; 2 wins of 3
    assert (results.paired_tests["random"].wins, results.paired_tests["random"].losses) == (2, 1)
    names = plots.write_plots(results, tmp_path)
    assert names == ["picks.png", "anytime.png", "metric_vs_gmacs.png"]
    assert all((tmp_path / n).read_bytes().startswith(b"\x89PNG") for n in names)
    markdown = report.markdown(results, names)
    assert "**Verdict.** Rankable" in markdown and "das, the reference method: in the good set at 2 of 3 seeds" in markdown
    block = readme_tables.verdict_block(results)
    for text in (markdown, block):
        strays = [n for n in NUMBER.findall(text) if n not in json_numbers(json.loads(results.model_dump_json()))]
        assert not strays


def test_truth_table_shows_each_subsets_mean_by_target_group():
    from types import SimpleNamespace

    from das_tune.artifacts.results import BenchResults, GroundTruth

    def retrain(value, yes_no):
        test = {"accuracy": value, "accuracy[yes/no]": yes_no, "accuracy[shape]": 1.0} if yes_no is not None else {"accuracy": value}
        return SimpleNamespace(metric="accuracy", value=value, test=test, additional_gmacs=-0.5, flops_saved=0.8, retrain_seconds=5.0)

    p = SimpleNamespace(retrain_seeds=[0, 1], retrain_steps=10)
    plateau = report.retrained_result(p, [retrain(0.90, 0.86), retrain(0.99, 0.98)])
    assert plateau.by_group == pytest.approx({"yes/no": 0.92, "shape": 1.0})
    old = report.retrained_result(p, [retrain(0.99, None), retrain(0.99, 0.99)])  # a retrain from before groups were kept
    assert old.by_group == {}
    gt = GroundTruth(kind="all", retrain_seeds=[0, 1], sample_seed=None, subsets={"En0": plateau, "En1": old}, noise_std=0.01,
                     best=0.99, top10_threshold=0.99, retrains=4, retrain_seconds=20.0)
    results = BenchResults.model_construct(ground_truth=gt, metric="accuracy")
    header, rows = report.truth_table(results)
    assert header[4:7] == ["std", "mean yes/no", "mean shape"]
    assert rows == [["En1", "0.99", "0.99", "0.99", "0", "—", "—", "-0.5"], ["En0", "0.945", "0.9", "0.99", "0.045", "0.92", "1", "-0.5"]]


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "bench").glob("*/plan.yaml")
                                          if "truth" in yaml.safe_load(p.read_text())))
def test_a_committed_bench_folder_still_takes_its_own_benchmark(folder, monkeypatch):
    """A field added to the study later (at its default) must not make a bench refuse to resume its folder."""
    held = yaml.safe_load((ROOT / "bench" / folder / "plan.yaml").read_text())
    truth = held["truth"]
    retrain = {**RetrainSpec.added_later_defaults(), **truth["retrain"]}  # a field a plan leaves out was at that default
    overrides = {"num_skip": truth["num_skip"], **{f"retrain.{k}": v for k, v in retrain.items()},
                 **{f"task.options.{k}": v for k, v in truth["task"]["options"].items()},
                 **{f"{part}.{k}": v for part in ("search", "ray") for k, v in held["search"][part].items()}}
    monkeypatch.chdir(ROOT)  # the folders were benched with a relative --out
    p = plan(BenchConfig(study=truth["study_name"].split("-")[0], overrides=overrides, ground_truth=True, samplers=(), methods=(),
                         retrain_seeds=held["bench"]["retrain_seeds"], out=Path("bench") / folder, seeds=(0,)))
    check_same_plan(p)


@pytest.mark.slow
def test_an_asha_race_picks_the_best_subset_that_trained_every_step(tmp_path):
    # 4 distinct subsets of 6 raced from the shared warm-up: 6 steps each, a report every 2, ASHA's rung at 1 report
    result = bench(tmp_path, "--space", "minilm_vqa", "--samplers", "asha", "--methods", "", "--seeds", "1", "--retrain-seeds", "1",
                   "--tiny", "--quiet", "--set", "num_skip=1", "--set", "ray.num_trials=4", "--set", "ray.steps_per_trial=6",
                   "--set", "ray.report_every=2", "--set", "ray.grace_period=1", "--out", "out", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "records" / "asha-seed0.json").read_text())
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'out' / 'bench.db'}")
    trials = optuna.load_study(study_name="easyvqa_minilm-asha-seed0", storage=storage).trials
    def skipped(trial):  # skip 1: the candidate with the largest skip key
        return max((k for k in trial.params if k.startswith("skip.")), key=trial.params.get).removeprefix("skip.")

    assert len(trials) == 4 and len({skipped(t) for t in trials}) == 4  # one round: distinct subsets
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and record["observations"] == len(complete)
    assert record["chosen"] == [skipped(min(complete, key=lambda t: t.value))]
    # every step of a complete trial, the reports' steps of one ASHA stopped
    steps = {t.number: t.user_attrs["steps_trained"] for t in trials}
    assert all(steps[t.number] == 6 for t in complete) and all(steps[t.number] in (2, 4) for t in trials if t not in complete)
    assert record["search_steps"] == sum(steps.values())
    assert record["warmup_steps"] > 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["budget"]["race"] == {"num_trials": 4, "steps_per_trial": 6, "report_every": 2, "scheduler": "asha", "grace_period": 1}
    assert "4 distinct subsets, each trained up to 6 steps" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_das_angular_starts_its_gates_from_the_angular_scores_of_the_warm_up(tmp_path):
    from das_tune.bench.runs import PRIOR_SCALE
    from das_tune.samplers.das import prior_gates

    result = bench(tmp_path, "--space", "minilm_vqa", "--samplers", "das_angular", "--methods", "angular", "--seeds", "1",
                   "--retrain-seeds", "1", "--tiny", "--quiet", "--set", "num_skip=1", "--set", "search.search_epochs=1",
                   "--set", "search.round_size=2", "--set", "search.observe_every=3", "--out", "out")
    assert result.returncode == 0, result.stderr[-3000:]
    angular = json.loads((tmp_path / "out" / "records" / "angular-seed0.json").read_text())
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'out' / 'bench.db'}")
    study_id = storage.get_study_id_from_name("easyvqa_minilm-das_angular-seed0")
    recorded = storage.get_study_system_attrs(study_id)[SAMPLER_ATTR]
    assert recorded["name"] == "das" and recorded["standardize"] is True
    assert recorded["initial_gates"] == pytest.approx(prior_gates(angular["layer_scores"], PRIOR_SCALE))
    assert len(set(recorded["initial_gates"].values())) > 1  # a prior that says something


def test_a_prior_method_takes_its_strength_after_an_at_sign():
    from das_tune.bench.runs import PRIOR_SCALE, sampler_of

    assert sampler_of("das_angular").prior_scale == PRIOR_SCALE
    assert sampler_of("das_angular@0.25") == dataclasses.replace(sampler_of("das_angular"), prior_scale=0.25)
    refused = ("das_angular@0", "das_angular@-1", "das_angular@inf", "das_angular@x", "das_std@1", "random@1")
    assert [sampler_of(m) for m in refused] == [None] * len(refused)
    p = plan(BenchConfig(study="easyvqa_minilm", samplers=("das_angular@2",), overrides={"tiny": True, "search.search_epochs": 1}))
    assert p.spec(0, "das_angular@2").resolved_study_name == "easyvqa_minilm-das_angular@2-seed0"


@pytest.mark.parametrize("method", ["das_angular", "das_angular@1"])
def test_a_prior_method_is_refused_on_a_range(method):
    from das_tune.bench.ladder import plan_ladder

    with pytest.raises(UserError, match="das_angular.*one num_skip"):
        plan_ladder(BenchConfig(study="easyvqa_minilm", samplers=(method,), overrides={"tiny": True, "num_skip": "1-2"}))
