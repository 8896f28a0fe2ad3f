"""The numbers of README's main-job table and of the measurement sections in docs/ come from the committed
measurements (docs/main_job.json, docs/table_b.json, benchmarks/export_speed.json, bench/*/results.json).

Each marked section (``<!-- marker -->`` … ``<!-- /marker -->``) lives on one page, named in ``PAGES``."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import yaml

from das_tune.artifacts.results import RetrainMetrics, SubnetFile
from das_tune.spec.spaces import load_space
from das_tune.spec.study import load_study_spec

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?![\w.])")
PAGES = {  # marker -> the page that holds its section (relative to the repository root)
    "main-job": "README.md",
    "main-job-xeon": "docs/benchmarks.md",
    "export-speed": "docs/benchmarks.md",
    "table-b": "docs/benchmarks.md",
    "table-b-sublayers": "docs/benchmarks.md",
    "sublayer-setup": "docs/benchmarks.md",
    "sublayer-verdict": "docs/benchmarks.md",
    "partial-truths": "docs/benchmarks.md",
    "skip5-e24": "docs/benchmarks.md",
    "skip11": "docs/benchmarks.md",
    "supernet-ensemble": "docs/benchmarks.md",
    "supernet-balanced": "docs/benchmarks.md",
    "balanced-thirty": "docs/benchmarks.md",
    "default-retrain": "docs/benchmarks.md",
    "which-search": "README.md",
    "race-replication": "docs/benchmarks.md",
    "thirty-seeds": "docs/benchmarks.md",
    "angular-prior": "docs/benchmarks.md",
    "supernet-blind": "docs/benchmarks.md",
    "race-long": "docs/benchmarks.md",
    "race-long-again": "docs/benchmarks.md",
    "race-six": "docs/benchmarks.md",
    "pretraining": "docs/pretraining.md",  # checked by tests/test_pretrain.py
}
MARKER = re.compile(r"<!-- ([a-z0-9-]+(?:: \S+)?) -->")  # a block of one bench folder is its own marker
SUBLAYER_BLOCKS = [f"{kind}{i}" for i in range(6) for kind in "AF"]
LONG_RACES = tuple(ROOT / "bench" / f"minilm_vqa_sublayers-skip11-warm300-race240-seeds{seeds}" for seeds in ("30-39", "40-49"))


def leaves(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from leaves(value)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield float(node)


def shown_as(text: str, values: list[float], scales=(1, 100, 1e-6)) -> bool:
    """``text`` is one of ``values`` rounded to as many decimals as it shows (or as a percentage, or in millions)."""
    decimals = len(text.partition(".")[2])
    number = float(text)
    return any(round(scale * v, decimals) == number for v in values for scale in scales)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def sections(marker: str) -> list[str]:
    """The texts between ``<!-- marker -->`` and ``<!-- /marker -->`` on the marker's page."""
    return re.findall(rf"<!-- {marker} -->(.*?)<!-- /{marker} -->", (ROOT / PAGES[marker]).read_text(), re.S)


def test_each_marked_section_lives_on_one_page():
    holders: dict[str, set[str]] = {}
    for page in pages():
        for marker in MARKER.findall(page.read_text()):
            holders.setdefault(marker, set()).add(str(page.relative_to(ROOT)))
    assert {m: holders.get(m) for m in PAGES} == {m: {page} for m, page in PAGES.items()}
    assert not [m for m, held in holders.items() if len(held) > 1], f"a marker on several pages: {holders}"


def table_numbers(marker: str) -> list[str]:
    """The numbers of the value columns (all but the first) of the table between ``<!-- marker -->`` tags."""
    found = sections(marker)
    assert found, f"{PAGES[marker]} has no {marker} table"
    cells = [
        cell for section in found for line in section.splitlines() if line.startswith("|")
        for cell in line.strip("|").split("|")[1:]
    ]
    return [n for cell in cells for n in NUMBER.findall(cell.replace("×", ""))]


@pytest.mark.parametrize("marker, measurement", [("main-job", "main_job.json"), ("main-job-xeon", "main_job_xeon.json")])
def test_readme_main_job_numbers_are_the_committed_measurement(marker, measurement):
    measured = json.loads((ROOT / "docs" / measurement).read_text())
    assert measured["run"]["skipped"] == measured["search"]["skipped"]
    RetrainMetrics.model_validate(measured["run"])  # the run's metrics.json, as das-tune writes it
    SubnetFile.model_validate(measured["search"])  # and its subnet.json
    values = list(leaves(measured))
    numbers = table_numbers(marker)
    assert numbers
    strays = [n for n in numbers if not shown_as(n, values)]
    assert not strays, f"numbers in {PAGES[marker]}'s {marker} section that are not in docs/{measurement}: {strays}"
    skipped = ", ".join(measured["run"]["skipped"])
    assert any(skipped in section for section in sections(marker)), f"{PAGES[marker]}'s {marker} section does not show {skipped}"


def test_readme_export_speed_numbers_are_the_committed_measurement():
    measured = json.loads((ROOT / "benchmarks" / "export_speed.json").read_text())
    latency, size = measured["latency_ms"], measured["size_bytes"]
    values = [  # what the table shows: times, sizes, and each one's ratio to the full model
        *(t for batch in latency.values() for t in batch.values()),
        *(batch["full"] / t for batch in latency.values() for t in batch.values()),
        *(s * 1e-6 for s in size.values()), *(s / size["full"] for s in size.values()),
    ]
    numbers = table_numbers("export-speed")
    assert len(numbers) == 15
    strays = [n for n in numbers if not shown_as(n, values, scales=(1, 100))]
    assert not strays, f"numbers in {PAGES['export-speed']}'s export-speed table that are not in benchmarks/export_speed.json: {strays}"


