"""``das-tune bench --num-skip 1-2``: one search of the range against DAS searching each size on its own,
in a subprocess on a tiny model, and the hypervolume on hand-made points."""

import json
import os
import subprocess

import pytest
from conftest import python

from das_tune.bench import stats

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["--space", "minilm_vqa", "--num-skip", "1-2", "--tiny", "--samplers", "das,das_per_size,random",
        "--methods", "last_k", "--seeds", "1", "--retrain-seeds", "1", "--set", "search.search_epochs=1",
        "--set", "search.round_size=2", "--set", "search.observe_every=3", "--out", "out"]


def bench(tmp_path, *args):
    return subprocess.run([*python(), "-m", "das_tune.cli", "bench", *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=900)


def test_hypervolume_on_hand_made_points():
    # metric up, cost down, from (0.5, 0): (0.9, −2) alone covers 2 × 0.4; (0.8, −3) adds 1 × 0.3
    assert stats.hypervolume_2d([(0.9, -2.0)], (0.5, 0.0)) == pytest.approx(0.8)
    assert stats.hypervolume_2d([(0.9, -2.0), (0.8, -3.0)], (0.5, 0.0)) == pytest.approx(1.1)
    # a dominated point, the reference's own cost and a metric below the reference add nothing
    assert stats.hypervolume_2d([(0.9, -2.0), (0.8, -1.0), (1.0, 0.0), (0.4, -5.0)], (0.5, 0.0)) == pytest.approx(0.8)


@pytest.mark.slow
def test_tiny_ladder_bench_against_per_size_searches(tmp_path):
    first = bench(tmp_path, *ARGS)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    assert "results: out/results.md (the tables), out/results.json (every number)" in first.stdout.splitlines()
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == [1, 2] and results["methods"] == ["das", "das_per_size", "random", "last_k"]
    runs = {r["method"]: r for r in results["runs"]}
    for run in runs.values():
        assert sorted(run["picks"]) == ["1", "2"] and [q["num_skip"] for q in run["picks_retrained"]] == [1, 2]
        assert all(len(q["skipped"]) == q["num_skip"] for q in run["picks_retrained"])
        front = [(results["full"]["mean"], results["full"]["additional_gmacs"])]
        front += [(q["value"], q["additional_gmacs"]) for q in run["picks_retrained"]]
        assert run["hypervolume"] == pytest.approx(stats.hypervolume_2d(front, (results["hypervolume_reference"], 0.0)))
    assert runs["last_k"]["picks"] == {"1": ["En5"], "2": ["En4", "En5"]}
    # DAS's picks come from one gate per layer: a ladder of nested subsets
    assert set(runs["das"]["picks"]["1"]) <= set(runs["das"]["picks"]["2"])
    # the range search trains one supernet; the per-size searches one per size, each with its own warm-up
    assert len(runs["das"]["studies"]) == 1 and len(runs["das_per_size"]["studies"]) == 2
    assert runs["das_per_size"]["steps"] == 2 * runs["das"]["steps"]
    assert results["cost_ratio"]["steps"] == pytest.approx(1.0) and results["cost_ratio"]["seeds"] == 1
    assert results["reference"] == "das" and set(results["paired_tests"]) == {"das_per_size", "random", "last_k"}
    assert set(results["paired_tests"]["random"]) == {"1", "2", "hypervolume"}
    picks = {"+".join(q["skipped"]) for r in runs.values() for q in r["picks_retrained"]}
    assert {p.name for p in (out / "retrain" / "seed0").iterdir()} == picks | {"none"}
    assert (out / "ladder.png").read_bytes().startswith(b"\x89PNG") and "| das_per_size |" in (out / "results.md").read_text()

    mtimes = {p: p.stat().st_mtime_ns for p in (out / "retrain").glob("seed*/*/metrics.json")}
    again = bench(tmp_path, *ARGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "retrain").glob("seed*/*/metrics.json")} == mtimes
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]


@pytest.mark.parametrize("args, message", [
    (["--samplers", "cmaes"], "cannot search two objectives"),
    (["--samplers", "nope"], "nope"),
])
def test_bad_ladder_input_is_one_line(tmp_path, args, message):
    result = bench(tmp_path, "--space", "minilm_vqa", "--num-skip", "1-2", "--tiny", "--quiet", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bench").exists()
