"""The front of a num_skip range: the target rule, and `das-tune run --num-skip 1-3 --tiny` end to end."""

import json

import optuna
import pytest

from das_tune.artifacts.results import FrontFile, FrontPoint, RetrainMetrics
from das_tune.errors import UserError
from das_tune.jobs.target import choose, parse_target
from das_tune.report.front import FRONT_JSON, FRONT_MD, FRONT_PNG

STUDY = "easyvqa_minilm-das-skip1-3-seed0-tiny"


def point(name, value, gmacs, skipped=()):
    return FrontPoint(
        name=name, num_skip=len(skipped), skipped=list(skipped), chosen_by="test", observed_loss=None, metric="accuracy", value=value,
        additional_gmacs=gmacs, flops_saved=0.0, trainable_params=1, latency_subnet_ms=1.0, speedup=1.0, folder=".",
    )


FULL = point("full", 0.80, 0.10)
LADDER = [point("skip1", 0.795, -0.2, ["A"]), point("skip2", 0.785, -0.5, ["A", "B"]), point("skip3", 0.60, -0.8, ["A", "B", "C"])]


@pytest.mark.parametrize("rule, max_gmacs, pick", [
    ("accuracy>=full-0.01", None, "skip1"),  # skip2 is 0.015 below the full model
    ("accuracy>=full-0.02", None, "skip2"),
    ("accuracy>=full", None, "full"),
    ("accuracy >= 0.5", None, "skip3"),
    ("accuracy>0.79", -0.3, None),
    (None, -0.3, "skip3"),  # a cap alone: the cheapest point under it
    ("accuracy>=full+0.1", None, None),
])
def test_target_picks_the_cheapest_retrained_subnet_that_meets_it(rule, max_gmacs, pick):
    result = choose(parse_target(rule, max_gmacs), FULL, LADDER)
    assert result.pick == pick and result.met == (pick is not None)
    assert (pick or "no retrained subnet") in result.reason


def test_target_says_why_the_cheaper_ones_miss():
    result = choose(parse_target("accuracy>=full-0.01"), FULL, LADDER)
    assert "0.7900" in result.reason  # the bound: full 0.80 - 0.01
    assert "skip3 (accuracy 0.6000" in result.reason and "skip2 (accuracy 0.7850" in result.reason


@pytest.mark.parametrize("rule", ["accuracy>>1", "accuracy>=fuller", ">=0.9", "accuracy>=full-"])
def test_bad_target_rules_are_one_line(rule):
    with pytest.raises(UserError, match="expected METRIC OP BOUND"):
        parse_target(rule)


