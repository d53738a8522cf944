"""The one ranking rule: a trial's score is the best value of the space's metric it reached, the mode
says which way is better, ties go to the smaller trial id."""
import math

from tuner.ranking import better, ranked, score_key, score_of


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
