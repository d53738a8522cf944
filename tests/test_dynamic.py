"""Dynamic sparsity (`mask_update`, docs/sparsity.md): the right weights move, every layer keeps its count,
grown weights start at zero with fresh momentum, and a resumed run moves its masks as an uninterrupted one."""
import math

import pytest
import torch

from trainables import DistillRun
from trainables.config import ConfigError, DistillConfig
from trainables.sparsity import get_masks, maskable_parameters
from trainables.sparsity.allocation import INIT_METHODS
from trainables.sparsity.dynamic import drop_fraction_at, update_layer

# A layer of 8 weights, 5 active. |w| of the active ones: 0.5, 0.1, 0.3, 0.05, 0.2.
WEIGHT = torch.tensor([0.5, -0.1, 0.0, 0.3, -0.05, 0.0, 0.0, 0.2])
MASK = torch.tensor([1.0, 1, 0, 1, 1, 0, 0, 1])
# Dense gradient: large where active (it must not matter there), small elsewhere.
GRAD = torch.tensor([9.0, 0.7, 0.2, 9.0, 0.8, 0.9, 0.1, 9.0])


def test_drop_fraction_follows_rigls_cosine_to_the_step():
    assert drop_fraction_at(0, 100, 0.3) == pytest.approx(0.3)
    assert drop_fraction_at(25, 100, 0.3) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))  # 0.25607
    assert drop_fraction_at(50, 100, 0.3) == pytest.approx(0.15)
    assert drop_fraction_at(100, 100, 0.3) == 0.0 and drop_fraction_at(150, 100, 0.3) == 0.0


def test_drop_takes_the_smallest_active_magnitudes_and_rigl_grows_the_largest_dense_gradients():
    # fraction 0.4 of 5 active: n = 2. Dropped: -0.05 (index 4) and -0.1 (index 1). Inactive after the drop:
    # 1, 2, 4, 5, 6 with |grad| 0.7, 0.2, 0.8, 0.9, 0.1: RigL grows 5 and 4 (4 comes back, at zero).
    new, grown = update_layer(WEIGHT, MASK, 0.4, "rigl", GRAD)
    assert new.tolist() == [1, 0, 0, 1, 1, 1, 0, 1] and grown.tolist() == [5, 4]
    assert int(new.sum()) == int(MASK.sum())
    # Ties go to the lower index: three candidates tie at 1.0, the first two (2 and 5) are grown.
    tied = torch.tensor([9.0, 0.0, 1.0, 9.0, 0.0, 1.0, 1.0, 9.0])
    assert update_layer(WEIGHT, MASK, 0.4, "rigl", tied)[1].tolist() == [2, 5]
    # fraction 0.1 of 5 = 0.5 rounds half up to 1: only -0.05 (index 4) goes, and 5 (|grad| 0.9) comes.
    new, grown = update_layer(WEIGHT, MASK, 0.1, "rigl", GRAD)
    assert new.tolist() == [1, 1, 0, 1, 0, 1, 0, 1] and grown.tolist() == [5]
    assert torch.equal(update_layer(WEIGHT, MASK, 0.0, "rigl", GRAD)[0], MASK)


def test_set_grows_a_seeded_uniform_draw_among_the_inactive_positions():
    picks = set()
    for seed in range(20):
        new, grown = update_layer(WEIGHT, MASK, 0.4, "set", generator=torch.Generator().manual_seed(seed))
        assert int(new.sum()) == 5 and set(grown.tolist()) <= {1, 2, 4, 5, 6}
        assert new[[0, 3, 7]].tolist() == [1, 1, 1]  # the large weights stay
        picks.add(tuple(sorted(grown.tolist())))
    assert len(picks) > 3  # the draw depends on the generator
    again = update_layer(WEIGHT, MASK, 0.4, "set", generator=torch.Generator().manual_seed(3))[1]
    assert torch.equal(again, update_layer(WEIGHT, MASK, 0.4, "set", generator=torch.Generator().manual_seed(3))[1])


BASE = dict(dataset="synthetic", synthetic_size=300, student="resnet8", teacher="none", method="ft", epochs=3,
            batch_size=32, density=0.2, mask_update_interval=3, drop_fraction=0.5, seed=2)


def _counts(run) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in get_masks(run.student).items()}