def das_pick(measured: dict, main_job: dict) -> list[str]:
    """The subset DAS chose: the main job's, or the committed bench's search at the table's seed."""
    if measured.get("das_seed") is None:  # the whole-layer table predates the field
        return main_job["run"]["skipped"]
    record = ROOT / "bench" / measured["bench"] / "records" / f"das-seed{measured['das_seed']}.json"
    return json.loads(record.read_text())["chosen"]


@pytest.mark.parametrize("marker, table", [("table-b", "table_b.json"), ("table-b-sublayers", "table_b_sublayers.json")])
def test_readme_table_b_is_the_committed_table(marker, table):
    measured = json.loads((ROOT / "docs" / table).read_text())
    main_job = json.loads((ROOT / "docs" / measured.get("main_job", "main_job.json")).read_text())  # with the table's budget
    rows = measured["rows"]
    assert rows[0]["row"] == "full model" and [r["value"] for r in main_job["full_model"]] == rows[0]["values"]
    assert [r["skipped"] for r in rows if r["row"] == "DAS's pick"] == [das_pick(measured, main_job)]
    assert all(len(r["skipped"]) == measured["num_skip"] for r in rows[1:])
    numbers = table_numbers(marker)
    assert len(numbers) >= 5 * len(rows)
    strays = [n for n in numbers if not shown_as(n, list(leaves(measured)), scales=(1, 100))]
    assert not strays, f"numbers in {PAGES[marker]}'s {marker} table that are not in docs/{table}: {strays}"


def test_readme_sublayer_verdict_numbers_are_the_committed_bench():
    results = json.loads((ROOT / "bench" / "minilm_vqa_sublayers-skip4" / "results.json").read_text())
    values = list(leaves(results))
    values += [abs(v) for v in values] + [len(results["seeds"])]
    goals = [0.8, 0.05]  # the issue's targets: top 10 % at 80 % of the seeds, ahead of random at p < 0.05
    found = sections("sublayer-verdict")
    assert len(found) == 1, f"{PAGES['sublayer-verdict']} has no single sublayer-verdict section"
    text = found[0]
    assert f"({len(results['seeds'])} seeds)" in text
    strays = [n for n in NUMBER.findall(text.replace("−", "-")) if not shown_as(n, values + goals)]
    assert not strays, f"numbers in {PAGES['sublayer-verdict']}'s sublayer verdict that are not in its results.json: {strays}"


def test_readme_sublayer_setup_numbers_are_the_committed_bench():
    results = json.loads((ROOT / "bench" / "minilm_vqa_sublayers-skip4" / "results.json").read_text())
    found = sections("sublayer-setup")
    assert len(found) == 1, f"{PAGES['sublayer-setup']} has no single sublayer-setup section"
    text = found[0]
    heading = f"(skip {results['num_skip']} of {results['num_candidates']} blocks): {len(results['seeds'])} seeds, "
    assert heading + f"a reference sample of {len(results['ground_truth']['subsets'])} subsets" in text
    values = [*leaves(results), results["budget"]["observations"] / results["num_subsets"]]
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in {PAGES['sublayer-setup']}'s sublayer setup that are not in its results.json: {strays}"


def test_partial_ground_truths_are_quoted_from_their_committed_retrains():
    """Each line of the section names a bench folder, its count of committed retrains out of all, and their range."""
    found = sections("partial-truths")
    assert len(found) == 1, f"{PAGES['partial-truths']} has no single partial-truths section"
    lines = [line for line in found[0].split("\n- ") if "`bench/" in line]
    assert lines
    for line in lines:
        folder = ROOT / re.search(r"`(bench/[^`]+)`", line).group(1)
        plan = yaml.safe_load((folder / "plan.yaml").read_text())["bench"]
        values = [json.loads(p.read_text())["value"] for p in folder.glob("retrain/seed*/*/metrics.json")]
        total = len(plan["reference"]) * plan["retrain_seeds"]
        assert f"{len(values)} of {total} retrains committed" in line, (folder, len(values), total)
        assert f"{min(values):.3f}–{max(values):.3f}" in line, (folder, min(values), max(values))


def test_skip5_with_twice_the_retrain_budget_is_quoted_from_its_committed_results():
    """Its numbers are those of its results.json, of the 12-epoch skip 5 it is compared with, of its plan
    (patience) and of the retrain whose collapse it explains (the epochs it stopped at)."""
    bench = ROOT / "bench"
    e24, e12 = (json.loads((bench / b / "results.json").read_text()) for b in ("minilm_vqa-skip5-e24", "minilm_vqa-skip5"))
    collapsed = json.loads((bench / "minilm_vqa-skip5-e24/retrain/seed2/En1+En2+En3+En4+En5/metrics.json").read_text())
    plan = yaml.safe_load((bench / "minilm_vqa-skip5-e24/plan.yaml").read_text())
    values = [*leaves(e24), *leaves(e12), *leaves(plan["truth"]["retrain"]), collapsed["best_epoch"], collapsed["epochs_run"]]
    (text,) = sections("skip5-e24")
    gt = e24["ground_truth"]
    assert f"from 4 to {gt['collapses']} of {gt['retrains']}" in text and e12["ground_truth"]["collapses"] == 4
    assert f"stopped it at epoch {collapsed['epochs_run']}" in text and f"({collapsed['value']:.3f})" in text
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the skip5-e24 section that are not in its committed results: {strays}"


