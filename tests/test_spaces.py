"""Every shipped space parses, validates, and runs small with the CLI overrides."""
import pytest

from tuner.spaces import SpaceError, available_spaces, parse_space, to_param_space

SHIPPED = ["smoke", "sfkd_gamma", "sfkd_budget", "sfkd_full", "density", "fg_size", "sparse_init", "kd_methods", "prune_kd"]


def test_all_spaces_of_the_issue_are_shipped():
    assert set(SHIPPED) <= set(available_spaces())


@pytest.mark.parametrize("name", SHIPPED)
def test_space_validates_and_takes_the_run_small_overrides(name):
    space = parse_space(name)
    if name != "smoke":  # paper scale: the SF-KD paper's 240 epochs, Chen et al. 2021's 120 retraining epochs
        assert space.config["dataset"] == "cifar100" and space.config["epochs"] == (120 if name == "prune_kd" else 240)
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


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_space_states_its_exact_loss_and_has_no_schedule_warning(name):
    space = parse_space(name)
    assert "Loss" in space.text or "Losses" in space.text
    assert space.warnings == []


def test_each_arm_of_a_comparison_carries_its_own_recipe():
    from ray.tune.search.variant_generator import generate_variants

    from trainables.config import DistillConfig

    space = parse_space("kd_methods")
    trials = {cfg["arm"]: DistillConfig.from_dict(cfg) for _, cfg in generate_variants(to_param_space(space))}
    assert set(trials) == {"ft", "kd", "fitnet", "at", "sp", "sfkd"}
    assert (trials["ft"].alpha, trials["ft"].beta, trials["ft"].gamma) == (1.0, 0.0, 0.0)
    assert (trials["kd"].alpha, trials["kd"].beta) == (0.5, 0.5)
    assert (trials["at"].alpha, trials["at"].beta, trials["at"].at_weight) == (1.0, 0.0, 1000.0)
    assert (trials["sp"].alpha, trials["sp"].beta, trials["sp"].sp_weight) == (1.0, 0.0, 3000.0)
    # FitNet is the SF-KD arm without the split: the same weights.
    f, s = trials["fitnet"], trials["sfkd"]
    assert (f.alpha, f.beta, f.gamma) == (s.alpha, s.beta, s.gamma) == (0.5, 0.5, 0.5)
    assert len({t.seed for t in trials.values()}) == 1


def test_prune_kd_follows_seed_001s_recipe():
    from ray.tune.search.variant_generator import generate_variants

    from trainables.config import DistillConfig

    trials = [DistillConfig.from_dict(cfg) for _, cfg in generate_variants(to_param_space(parse_space("prune_kd")))]
    assert len(trials) == 8 * 3
    for t in trials:
        assert t.lr == 0.001 and t.lr_decay == 0.5 and t.temperature == 4.0
        if t.method == "kd":
            assert (t.alpha, t.beta) == (0.9, 0.1)
        # lr halved every 40 epochs
        assert [round(m * t.epochs) for m in t.lr_milestones] == list(range(40, t.epochs, 40))
        if t.prune_schedule == "iterative":
            assert (t.prune_steps, t.prune_interval) == (30, 5)


def test_command_line_values_win_over_an_arms_recipe():
    space = parse_space("prune_kd", {"epochs": 10})
    assert all("epochs" not in recipe for recipe in space.arms.values())
    assert any("compressed into epochs 0..4" in w for w in space.warnings)


def test_asha_rungs_before_the_first_lr_decay_are_warned_about():
    space = parse_space("sfkd_gamma", {"lr_schedule": "multistep"})
    assert any("falls before the first lr decay (epoch 150)" in w for w in space.warnings)
    assert parse_space("sfkd_gamma").warnings == []


def test_an_arm_cannot_search_a_key_the_space_searches_too(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("config: {dataset: synthetic, teacher: none, method: ft, lr: {choice: [0.1, 0.2]}}\n"
                 "arms: {a: {lr: 0.3}}\nsearch: {searcher: grid}\nscheduler: {type: fifo}\n")
    with pytest.raises(SpaceError, match="arms.a.lr"):
        parse_space(str(f))


def test_every_shipped_space_builds_into_what_ray_and_optuna_are_given():
    from tuner.driver import check_buildable

    for name in available_spaces():
        check_buildable(parse_space(name))  # raises SpaceError with one line if Ray or Optuna would refuse it
