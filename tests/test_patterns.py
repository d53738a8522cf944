"""Sparsity patterns (docs/sparsity.md, "Patterns"): N:M masks keep at most N of every M consecutive
input-channel weights at each output channel and kernel position, exactly, from init through training,
save and load; layers that cannot hold the pattern stay dense and are listed."""
import pytest
import torch

from trainables.config import ConfigError, DistillConfig
from trainables.sparsity import SparsityError, load_sparse, save_sparse
from trainables.sparsity.patterns import check_nm, nm_masks, parse_pattern


def test_parse_pattern_reads_unstructured_and_n_of_m():
    assert parse_pattern("unstructured") is None and parse_pattern("channel") is None
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern("1:8") == (1, 8)
    for bad in ("4:2", "0:4", "4:4", "2-4", "channels", ""):
        with pytest.raises(SparsityError, match="sparsity_pattern"):
            parse_pattern(bad)


def test_linear_2_of_4_keeps_the_two_largest_magnitudes_of_each_group_of_four_inputs():
    w = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 4.0, -3.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0, -0.5, 0.6, -0.7, 0.8]])
    masks, dense = nm_masks({"fc.weight": w}, 2, 4)
    # Row 0: |-0.9|, |0.3| of the first four; 5.0, 4.0 of the next. Row 1: a four-way tie keeps the lower
    # indices 0 and 1; then |-0.7| and |0.8|.
    assert masks["fc.weight"].tolist() == [[False, True, True, False, True, True, False, False],
                                           [True, True, False, False, False, False, True, True]]
    assert dense == []