@pytest.mark.parametrize("marker", ["skip11", "which-search"])
def test_the_verdict_prose_is_quoted_from_the_skip11_results(marker):
    """The numbers of the skip-11 section and of README's verdict paragraph are those of the two skip-11 benches
    (the usual search budget, the 300-step warm-up with the race, and that warm-up with fewer observations) or of
    their plans."""
    bench = ROOT / "bench"
    folders = ("minilm_vqa_sublayers-skip11", "minilm_vqa_sublayers-skip11-warm300", "minilm_vqa_sublayers-skip11-warm300-obs4")
    if marker == "which-search":  # README's paragraph also quotes the race's replication on fresh seeds
        folders += ("minilm_vqa_sublayers-skip11-warm300-race-seeds10-19", "minilm_vqa_sublayers-skip11-warm300-obs4-seeds30-59",
                    "minilm_vqa_sublayers-skip11-warm300-obs4-angular-seeds30-59", "minilm_vqa_sublayers-skip11-balanced-seeds30-59")
    results = [json.loads((bench / f / "results.json").read_text()) for f in folders]
    plans = [yaml.safe_load((bench / f / "plan.yaml").read_text()) for f in folders]
    values = [v for doc in [*results, *plans] for v in leaves(doc)]
    values += [r["budget"]["steps_per_epoch"] * r["budget"]["warmup_epochs"] for r in results]
    if marker == "which-search":  # and the long races, pooled, and when the subsets' own training tells them apart
        good, ahead = pooled_long_races()
        values += [*leaves(long_race_results()), *leaves(good), *leaves(ahead), 240, 320, 2, 20]
    (text,) = sections(marker)
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the {marker} section that are not in the skip-11 results: {strays}"
    skip11 = results[0]
    if marker == "skip11":
        gt = skip11["ground_truth"]
        assert f"{gt['collapses']} of {gt['retrains']}" in text
        good = [s["mean"] for key, s in gt["subsets"].items() if key in gt["good_set"]]
        rest = [s["mean"] for key, s in gt["subsets"].items() if key not in gt["good_set"]]
        for means in (good, rest):  # the attention blocks (the good set) and the feed-forward ones
            assert f"{min(means):.3f}–{max(means):.3f}" in text, (min(means), max(means))
    for bench_results in (r for r in results if r["verdict"]):  # DAS's picks in the good set, at each search budget
        das = bench_results["verdict"]["good_counts"]["das"]
        assert f"{das['good']} of {das['seeds']} seeds" in text
    if marker == "which-search":
        nets = results[-3]["verdict"]["supernet_picks"]  # the thirty-seeds bench
        assert f"own supernet has its lowest loss in the good set at {nets['good']} of {nets['seeds']} fresh" in " ".join(text.split())
        prior = results[-2]["verdict"]["good_counts"]["das_angular"]
        balanced = results[-1]["supernet_budgets"]["300"]["separation_auc"]["median"]
        assert f"not on 30 fresh seeds (median AUC {balanced:.4f}" in " ".join(text.split())
        assert f"`das_angular`, in the good set at {prior['good']} of {prior['seeds']} fresh seeds" in " ".join(text.split())
        assert all(goal["met"] for race in long_race_results() for goal in race["verdict"]["goals"])
        assert f"in the good set at {good['asha']} of 20, ahead of random search at p = {ahead['p_value']:.3g}" in " ".join(text.split())


def paired_from_runs(results: dict, method: str, other: str) -> dict:
    """The bench's paired test of ``method`` − ``other`` recomputed from a results.json's runs (seed by seed)."""
    from das_tune.bench.stats import paired_test

    values = {m: {r["seed"]: r["value"] for r in results["runs"] if r["method"] == m} for m in (method, other)}
    seeds = sorted(values[method])
    return paired_test([values[method][s] for s in seeds], [values[other][s] for s in seeds])


def test_the_race_replication_is_quoted_from_its_benches():
    """Its numbers are those of the race's two benches (seeds 0-9 and the pre-registered 10-19) or of paired tests
    recomputed from their runs, and its answer is the one the replication gives."""
    bench = ROOT / "bench"
    folders = (bench / "minilm_vqa_sublayers-skip11-warm300", bench / "minilm_vqa_sublayers-skip11-warm300-race-seeds10-19")
    first, again = (json.loads((f / "results.json").read_text()) for f in folders)
    found, replicated = paired_from_runs(first, "asha", "random"), paired_from_runs(again, "asha", "random")
    das = paired_from_runs(again, "das", "random")
    assert found["p_value"] < 0.05 and found["mean_diff"] > 0 and replicated["p_value"] >= 0.05
    assert again["reference"] == "asha" and again["paired_tests"]["random"]["p_value"] == replicated["p_value"]
    values = [v for doc in (first, again, found, replicated, das) for v in leaves(doc)]
    values += [v for f in folders for v in leaves(yaml.safe_load((f / "plan.yaml").read_text()))]
    (text,) = sections("race-replication")
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the race-replication section that are not in its benches: {strays}"
    assert f"won at {found['wins']} seeds and lost at {found['losses']}" in text and "It does not replicate" in text
    counts = again["verdict"]["good_counts"]
    assert all(counts[m]["good"] == 7 for m in ("asha", "das", "random")) and "at 7 of 10 seeds, as are DAS and random" in text
    kept_feed_forward = sum(r["method"] == "asha" and all(f"A{i}" in r["chosen"] for i in range(6)) for r in again["runs"])
    assert f"At {['no', 'one', 'two', 'three', 'four'][kept_feed_forward]} of the ten seeds the race kept a feed-forward" in text


