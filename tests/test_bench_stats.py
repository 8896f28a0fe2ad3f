"""The verdict's statistics on hand-made numbers, each checked against a value worked out by hand."""

import pytest

from das_tune.bench import stats


def test_sparse_kendall_tau_leaves_out_the_pairs_the_retrain_noise_cannot_order():
    truth = [0.995, 0.994, 0.90, 0.80]  # the first two are within the noise (0.002) of each other
    scores = [1.0, 2.0, 3.0, 0.0]
    # the 5 ordered pairs: (0,2) D, (0,3) C, (1,2) D, (1,3) C, (2,3) C -> (3 - 2) / 5
    assert stats.sparse_kendall_tau(scores, truth, tie=0.002) == pytest.approx(0.2)
    # with no noise the tied pair counts too, and is discordant: (3 - 3) / 6
    assert stats.sparse_kendall_tau(scores, truth, tie=0.0) == pytest.approx(0.0)
    assert stats.sparse_kendall_tau([1.0, 2.0], [0.99, 0.99], tie=0.001) is None


def test_a_score_tie_is_neither_concordant_nor_discordant():
    assert stats.sparse_kendall_tau([1.0, 1.0, 0.0], [0.9, 0.8, 0.7], tie=0.0) == pytest.approx(2 / 3)


def test_the_good_set_is_within_two_noise_sd_of_the_best():
    truth = {"a": 0.995, "b": 0.992, "c": 0.990}
    assert stats.good_set(truth, noise=0.001) == {"a"}
    assert stats.good_set(truth, noise=0.002) == {"a", "b"}
    assert stats.good_set(truth, noise=0.0025) == {"a", "b", "c"}


def test_separation_auc_is_the_chance_a_good_subset_scores_higher_than_a_bad_one():
    assert stats.separation_auc([3, 2, 2, 1], [True, True, False, False]) == pytest.approx(3.5 / 4)
    assert stats.separation_auc([3, 1, 2, 2], [True, True, False, False]) == pytest.approx(0.5)
    assert stats.separation_auc([1, 2], [True, True]) is None


def test_top_k_recall_counts_picks_among_the_true_best_with_ties():
    assert stats.top_k_recall([0.9, 0.8, 0.7, 0.1], [1, 5, 4, 3], k=2) == pytest.approx(0.5)
    assert stats.top_k_recall([0, 1, 2, 3], [5, 4, 4, 1], k=2) == pytest.approx(0.5)  # index 2 ties the 2nd best
    assert stats.top_k_recall([3, 2, 1, 0], [5, 4, 4, 1], k=3) == pytest.approx(1.0)


def test_a_deterministic_method_is_compared_through_its_picks_retrain_distribution():
    # 3 vs 3 values: 20 ways to split them, the observed split and its mirror are the extremes -> p = 2 / 20
    result = stats.unpaired_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert result["p_value"] == pytest.approx(0.1) and result["mean_diff"] == pytest.approx(-3.0)
    assert stats.unpaired_test([0.99, 0.99], [0.99, 0.99, 0.99])["p_value"] == 1.0


def test_the_verdict_checks_the_reference_methods_goals():
    from types import SimpleNamespace

    from das_tune.artifacts.results import GroundTruth, PairedTest
    from das_tune.bench import report

    def runs(method, good, nets=None):  # one run per seed, its pick (and its supernet's own pick) in the good set or not
        nets = nets or [None] * len(good)
        return [SimpleNamespace(method=method, good=g, supernet_ranking=n and SimpleNamespace(top_in_good=n == "good"))
                for g, n in zip(good, nets)]

    def test(mean_diff, p_value):
        return PairedTest(test="paired", n=10, mean_diff=mean_diff, p_value=p_value)

    truth = GroundTruth.model_construct(rankable=6.0, rankable_goal=5.0)
    done = runs("das", [True] * 8 + [False] * 2) + runs("random", [True] * 3 + [False] * 7) + runs("last_k", [False] * 10)
    paired = {"random": test(0.01, 0.03), "last_k": test(-0.01, 0.2), "block_influence": test(-0.01, 0.01)}
    v = report.verdict(done, truth, "das", paired)
    assert v.rankable and (v.good_counts["das"].good, v.good_counts["random"].good, v.good_counts["last_k"].good) == (8, 3, 0)
    assert [(g.kind, g.other, g.met) for g in v.goals] == [
        ("good_set", None, True), ("ahead_of", "random", True), ("not_behind", "last_k", True),  # behind, but not significantly
        ("not_behind", "block_influence", False),
    ]
    assert v.goals[0].target == 8
    seven = runs("das", [True] * 7 + [False] * 3)
    assert not report.verdict(seven, truth, "das", {}).goals[0].met  # 7 of 10 < 8
    behind = {"random": test(-0.01, 0.01)}  # significant, the wrong way
    assert not report.verdict(done, truth, "das", behind).goals[1].met
    assert not report.verdict(done, truth, "das", {"random": test(0.01, 0.06)}).goals[1].met
    flat = GroundTruth.model_construct(rankable=2.0, rankable_goal=5.0)
    assert not report.verdict(done, flat, "das", paired).rankable
    assert report.verdict(done, GroundTruth.model_construct(rankable=None), "das", paired) is None
    assert v.supernet_picks is None  # no supernet rankings
    nets = ["good"] * 6 + ["bad"] * 3 + [None]  # the last seed's supernet ranked nothing
    counted = report.verdict(runs("das", [True] * 10, nets) + runs("random", [False] * 10, ["bad"] * 10), truth, "das", {})
    assert (counted.supernet_picks.good, counted.supernet_picks.seeds) == (6, 9)  # the reference's supernets only


def test_top_in_good_is_whether_the_best_scored_subset_is_good():
    assert stats.top_in_good([0.2, 0.9, 0.5], [False, True, False]) is True
    assert stats.top_in_good([0.2, 0.9, 0.5], [True, False, True]) is False
    assert stats.top_in_good([0.9, 0.9, 0.5], [True, False, True]) is False  # a tie for the best: both must be good
    assert stats.top_in_good([0.9, 0.9, 0.5], [True, True, False]) is True
    assert stats.top_in_good([], []) is None
