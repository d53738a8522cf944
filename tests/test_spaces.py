"""Every shipped space parses, validates, and runs small with the CLI overrides."""
import pytest

from tuner.spaces import SpaceError, available_spaces, parse_space, to_param_space

SHIPPED = ["smoke", "sfkd_gamma", "sfkd_full", "density", "fg_size", "sparse_init", "kd_methods", "prune_kd"]


def test_all_spaces_of_the_issue_are_shipped():
    assert set(SHIPPED) <= set(available_spaces())


@pytest.mark.parametrize("name", SHIPPED)
def test_space_validates_and_takes_the_run_small_overrides(name):
    space = parse_space(name)
    if name != "smoke":
        assert space.config["dataset"] == "cifar100" and space.config["epochs"] == 240
    small = parse_space(name, {"dataset": "cifar10", "epochs": 2, "scheduler.max_t": 2, "search.num_samples": 2})
    assert small.config["dataset"] == "cifar10" and small.scheduler["max_t"] == 2
    assert small.search["num_samples"] == 2 and small.scheduler["grace_period"] <= 2
    assert set(to_param_space(small)) >= set(small.config) | set(small.params)


def test_paper_pairs_are_named():
    assert parse_space("sfkd_gamma").config["teacher_arch"] == "resnet110"
    assert parse_space("sfkd_gamma").config["density"] == 0.1
    assert parse_space("prune_kd").config["student"] == "resnet32x4"


def test_fg_size_is_checked_against_every_student_the_space_can_pick():
    # fg_size 5 fits resnet20's 8x8 map but not vgg8's 4x4 one, which the choice can also pick.
    with pytest.raises(SpaceError, match=r"sfkd_gamma.yaml: config.student: fg_size: fg_size=5 does not fit"):
        parse_space("sfkd_gamma", {"student": {"choice": ["resnet20", "vgg8"]}, "fg_size": 5})
    parse_space("sfkd_gamma", {"student": {"choice": ["resnet20", "resnet32"]}, "fg_size": 5})


def test_override_with_a_distribution_is_validated_too():
    with pytest.raises(SpaceError, match="density"):
        parse_space("smoke", {"density": {"uniform": [0.5, 1.5]}})