def test_the_thirty_seeds_section_is_quoted_from_its_benches():
    """Its range of earlier das − random differences is that of the six sublayer benches before it (all positive, none
    significant), and its numbers and answer are those of the 30-seed bench."""
    bench = ROOT / "bench"
    earlier = [json.loads((bench / f / "results.json").read_text()) for f in (
        "minilm_vqa_sublayers-skip11", "minilm_vqa_sublayers-skip11-warm300", "minilm_vqa_sublayers-skip11-warm300-obs4",
        "minilm_vqa_sublayers-skip11-warm300-obs4-seeds10-19", "minilm_vqa_sublayers-skip11-warm300-obs4-balanced-seeds20-29",
        "minilm_vqa_sublayers-skip11-warm300-race-seeds10-19")]
    tests = [paired_from_runs(results, "das", "random") for results in earlier]
    assert all(t["mean_diff"] > 0 and t["p_value"] >= 0.05 for t in tests)
    folder = bench / "minilm_vqa_sublayers-skip11-warm300-obs4-seeds30-59"
    thirty = json.loads((folder / "results.json").read_text())
    (text,) = sections("thirty-seeds")
    low, high = min(t["mean_diff"] for t in tests), max(t["mean_diff"] for t in tests)
    assert f"six sublayer benches above is positive (Δ {low:.2g} to {high:.3g})" in text
    values = [*leaves(thirty), *leaves(yaml.safe_load((folder / "plan.yaml").read_text()))]
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values + [low, high])]
    assert not strays, f"numbers in the thirty-seeds section that are not in its benches: {strays}"
    counts, test = thirty["verdict"]["good_counts"], thirty["paired_tests"]["random"]
    assert thirty["seeds"] == list(range(30, 60)) and "Monte Carlo" in test["test"]
    assert f"DAS is in the good set at {counts['das']['good']} of 30 seeds and random search at {counts['random']['good']} of 30" in text
    assert test["mean_diff"] < 0 and test["p_value"] >= 0.05 and "No: DAS is in the good set" in text
    nets = thirty["verdict"]["supernet_picks"]
    assert f"has its lowest loss in the good set at {nets['good']} of {nets['seeds']} seeds" in " ".join(text.split())
    assert nets["good"] < 24 and "fewer than the goal's 24" in text
    auc = thirty["summary"]["das"]["supernet_auc"]  # the supernet's ranking over the 30 seeds: median, lower quartile
    assert f"median AUC of {auc['median']:.4f}, and below {auc['q25']:.4f} at a quarter of them" in text
    good = {(r["method"], r["seed"]): r["good"] for r in thirty["runs"]}
    seed_auc = {r["seed"]: r["supernet_ranking"]["separation_auc"] for r in thirty["runs"] if r["method"] == "das"}
    high, low = [s for s, a in seed_auc.items() if a >= 0.8], [s for s, a in seed_auc.items() if a < 0.5]
    das_high, rnd_high, das_low, rnd_low = (sum(good[m, s] for s in seeds) for seeds in (high, low) for m in ("das", "random"))
    flat = " ".join(text.split())
    assert (f"at the {len(high)} seeds whose supernet AUC is at least 0.8, DAS is in the good set at {das_high} and random "
            f"search at {rnd_high}; at the {len(low)} below 0.5, DAS at {das_low} and random search at {rnd_low}") in flat


def test_the_angular_prior_section_is_quoted_from_its_benches():
    """The prior's default strength is the one its stated rule picks on the tuning seeds, and the section's counts,
    paired test and kept blocks are those of the pre-registered bench on seeds 30-59, whose das and random picks are
    the thirty-seeds bench's."""
    from das_tune.bench.runs import PRIOR_SCALE

    bench = ROOT / "bench"
    tuning, test, thirty = (json.loads((bench / f / "results.json").read_text()) for f in (
        "minilm_vqa_sublayers-skip11-warm300-obs4-prior-scales-seeds0-19", "minilm_vqa_sublayers-skip11-warm300-obs4-angular-seeds30-59",
        "minilm_vqa_sublayers-skip11-warm300-obs4-seeds30-59"))
    tuned = {m: c["good"] for m, c in tuning["verdict"]["good_counts"].items()}
    scales = {float(m.partition("@")[2]): good for m, good in tuned.items() if m.startswith("das_angular@")}
    assert tuning["seeds"] == list(range(20)) and sorted(scales) == [0.25, 0.5, 1, 2]
    assert min(scales, key=lambda k: (-scales[k], k)) == PRIOR_SCALE  # the most in the good set, ties to the smaller
    (text,) = sections("angular-prior")
    flat = " ".join(text.split())
    assert (f"das_angular@0.25 is in the good set at {scales[0.25]}, @0.5 at {scales[0.5]}, @1 at {scales[1]}, @2 at "
            f"{scales[2]} (DAS with standardised advantages alone at {tuned['das_std']}, angular alone at {tuned['angular']})") in flat
    counts, versus = test["verdict"]["good_counts"], test["paired_tests"]["random"]
    assert test["seeds"] == list(range(30, 60)) and test["reference"] == "das_angular"
    assert f"in the good set at {counts['das_angular']['good']} of 30 seeds, random search at {counts['random']['good']} of 30" in flat
    assert f"das_angular − random Δ {versus['mean_diff']:.4g}, p = {versus['p_value']:.4g}" in flat and versus["p_value"] >= 0.05
    kept = [next(c for c in test["candidates"] if c not in r["chosen"]) for r in test["runs"] if r["method"] == "angular"]
    assert f"angular alone keeps F5 at {kept.count('F5')} of 30 seeds (in the good set at {counts['angular']['good']} of 30)" in flat
    chosen = [next(c for c in test["candidates"] if c not in r["chosen"]) for r in test["runs"] if r["method"] == "das_angular"]
    assert set(chosen) == {"A5", "F5"} and f"choose A5, the best subset, at {chosen.count('A5')} seeds" in flat
    def picks(results):
        return {(r["method"], r["seed"]): r["chosen"] for r in results["runs"] if r["method"] in ("das", "random")}

    assert len(picks(test)) == 60 and picks(test) == picks(thirty)
    values = [*leaves(tuning), *leaves(test), *scales, kept.count("F5"), chosen.count("A5"), 0, 19, 30, 59]
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the angular-prior section that are not in its benches: {strays}"