def test_conv_groups_run_along_input_channels_at_each_output_channel_and_kernel_position():
    # One output channel, 4 input channels, a 1x2 kernel: the groups are the 4 input channels at kernel
    # position (0, 0) and, separately, at (0, 1).
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    w[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = nm_masks({"conv.weight": w}, 1, 4)[0]["conv.weight"]
    assert mask[0, :, 0, 0].tolist() == [True, False, False, False]
    assert mask[0, :, 0, 1].tolist() == [False, False, False, True]
    assert int(mask.sum()) == 2


def test_layers_whose_input_channels_are_not_a_multiple_of_m_stay_dense_and_are_listed():
    from trainables.models import create_model
    from trainables.sparsity import maskable_parameters

    weights = maskable_parameters(create_model("torchvision:mobilenet_v3_small", 10))
    masks, dense = nm_masks(weights, 2, 4)
    stem = "features.0.0.weight"  # 3 RGB input channels
    depthwise = "features.1.block.0.0.weight"  # 1 input channel per group
    assert stem in dense and depthwise in dense
    assert bool(masks[stem].all()) and bool(masks[depthwise].all())
    assert all(weights[k].shape[1] % 4 for k in dense)
    sparse = [k for k in masks if k not in dense]
    assert sparse and all(int(masks[k].sum()) * 2 == masks[k].numel() for k in sparse)
    check_nm(masks, 2, 4)


def test_check_nm_names_the_layer_and_group_that_breaks_the_pattern():
    masks, _ = nm_masks({"fc.weight": torch.randn(3, 8)}, 2, 4)
    check_nm(masks, 2, 4)
    broken = masks["fc.weight"].clone()
    broken[1, 4:8] = True  # row 1's second group keeps all four
    with pytest.raises(SparsityError, match=r"fc.weight: M-group 3 has 4 mask kept of 4, the 2:4 pattern allows 2"):
        check_nm({"fc.weight": broken}, 2, 4)
    weights = torch.ones(3, 8) * masks["fc.weight"]
    weights[0, 0:4] = 1.0  # values alive behind the mask's back
    with pytest.raises(SparsityError, match="nonzero weights"):
        check_nm(masks, 2, 4, {"fc.weight": weights})


def test_config_fixes_the_density_from_the_pattern_and_refuses_what_cannot_hold():
    cfg = DistillConfig.from_dict({"sparsity_pattern": "2:4"})
    assert (cfg.density, cfg.sparse_init, cfg.nm) == (0.5, "uniform", (2, 4))
    assert DistillConfig().sparse_init == "ERK" and DistillConfig().sparsity_pattern == "unstructured"
    assert DistillConfig.from_dict({"sparsity_pattern": "1:4", "density": 0.25}).density == 0.25
    for values, says in [
        ({"sparsity_pattern": 124}, "YAML reads an unquoted N:M"),
        ({"sparsity_pattern": "1:4", "density": 0.5}, "density 0.5 cannot hold with it"),
        ({"sparsity_pattern": "2:4", "sparse_init": "ERK"}, "sparse_init must be uniform"),
        ({"sparsity_pattern": "2:4", "sparse_init": "magnitude", "prune_schedule": "iterative",
          "student": "resnet8", "teacher_arch": "resnet8"}, "drawn once"),
    ]:
        with pytest.raises(ConfigError, match=says):
            DistillConfig.from_dict(values)


def test_a_2_of_4_run_holds_the_pattern_after_init_after_training_and_after_save_and_load(tmp_path, tiny_teacher_file):
    from trainables import DistillRun

    run = DistillRun({"dataset": "synthetic", "synthetic_size": 200, "teacher": str(tiny_teacher_file),
                      "teacher_arch": "resnet8", "student": "resnet8", "method": "kd", "sparsity_pattern": "2:4",
                      "sparse_init": "magnitude", "epochs": 2, "batch_size": 50}, device="cpu")
    weights = lambda: {k: p.detach() for k, p in run.student.named_parameters() if k in run.masks}  # noqa: E731
    check_nm(run.masks, 2, 4, weights())
    assert run.record["dense_layers"] == "conv1"  # the RGB stem: 3 input channels
    # The teacher's copy, 2 of 4 by magnitude: the kept weights are each group's two largest in the teacher.
    teacher_fc = run.teacher.fc.weight.detach()
    assert torch.equal(run.masks["fc.weight"], nm_masks({"fc": teacher_fc}, 2, 4)[0]["fc"])
    stem = run.masks["conv1.weight"].numel()
    total = sum(m.numel() for m in run.masks.values())
    assert run.scheduled_density == pytest.approx(0.5 + 0.5 * stem / total)  # half of all but the dense stem

    metrics = [run.train_epoch() for _ in range(2)]
    assert metrics[-1]["density"] == pytest.approx(run.scheduled_density)
    check_nm(run.masks, 2, 4, weights())

    state = run.state_dict()
    path = tmp_path / "student.sfkd"
    save_sparse(path, state["student"], state["masks"], run.scheduled_density, config=run.cfg.to_dict())
    loaded, masks, meta = load_sparse(path)
    assert meta["config"]["sparsity_pattern"] == "2:4"
    check_nm(masks, 2, 4, {k: loaded[k] for k in masks})
    assert all(torch.equal(masks[k], state["masks"][k].cpu()) for k in masks)


def test_a_checkpoint_that_breaks_its_own_pattern_is_refused_on_save(tmp_path):
    w = torch.randn(4, 8)
    masks = {"fc.weight": torch.ones(4, 8, dtype=torch.bool)}
    with pytest.raises(SparsityError, match="the 2:4 pattern allows 2"):
        save_sparse(tmp_path / "x.sfkd", {"fc.weight": w}, masks, 1.0, config={"sparsity_pattern": "2:4"})
    assert not (tmp_path / "x.sfkd").exists()


@pytest.mark.parametrize("pattern", ["2:4", "channel"])
@pytest.mark.parametrize("method", ["ft", "kd", "fitnet", "at", "sp", "sfkd"])
def test_every_method_trains_under_every_structured_pattern_from_the_teachers_copy(method, pattern, tiny_teacher_file):
    from trainables import DistillRun

    run = DistillRun({"dataset": "synthetic", "synthetic_size": 100, "teacher": str(tiny_teacher_file),
                      "teacher_arch": "resnet8", "student": "resnet8", "method": method, "sparsity_pattern": pattern,
                      "sparse_init": "magnitude", "density": 0.5, "epochs": 1, "batch_size": 50}, device="cpu")
    metrics = run.train_epoch()
    assert metrics["density"] == run.scheduled_density and abs(run.scheduled_density - 0.5) <= 0.02
    assert metrics["loss"] == metrics["loss"]  # a number, not nan
    run.check_sparsity()  # the pattern (N:M groups, or the channel count) still holds after the step