@pytest.mark.parametrize("args, message", [
    (["--target", "loss>=full"], "this task's metric is 'accuracy', not 'loss'"),
    (["--sampler", "cmaes"], "cannot search two objectives"),
    (["--target", "accuracy=>0.5"], "expected METRIC OP BOUND"),
])
def test_bad_front_input_exits_2_and_writes_nothing(cli, tmp_path, args, message):
    result = cli("run", "--space", "minilm_vqa", "--num-skip", "1-3", "--tiny", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_target_needs_a_range(cli, tmp_path):
    result = cli("run", "--space", "minilm_vqa", "--tiny", "--max-gmacs", "0")
    assert result.returncode == 2 and "give a range of --num-skip" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_one_search_for_num_skip_1_to_3_end_to_end(cli, tmp_path):
    result = cli("run", "--space", "minilm_vqa", "--num-skip", "1-3", "--tiny", "--target", "accuracy>=full-0.01", timeout=900, check=True)
    assert "target met" in result.stderr
    run_dir = tmp_path / "runs" / STUDY

    # one study, two objectives, every round of one size, the sizes in turn
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'das_tune.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.user_attrs["num_skip"] == [1, 2, 3]
    sizes = [t.params["num_skip"] for t in study.trials]
    assert sizes == [(1, 2, 3)[t.number // 3 % 3] for t in study.trials] and set(sizes) == {1, 2, 3}
    for t in study.trials:
        assert len(t.user_attrs["skipped"]) == t.params["num_skip"]
        assert t.values[1] == pytest.approx(t.user_attrs["additional_gmacs"])

    # one pick per size (a ladder), each retrained in its own run folder, and the full model once
    front = FrontFile.read(run_dir / FRONT_JSON)
    assert [p.num_skip for p in front.ladder] == [1, 2, 3] and front.missing == []
    assert all(set(a.skipped) < set(b.skipped) for a, b in zip(front.ladder, front.ladder[1:]))
    for p in [front.full, *front.ladder]:
        metrics = RetrainMetrics.read(run_dir / "front" / p.name / "metrics.json")
        assert metrics.skipped == p.skipped and metrics.value == p.value and metrics.additional_gmacs == p.additional_gmacs
        assert metrics.latency_full_iqr_ms == RetrainMetrics.read(run_dir / "front" / "full" / "metrics.json").latency_full_iqr_ms
        assert p.speedup_within_noise == metrics.speedup_within_noise
    # the full model's latency measured once for the whole front: against itself it is 1×, not a second noisy number
    assert front.full.speedup == 1.0 and front.full.speedup_within_noise is None
    assert all(p.speedup_within_noise is not None for p in front.ladder)
    assert front.full.skipped == [] and front.full.additional_gmacs > front.ladder[0].additional_gmacs > front.ladder[-1].additional_gmacs
    assert any(p.pareto for p in [front.full, *front.ladder])
    assert (run_dir / FRONT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| skip3 |" in (run_dir / FRONT_MD).read_text()

    # the target: the cheapest retrained point within 0.01 of the full model
    meeting = [p for p in [front.full, *front.ladder] if p.value >= front.full.value - 0.01]
    assert front.target.met and front.target.pick == min(meeting, key=lambda p: p.additional_gmacs).name

    # the dashboard: Optuna's Pareto plot of the observations and the retrained front
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert any("das-tune-pareto" in key for key in attrs) and any("das-tune-front" in key for key in attrs)

    # again with a cap nothing meets: nothing is searched or retrained again, it says so and exits 1
    stamps = {p.name: (run_dir / "front" / p.name / "metrics.json").stat().st_mtime for p in [front.full, *front.ladder]}
    missed = cli("run", "--space", "minilm_vqa", "--num-skip", "1-3", "--tiny", "--max-gmacs", "-100", "--quiet", timeout=600)
    assert missed.returncode == 1, missed.stderr
    assert "target not met: no retrained subnet meets additional GMACs <= -100" in missed.stderr
    assert "Traceback" not in missed.stderr
    assert stamps == {name: (run_dir / "front" / name / "metrics.json").stat().st_mtime for name in stamps}
    assert len(optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'das_tune.db'}").trials) == len(study.trials)
    assert json.loads((run_dir / FRONT_JSON).read_text())["target"]["met"] is False

    # the run's root is no subnet: one line points to its subnets
    refused = cli("evaluate", str(run_dir))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert f"e.g. {run_dir / 'front' / 'skip1'} (front/ holds full, skip1, skip2, skip3)" in refused.stderr


def test_dashboard_shows_the_studys_pareto_front_and_the_retrained_front(tmp_path):
    import threading
    import urllib.request

    from das_tune import DASSampler, SkipSpace
    from das_tune.report import dashboard
    from das_tune.report.front import markdown

    space = SkipSpace(candidates=["A", "B", "C", "D"], num_skip="1-3", name="toy")
    url = f"sqlite:///{tmp_path / 'front.db'}"
    study = optuna.create_study(study_name="toy-front", storage=url, directions=["minimize", "minimize"], sampler=DASSampler(space, seed=0))
    for _ in range(18):
        trial = study.ask()
        skipped = space.suggest(trial)
        trial.set_user_attr("round", trial.number // 3)
        study.tell(trial, [0.1 * len(skipped) + 0.05 * ("A" in skipped), -0.2 * len(skipped)])
    picks = study.sampler.picks(study)
    ladder = [point(f"skip{m}", 0.8 - 0.05 * m, -0.2 * m, sorted(picks[m])) for m in (1, 2, 3)]
    front = FrontFile(
        study_name="toy-front", storage=url, space="toy", candidates=list(space.candidates), num_skip=[1, 2, 3], sampler="das",
        executor="oneshot", observations=18, search_seconds=1.0, pareto_observations=len(study.best_trials), metric="accuracy",
        full=point("full", 0.8, 0.0), ladder=ladder, target=choose(parse_target("accuracy>=full-0.06"), point("full", 0.8, 0.0), ladder),
    )
    dashboard.save_front_report(study, space, front, artifacts_dir="runs/toy-front")
    dashboard.save_front_report(study, space, front, artifacts_dir="runs/toy-front")  # saved again: replaced, not added

    server = dashboard.make_server(url, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response:
            (summary,) = json.load(response)["study_summaries"]
        with urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}?after=0", timeout=30) as response:
            detail = json.load(response)
    finally:
        server.shutdown()
        server.server_close()
    assert len(detail["directions"]) == 2 and detail["objective_names"] == ["observed loss", "additional GMACs"]
    plots = {p["id"]: json.loads(p["graph_object"]) for p in detail["plotly_graph_objects"]}
    assert sorted(plots) == sorted(dashboard.FRONT_PLOT_IDS.values())
    assert plots["das-tune-front"]["data"][0]["y"] == [p.value for p in ladder]
    assert "Pareto" in plots["das-tune-pareto"]["layout"]["title"]["text"]
    body = detail["note"]["body"]
    assert markdown(front) in body and "skip 1-3 of 4 layers" in body and "skip1" in front.target.reason


@pytest.mark.slow
def test_front_with_nsga2_and_uneven_sizes_picks_each_sizes_best_observation(cli, tmp_path):
    cli("run", "--space", "minilm_vqa", "--num-skip", "1,2,4", "--sampler", "nsga2", "--tiny", "--quiet", timeout=900, check=True)
    name = "easyvqa_minilm-nsga2-skip1,2,4-seed0-tiny"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'das_tune.db'}")
    assert study.trials[0].distributions["num_skip"] == optuna.distributions.CategoricalDistribution((1, 2, 4))
    front = FrontFile.read(tmp_path / "runs" / name / FRONT_JSON)
    observed = {p.num_skip for p in front.ladder} | set(front.missing)
    assert observed == {1, 2, 4} and {len(t.user_attrs["skipped"]) for t in study.trials} == {p.num_skip for p in front.ladder}
    for p in front.ladder:
        same_size = [t for t in study.trials if t.params["num_skip"] == p.num_skip]
        best = min(same_size, key=lambda t: t.values[0])
        assert p.skipped == best.user_attrs["skipped"] and p.observed_loss == best.values[0]
        assert p.chosen_by == f"the best observed loss of size {p.num_skip}"


RANGE_RUN = [
    "run", "--space", "minilm_vqa", "--num-skip", "1-3", "--tiny", "--seed", "3", "--quiet",
    "--set", "search.search_epochs=2", "--set", "search.max_steps_per_epoch=3", "--set", "search.observe_every=1",
    "--set", "retrain.max_steps_per_epoch=1",
]
RANGE_STUDY = "easyvqa_minilm-das-skip1-3-seed3-tiny"


def range_outcome(folder):
    study = optuna.load_study(study_name=RANGE_STUDY, storage=f"sqlite:///{folder / 'das_tune.db'}")
    front = FrontFile.read(folder / "runs" / RANGE_STUDY / FRONT_JSON)
    return {
        "trials": [(t.number, t.state.name, t.user_attrs["skipped"], t.values) for t in study.trials],
        "front": [(p.name, p.skipped, p.value, p.additional_gmacs, p.observed_loss) for p in [front.full, *front.ladder]],
    }


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_killed_range_search_resumes_to_the_same_trials_and_front(tmp_path):
    import signal
    import subprocess
    from pathlib import Path

    from conftest import python, run_cli

    worker = Path(__file__).parent / "kill_worker.py"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert run_cli(*RANGE_RUN, cwd=whole, timeout=1200, check=True).stderr == ""  # no warning lines under --quiet
    # events counted from each process's start: in the first round, later in the search, near the retrains
    for point, must_land in ((23, True), (90, True), (170, False)):
        command = [*python(), str(worker), f"kill:{point}", *RANGE_RUN]
        result = subprocess.run(command, cwd=killed, capture_output=True, text=True, timeout=1200)
        assert result.returncode == -signal.SIGKILL or not must_land and result.returncode == 0, result.stderr[-2000:]
    run_cli(*RANGE_RUN, cwd=killed, timeout=1200, check=True)
    assert range_outcome(killed) == range_outcome(whole)