def test_the_supernet_ensemble_section_is_quoted_from_its_benches():
    """Its numbers are those of the two supernets benches (or their plans), its answers the ones they give (the
    pairs' median sparse τ and AUC against one supernet of the same steps), and its count of the whole-layer 600-step
    supernets' lowest-loss subset is that of their committed losses."""
    bench = ROOT / "bench"
    sub, whole = (bench / f for f in ("minilm_vqa_sublayers-skip11-supernets", "minilm_vqa-skip5-e24-min12-supernets"))
    results = {folder: json.loads((folder / "results.json").read_text()) for folder in (sub, whole)}
    values = [v for folder, r in results.items() for v in (*leaves(r), *leaves(yaml.safe_load((folder / "plan.yaml").read_text())))]
    (text,) = sections("supernet-ensemble")
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the supernet-ensemble section that are not in its benches: {strays}"

    def pair_beats_longer(folder: Path) -> bool:
        budgets = results[folder]["supernet_budgets"]
        pair, longer = budgets["2x300"], budgets["600"]
        assert pair["supernets"] == 2 and pair["steps"] * 2 == longer["steps"] and pair["retrains"] == longer["retrains"]
        return all(pair[m]["median"] > longer[m]["median"] for m in ("sparse_kendall_tau", "separation_auc"))

    assert text.strip().startswith("It does not.") and not pair_beats_longer(sub)
    assert "On whole layers the pair does rank better than one 600-step supernet" in text and pair_beats_longer(whole)
    assert "the five pairs" in text and results[sub]["supernet_budgets"]["2x300"]["separation_auc"]["n"] == 5
    lowest = [min(losses, key=losses.get) for losses in (json.loads(f.read_text())["losses"] for f in sorted(
        (whole / "runs").glob("*-uniform600-seed*/losses.json")))]
    weakest = min(results[whole]["ground_truth"]["subsets"].items(), key=lambda item: item[1]["mean"])[0]
    assert weakest == "En1,En2,En3,En4,En5" and "keeping En0, the weakest subset" in text  # every layer but En0 skipped
    assert f"at {lowest.count(weakest)} of {len(lowest)} seeds" in text


def committed_rankings(folder: Path, steps: int = 300) -> list:
    """The rankings of a bench's committed supernets of ``steps`` (runs/*<steps>-seed<k>/losses.json, by seed),
    recomputed from their losses against the bench's ground truth."""
    from das_tune.artifacts.results import GroundTruth
    from das_tune.bench.report import supernet_ranking

    truth = GroundTruth.model_validate(json.loads((folder / "results.json").read_text())["ground_truth"])
    files = sorted((folder / "runs").glob(f"*[a-z]{steps}-seed*/losses.json"), key=lambda f: int(f.parent.name.rpartition("seed")[2]))
    return [supernet_ranking(json.loads(f.read_text())["losses"], truth) for f in files]


def test_the_balanced_thirty_seeds_section_is_quoted_from_its_benches():
    """Its medians are the 30-seed balanced bench's, its counts of seeds those of the per-seed rankings recomputed from
    the committed losses of both balanced benches, and its answer the one the goal gives."""

    bench = ROOT / "bench"
    fresh, first = (bench / f for f in ("minilm_vqa_sublayers-skip11-balanced-seeds30-59", "minilm_vqa_sublayers-skip11-balanced"))

    budget = json.loads((fresh / "results.json").read_text())["supernet_budgets"]["300"]
    assert budget["seeds"] == list(range(30, 60))
    tau, auc = budget["sparse_kendall_tau"], budget["separation_auc"]
    assert tau["median"] < 0.5 or auc["median"] < 0.8  # the goal missed, as the section says
    (text,) = sections("balanced-thirty")
    flat = " ".join(text.split())
    assert (f"median sparse τ {tau['median']:.4f} and median AUC {auc['median']:.4f} (lower quartile {auc['q25']:.4f})") in flat
    counts = []
    for folder, seeds in ((fresh, 30), (first, 10)):
        ranked = committed_rankings(folder)
        assert len(ranked) == seeds
        counts.append([sum(r.separation_auc >= 0.8 for r in ranked), sum(r.separation_auc < 0.5 for r in ranked),
                       sum(r.top_in_good for r in ranked)])
    (high, low, top), (high0, low0, top0) = counts
    assert (f"0.8 or more at {high} of the 30 seeds ({high0} of 10 at seeds 0–9) and below 0.5 at {low} ({low0} of 10)") in flat
    assert f"good set at {top} of 30 seeds ({top0} of 10)" in flat and "It does not replicate" in text
    values = [*leaves(budget), *(c for row in counts for c in row), 0.5, 0.8, 0, 9, 10, 30, 59]
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the balanced-thirty section that are not in its benches: {strays}"