@pytest.mark.parametrize("kind", ["set", "rigl"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_every_layer_keeps_its_count_after_every_update_with_every_init(tmp_path, tiny_teacher_file, kind, init):
    # magnitude ranks the teacher's own copy, so that init distils a resnet8 from the resnet8 teacher file.
    teacher = {"teacher": str(tiny_teacher_file), "teacher_arch": "resnet8"} if init == "magnitude" else {}
    run = DistillRun({**BASE, "synthetic_size": 200, "epochs": 2, "mask_update": kind, "sparse_init": init,
                      "cache_dir": str(tmp_path), **teacher}, device="cpu")
    initial = _counts(run)
    updater, seen = run.mask_updater, []
    original = updater.after_step

    def checked(step):  # the real update, then the counts and the zeros it promises
        before = get_masks(run.student)
        original(step)
        if updater.due(step):
            seen.append(step)
            assert _counts(run) == initial, step
            params = maskable_parameters(run.student)
            for name, mask in get_masks(run.student).items():
                assert int((params[name].detach()[~mask] != 0).sum()) == 0
                grown = mask & ~before[name]
                assert int((params[name].detach()[grown] != 0).sum()) == 0  # grown weights start at zero
                buf = run.optimizer.state[params[name]]["momentum_buffer"]
                assert int((buf[grown] != 0).sum()) == 0  # with fresh momentum

    updater.after_step = checked
    metrics = [run.step() for _ in range(2)]
    assert seen == [3, 6]  # 180 images: 5 steps an epoch; every 3rd step while below 0.75 x 10 = 7.5
    assert sum(m["mask_moved"] for m in metrics) > 0 and metrics[-1]["mask_overlap_initial"] < 1.0
    assert all(m["density"] == pytest.approx(run.scheduled_density) for m in metrics)
    # Pruned weights stay exactly zero through the later optimizer steps (weight decay 5e-4, momentum 0.9).
    run.check_sparsity()


@pytest.mark.parametrize("kind", ["set", "rigl"])
def test_a_run_stopped_between_two_updates_and_resumed_moves_its_masks_as_an_uninterrupted_one(tmp_path, kind):
    cfg = {**BASE, "mask_update": kind, "mask_update_interval": 5, "cache_dir": str(tmp_path)}
    whole = DistillRun(cfg, device="cpu")
    expected = [whole.step() for _ in range(3)]
    first = DistillRun(cfg, device="cpu")
    initial = _counts(first)
    got = [first.step()]  # epoch 1 ends at step 8, between the updates at steps 5 and 10
    state = first.state_dict()
    resumed = DistillRun(cfg, device="cpu")
    resumed.load_state_dict(state)
    updater, counts_after = resumed.mask_updater, []
    original = updater.after_step

    def counted(step):  # every update of the resumed run keeps each layer's initial count
        original(step)
        if updater.due(step):
            counts_after.append((step, _counts(resumed)))

    updater.after_step = counted
    got += [resumed.step() for _ in range(2)]
    assert [s for s, _ in counts_after] == [10, 15]  # 8 steps an epoch; updates below 0.75 x 24 = 18
    assert all(c == initial for _, c in counts_after)
    for a, b in zip(expected, got):
        for key in ("loss", "train_acc", "val_acc", "mask_moved", "mask_updates", "mask_overlap_initial"):
            assert a[key] == b[key], key
    assert all(torch.equal(get_masks(whole.student)[k], get_masks(resumed.student)[k]) for k in get_masks(whole.student))


def test_static_masks_are_the_default_and_bad_combinations_are_refused():
    assert DistillConfig().mask_update == "none"
    with pytest.raises(ConfigError, match=r"mask_update: set moves masks of a fixed density; with prune_schedule "
                                          r"iterative the density changes too"):
        DistillConfig(mask_update="set", prune_schedule="iterative", sparse_init="magnitude")
    with pytest.raises(ConfigError, match="sparsity_pattern 2:4 keeps a structure it would break"):
        DistillConfig(mask_update="rigl", sparsity_pattern="2:4")
    with pytest.raises(ConfigError, match=r"mask_update: unknown value 'rig'"):
        DistillConfig(mask_update="rig")
    with pytest.raises(ConfigError, match=r"drop_fraction: 1.5 is out of range"):
        DistillConfig(drop_fraction=1.5)


def test_study_dynamic_pairs_set_and_rigl_with_static_masks_per_method_and_density():
    from tuner.spaces import parse_space

    space = parse_space("study_dynamic")
    assert space.study["by"] == "mask_update" and space.study["reference"] == "none"
    assert space.study["arms"] == ["none", "set", "rigl"] and space.study["strata"] == ["method", "density"]
    assert space.params == {"density": {"grid": [0.1, 0.05]}} and space.config["sparse_init"] == "ERK"
    assert {a: r["mask_update"] for a, r in space.arms.items()} == {
        "kd_static": "none", "kd_set": "set", "kd_rigl": "rigl",
        "sfkd_static": "none", "sfkd_set": "set", "sfkd_rigl": "rigl"}
    assert space.warnings == []
