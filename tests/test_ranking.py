"""The one ranking rule: a trial's score is the best value of the space's metric it reached, the mode
says which way is better, ties go to the smaller trial id."""
import math

import pytest

from tuner.ranking import better, dominates, hypervolume_2d, pareto_front, ranked, score_key, score_of


def test_a_trial_is_scored_by_the_best_value_of_the_metric_it_reached():
    assert score_key("val_loss") == "best_val_loss"
    assert score_of({"val_acc": 40.0, "best_val_acc": 61.5}, "val_acc") == 61.5
    assert score_of({"val_acc": 40.0}, "val_acc") is None  # no score: never ranked
    assert score_of({"best_val_loss": math.inf}, "val_loss") is None  # a diverged trial's worst value


def test_max_puts_the_largest_first_and_min_the_smallest_with_ties_to_the_smaller_trial_id():
    entries = [(0.50, "cccc", "c"), (0.20, "bbbb", "b"), (0.50, "aaaa", "a"), (None, "dddd", "d")]
    assert [x for _, _, x in ranked(entries, "max")] == ["a", "c", "b"]
    assert [x for _, _, x in ranked(entries, "min")] == ["b", "a", "c"]


def test_better_agrees_with_ranked():
    assert better((0.2, "bbbb"), (0.5, "aaaa"), "min") and not better((0.2, "bbbb"), (0.5, "aaaa"), "max")
    assert better((0.5, "aaaa"), (0.5, "bbbb"), "max") and not better((0.5, "bbbb"), (0.5, "aaaa"), "max")
    assert better((0.1, "zzzz"), None, "max")


# Accuracy (max) against effective MACs (min): five trials, worked by hand.
#   a (70, 10M)  b (72, 20M)  c (69, 20M): dominated by a and by b   d (75, 40M)  e (72, 20M): ties b
TRIALS = [((70.0, 10e6), "a"), ((72.0, 20e6), "b"), ((69.0, 20e6), "c"), ((75.0, 40e6), "d"), ((72.0, 20e6), "e")]
MODES = ("max", "min")


def test_a_trial_is_dominated_only_by_one_at_least_as_good_in_every_objective_and_better_in_one():
    assert dominates((70.0, 10e6), (69.0, 20e6), MODES) and dominates((72.0, 20e6), (69.0, 20e6), MODES)
    assert not dominates((72.0, 20e6), (72.0, 20e6), MODES)  # equal: neither dominates
    assert not dominates((75.0, 40e6), (70.0, 10e6), MODES)  # more accurate but dearer: a trade-off
    assert dominates((1.0, 1.0), (0.0, 0.0), ("max", "max")) and not dominates((1.0, 1.0), (0.0, 0.0), ("min", "min"))


def test_the_front_keeps_every_non_dominated_trial_ties_included_best_first_by_the_first_objective():
    front = pareto_front(((v, t, None) for v, t in TRIALS), MODES)
    assert [t for _, t, _ in front] == ["d", "b", "e", "a"]  # c is dominated; b and e tie and both stay
    assert pareto_front([(None, "x", None), ((float("nan"), 1.0), "y", None), ((1.0, 1.0), "z", None)],
                        MODES)[0][1] == "z"  # no values or a nan: not a candidate


def test_the_hypervolume_of_a_two_objective_front_is_the_area_it_dominates():
    # Reference (60, 50M). In (accuracy - 60, 50M - MACs): a (10, 40M), b (12, 30M), d (15, 10M).
    # Swept by accuracy: d adds 15 x 10M, b 12 x 20M more, a 10 x 10M more: 150M + 240M + 100M = 490M.
    points = [v for v, _ in TRIALS]
    assert hypervolume_2d(points, MODES, (60.0, 50e6)) == pytest.approx(490e6)
    assert hypervolume_2d([(70.0, 10e6)], MODES, (60.0, 50e6)) == pytest.approx(10 * 40e6)
    assert hypervolume_2d([(50.0, 10e6)], MODES, (60.0, 50e6)) == 0.0  # worse than the reference: nothing