def test_the_balanced_warm_up_section_is_quoted_from_its_benches():
    """Its numbers are those of the balanced and the uniform 300-step supernets (their results, or the paired test and
    per-seed AUCs recomputed from their committed losses), and its answers are the ones the medians give."""
    from das_tune.bench.stats import paired_test

    bench = ROOT / "bench"
    pairs = {space: (bench / f"{space}-balanced", bench / f"{space}-supernets")
             for space in ("minilm_vqa_sublayers-skip11", "minilm_vqa-skip5-e24-min12")}
    results = {folder: json.loads((folder / "results.json").read_text()) for pair in pairs.values() for folder in pair}
    values = [v for r in results.values() for v in leaves(r)]

    def aucs(folder: Path) -> list[float]:
        return [r.separation_auc for r in committed_rankings(folder)]

    sub_balanced, sub_uniform = (aucs(f) for f in pairs["minilm_vqa_sublayers-skip11"])
    test = paired_test(sub_balanced, sub_uniform)
    values += [test["p_value"], test["wins"], test["losses"], *sub_balanced, 0.5, 0.8]  # the goal: a half, 0.8
    (text,) = sections("supernet-balanced")
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the supernet-balanced section that are not in its benches: {strays}"
    assert f"higher AUC at {test['wins']} of the 10 seeds and the lower at {test['losses']}" in text
    assert "two of\nits seeds still rank worse than a coin" in text and sum(a < 0.5 for a in sub_balanced) == 2

    def better(space: str) -> bool:
        balanced, uniform = (results[f]["supernet_budgets"]["300"] for f in pairs[space])
        return all(balanced[m]["median"] > uniform[m]["median"] for m in ("sparse_kendall_tau", "separation_auc"))

    assert better("minilm_vqa_sublayers-skip11") and "On the sublayers, by the medians it was asked about, yes" in text
    assert not better("minilm_vqa-skip5-e24-min12") and "On whole layers, no" in text


def best_so_far_gap(curves: dict[str, list[float]], good: set[str], epoch: int) -> float:
    """How far the good set's worst best-val-so-far is above the other subsets' best, after ``epoch`` epochs (a
    retrain that stopped earlier keeps its best)."""
    best = {subset: max(curve[:epoch]) for subset, curve in curves.items()}
    return min(v for s, v in best.items() if s in good) - max(v for s, v in best.items() if s not in good)


def first_epoch_apart(curves: dict[str, list[float]], good: set[str], margin: float) -> int | None:
    """The first epoch from which the good set stays more than ``margin`` above every other subset (None: never)."""
    epochs = max(map(len, curves.values()))
    return next((e for e in range(1, epochs + 1) if all(best_so_far_gap(curves, good, k) > margin for k in range(e, epochs + 1))), None)


def test_first_epoch_apart_on_hand_made_curves():
    curves = {"a": [0.5, 0.8, 0.95], "b": [0.6, 0.8], "c": [0.4, 0.79, 0.99]}
    assert first_epoch_apart(curves, {"a", "c"}, 0.0) == 3  # epoch 2: c's 0.79 is below b's 0.8
    assert best_so_far_gap(curves, {"a"}, 3) == pytest.approx(-0.04) and first_epoch_apart(curves, {"a"}, 0.0) is None  # c passes a
    assert first_epoch_apart({"a": [0.5, 0.75, 0.875], "b": [0.5, 0.625]}, {"a"}, 0.125) == 3  # 0.125 above at epoch 2 is not more
    assert first_epoch_apart({"a": [0.5, 0.75, 0.75], "b": [0.5, 0.5, 0.875]}, {"a"}, 0.0) is None  # apart at epoch 2 only


def test_the_supernet_blind_section_is_quoted_from_its_measurements():
    """The whole-val pick count and the yes/no figures are the 30 fresh supernets' scores; the epochs are those at which
    the skip-11 retrains' val curves come apart, recomputed from the committed curves."""
    bench = ROOT / "bench"
    truth = json.loads((bench / "minilm_vqa_sublayers-skip11" / "results.json").read_text())["ground_truth"]
    good = set(truth["good_set"])
    blocks = [c for c in load_space("minilm_vqa_sublayers").candidates]
    kept = {subset: next(b for b in blocks if b not in subset.split(",")) for subset in truth["subsets"]}
    assert {s for s, block in kept.items() if block.startswith("A")} == good  # "keeps attention" is the good set

    def lowest_loss_in_good(folder: str) -> tuple[int, int]:
        scores = json.loads((bench / folder / "supernet_val_scores.json").read_text())
        return sum(min(row, key=lambda s: row[s]["loss"]) in good for row in scores.values()), len(scores)

    tuning = [lowest_loss_in_good(f"minilm_vqa_sublayers-skip11-warm300-obs4{tail}") for tail in ("", "-seeds10-19")]
    tuned, tuning_seeds = sum(hits for hits, _ in tuning), sum(n for _, n in tuning)
    scores = json.loads((bench / "minilm_vqa_sublayers-skip11-warm300-obs4-seeds30-59" / "supernet_val_scores.json").read_text())
    assert sorted(map(int, scores)) == list(range(30, 60))
    by_loss = sum(min(row, key=lambda s: row[s]["loss"]) in good for row in scores.values())
    by_accuracy = sum(max(row, key=lambda s: (row[s]["accuracy"], -row[s]["loss"])) in good for row in scores.values())
    yes_no = [v["accuracy[yes/no]"] for row in scores.values() for v in row.values()]
    feed_forward_plateau = json.loads((bench / "minilm_vqa_sublayers-skip11" / "retrain" / "seed0" / "+".join(
        b for b in blocks if b != "F5") / "metrics.json").read_text())["val"]["accuracy[yes/no]"]
    on_plateau = sum(v == feed_forward_plateau for v in yes_no)
    no_better = sum(max(row[s]["accuracy[yes/no]"] for s in good) <= max(row[s]["accuracy[yes/no]"] for s in row if s not in good)
                    for row in scores.values())

    reruns = {r["subset"].replace("+", ","): r for r in (json.loads(f.read_text())
                                                      for f in (ROOT / "benchmarks" / "skip11_curves" / "e24min12").glob("*-seed0.json"))}
    curves = {subset: r["val_curve"] for subset, r in reruns.items()}
    assert set(curves) == set(truth["subsets"])
    width = 2 * truth["noise_std"]
    touching, apart = first_epoch_apart(curves, good, 0.0), first_epoch_apart(curves, good, width)
    at_four = [c[3] for c in curves.values()]
    others_best = max(max(c) for s, c in curves.items() if s not in good)
    others_best_epoch = next(c.index(others_best) + 1 for s, c in curves.items() if s not in good and others_best in c)
    budget = next(iter(reruns.values()))["retrain"]
    assert all(r["retrain"] == budget for r in reruns.values())
    steps = budget["max_steps_per_epoch"]
    one_retrain = steps * budget["epochs"]  # the bench's "× one retrain": its whole epoch budget
    committed = [truth["subsets"][s]["values"]["0"] for s in curves]
    rerun = {subset: r["value"] for subset, r in reruns.items()}
    equal = sum(rerun[s] == truth["subsets"][s]["values"]["0"] for s in curves)
    furthest = max(abs(rerun[s] - truth["subsets"][s]["values"]["0"]) for s in curves)

    (text,) = sections("supernet-blind")
    flat = " ".join(text.split())
    assert f"good set at {by_loss} of 30 fresh seeds (its highest accuracy: {by_accuracy} of 30)" in flat
    assert f"tuning seeds 0–19 that rule had picked from the good set at {tuned} of {tuning_seeds} seeds" in flat
    assert f"ends on val yes/no accuracy {feed_forward_plateau:.4f}" in flat and f"more than {max(yes_no):.4f}" in flat
    assert f"{on_plateau} of their {len(yes_no)} scores are exactly {feed_forward_plateau:.4f}" in flat
    assert f"at {no_better} of 30 seeds the good set's best yes/no score is no higher" in flat
    assert f"val accuracy {min(at_four):.4f}–{max(at_four):.4f}" in flat
    assert f"From epoch {touching} every subset that keeps attention is above" in flat
    assert f"— by {best_so_far_gap(curves, good, touching):.3f} (one question)" in flat  # 1 of 512 val questions
    assert f"from epoch {apart} ({apart * steps} steps) by more than the good set's width ({width:.4g})" in flat
    assert f"reaches {others_best:.4f} at epoch {others_best_epoch}" in flat
    assert f"each of the twelve subsets {apart} epochs is {len(curves) * apart * steps // one_retrain} retrains' steps" in flat
    assert f"after {touching * steps}–{apart * steps} steps" in flat
    assert f"equal test accuracy at {equal} of 12, at most {furthest:.3f} apart" in flat
    values = [by_loss, by_accuracy, max(yes_no), feed_forward_plateau, on_plateau, len(yes_no), no_better, *at_four,
              touching, apart,
              apart * steps, width, others_best, others_best_epoch, len(curves) * apart * steps // one_retrain, touching * steps,
              equal, furthest,
              best_so_far_gap(curves, good, touching), *committed, tuned, tuning_seeds,
              0.99, 0.85, 300, 25, 512, 30, 59, 0, 19, 12, 1, 4, 11, 24, 8]
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the supernet-blind section that are not in its measurements: {strays}"


def check_race_section(marker: str, folder: Path, seeds: range, extra: list[float]) -> tuple[dict, str]:
    """A race section's counts, paired tests and racing steps are its pre-registered bench's, and its answer is the
    verdict's; returns the bench's results and the section's text on one line."""
    results = json.loads((folder / "results.json").read_text())
    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    verdict, tests = results["verdict"], results["paired_tests"]
    assert results["reference"] == "asha" and results["seeds"] == list(seeds)
    assert plan["search"]["ray"]["steps_per_trial"] == 240 and plan["search"]["search"]["observation_batches"] == 8
    (text,) = sections(marker)
    flat = " ".join(text.split())
    counts = verdict["good_counts"]
    assert all(goal["met"] for goal in verdict["goals"]) == ("It meets every goal of the verdict" in text)
    assert f"good set at {counts['asha']['good']} of {counts['asha']['seeds']} seeds (random search {counts['random']['good']}, DAS " \
           f"{counts['das']['good']}, Block Influence {counts['block_influence']['good']}, last-k {counts['last_k']['good']})" in flat
    random = tests["random"]
    assert f"({random['wins']} wins, {random['losses']} losses, Δ {random['mean_diff']:.4g}, p = {random['p_value']:.4g})" in flat
    for other, name in (("last_k", "last-k"), ("block_influence", "Block Influence")):
        assert f"{name} (Δ {tests[other]['mean_diff']:.4g}, p = {tests[other]['p_value']:.4g})" in flat
    races = [r for r in results["runs"] if r["method"] == "asha"]
    steps = sorted(r["search_steps"] for r in races)
    median = (steps[4] + steps[5]) // 2
    assert f"{steps[0]}–{steps[-1]} training steps of racing after the warm-up (median {median}" in flat
    assert ("Every pick keeps an attention block" in text) == all(not all(f"A{i}" in r["chosen"] for i in range(6)) for r in races)
    others = {r["search_steps"] for r in results["runs"] if r["kind"] == "sampler" and r["method"] != "asha"}
    assert others == {30} and "DAS and random search take 30" in flat
    values = [v for doc in (results, plan) for v in leaves(doc)] + [median, *extra]
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the {marker} section that are not in its bench: {strays}"
    return results, flat


def test_the_long_race_section_is_quoted_from_its_bench():
    check_race_section("race-long", LONG_RACES[0], range(30, 40), [2, 3, 120, 240, 320, 10])


@cache
def long_race_results() -> tuple[dict, ...]:
    """The results.json of both pre-registered long races (seeds 30-39, then 40-49), each read once."""
    return tuple(json.loads((folder / "results.json").read_text()) for folder in LONG_RACES)


def pooled_long_races() -> tuple[dict, dict]:
    """Both pre-registered long races as one bench of twenty seeds: the race's good-set counts per method and its
    paired test against random search, recomputed from their runs."""
    runs = [r for results in long_race_results() for r in results["runs"]]
    good = {m: sum(r["good"] for r in runs if r["method"] == m) for m in ("asha", "random", "das", "block_influence", "last_k")}
    return good, paired_from_runs({"runs": runs}, "asha", "random")


def test_the_long_race_again_is_quoted_from_its_bench_and_both_pooled():
    """The replication's numbers are its own bench's, and the twenty seeds' are recomputed from both runs."""
    good, random = pooled_long_races()
    _, flat = check_race_section("race-long-again", LONG_RACES[1], range(40, 50), [*leaves(good), *leaves(random), 20])
    assert f"in the good set at {good['asha']} of 20 (random search {good['random']}, DAS {good['das']}, Block Influence " \
           f"{good['block_influence']})" in flat
    assert f"at {random['wins']} wins, {random['losses']} losses and {random['ties']} ties (Δ {random['mean_diff']:.4g}, " \
           f"p = {random['p_value']:.3g})" in flat


def test_the_race_of_six_is_quoted_from_its_bench():
    """Its numbers are its pre-registered bench's; the missed seed's story is its record's and its runs', and the
    twelve-subset races' kept blocks are counted from their runs."""
    folder = ROOT / "bench" / "minilm_vqa_sublayers-skip11-warm300-race240x6-seeds50-59"
    assert yaml.safe_load((folder / "plan.yaml").read_text())["search"]["ray"]["num_trials"] == 6
    missed = json.loads((folder / "records" / "asha-seed57.json").read_text())
    kept = Counter(next(b for b in SUBLAYER_BLOCKS if b not in r["chosen"])
                   for results in long_race_results() for r in results["runs"] if r["method"] == "asha")
    uncut = ROOT / "benchmarks" / "race_six_uncut"  # one seed: kept beside the scripts, not as a bench of its own
    rerun = json.loads((uncut / "records" / "asha-seed57.json").read_text())
    (rerun_pick,) = [r for r in json.loads((uncut / "results.json").read_text())["runs"] if r["method"] == "asha"]
    assert yaml.safe_load((uncut / "plan.yaml").read_text())["search"]["ray"]["grace_period"] == 6
    results, flat = check_race_section("race-six", folder, range(50, 60),
                                       [*leaves(missed), *leaves(rerun), *kept.values(), 924, 120, 240, 20, 6, 2])
    assert rerun_pick["seed"] == 57 and [b for b in SUBLAYER_BLOCKS if b not in rerun_pick["chosen"]] == ["A0"]
    assert f"between {min(rerun['observed']):.4f} and {max(rerun['observed']):.4f} and A0 won (retrained {rerun_pick['value']:.3f})" in flat
    (pick,) = [r for r in results["runs"] if r["method"] == "asha" and not r["good"]]
    assert pick["seed"] == 57 and [b for b in SUBLAYER_BLOCKS if b not in pick["chosen"]] == ["F2"]
    assert f"keep-F2's {min(missed['observed']):.4f} — the pick, which retrains to {pick['value']:.3f}" in flat
    assert "A0" not in kept and "A1" not in kept
    assert "(" + ", ".join(f"{b} {n}" for b, n in kept.most_common()) + ")" in flat


def default_retrains() -> tuple[list[dict], list[dict]]:
    """Every committed retrain made with the easy-VQA studies' default retrain: the ground truths of the
    benches (a folder linked to another's retrains counted once) and the collapse benchmark's variants with
    that budget, each with its retrains' files."""
    default = load_study_spec("easyvqa_minilm").retrain.recorded()
    truths: dict[Path, dict] = {}
    for plan_path in (ROOT / "bench").glob("*/plan.yaml"):
        plan = yaml.safe_load(plan_path.read_text())
        if plan.get("truth") and plan["truth"]["retrain"] == default:
            results = json.loads((plan_path.parent / "results.json").read_text())
            truths[(plan_path.parent / "retrain").resolve()] = {"plan": plan, "ground_truth": results["ground_truth"]}
    collapse = ROOT / "benchmarks" / "retrain_collapse"
    variants = [{**v, "files": [json.loads(f.read_text()) for f in (collapse / name).glob("*.json")]}
                for name, v in json.loads(collapse.with_suffix(".json").read_text())["variants"].items() if v.get("retrain") == default]
    assert truths and variants
    return list(truths.values()), variants


def test_the_default_retrains_collapse_count_is_quoted_from_them():
    """The section's count is every committed retrain of the default budget, and its other numbers are theirs."""
    truths, variants = default_retrains()
    collapses = sum(t["ground_truth"]["collapses"] for t in truths) + sum(v["collapses"] for v in variants)
    retrains = sum(t["ground_truth"]["retrains"] for t in truths) + sum(v["retrains"] for v in variants)
    (text,) = sections("default-retrain")
    assert f"{collapses} of {retrains} retrains collapsed" in text, (collapses, retrains)
    for variant in variants:  # each subset's pair of retrains, as "0.997 and 0.994" at seeds 0 and 1
        for subset in variant["subsets"].values():
            assert " and ".join(f"{subset['values'][seed]:.3f}" for seed in ("0", "1")) in text, subset["values"]
    values = [v for doc in [*truths, *variants] for v in leaves(doc)]
    values += [len(load_space(t["plan"]["truth"]["space"]).candidates) for t in truths]  # "skip 5 of 6"
    strays = [n for n in NUMBER.findall(text) if not shown_as(n, values)]
    assert not strays, f"numbers in the default-retrain section that are not in its retrains: {strays}"
