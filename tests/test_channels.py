"""Channel sparsity with Torch-Pruning's DepGraph (docs/sparsity.md, "Patterns"): whole output channels
removed from a residual and a depthwise network to a target density, every shape consistent, the forward
pass working, and a pruned state_dict loadable into a fresh model re-shaped to it."""
import pytest
import torch
import torch.nn as nn

from trainables.models import create_model
from trainables.sparsity import SparsityError, maskable_parameters
from trainables.sparsity.channels import TOLERANCE, maskable_weight_count, prune_channels, shape_like


def _shapes(model):
    return {k: p.shape for k, p in maskable_parameters(model).items()}


@pytest.mark.parametrize("spec, size", [("resnet20", 32), ("torchvision:mobilenet_v3_small", 64)])
@pytest.mark.parametrize("density", [0.5, 0.25])
def test_a_network_pruned_to_a_target_has_consistent_shapes_and_runs(spec, size, density):
    torch.manual_seed(0)
    model = create_model(spec, 10)
    pruned, kept = prune_channels(model, density, size)
    assert abs(kept - density) <= TOLERANCE
    assert kept == maskable_weight_count(pruned) / maskable_weight_count(model)
    assert _shapes(model) == _shapes(create_model(spec, 10))  # the original is left whole
    assert pruned.eval()(torch.randn(3, 3, size, size)).shape == (3, 10)  # one logit per class still
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.out_channels for c in convs) < sum(c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d))
    for c in convs:
        assert c.weight.shape == (c.out_channels, c.in_channels // c.groups, *c.kernel_size)
    for bn in (m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.weight.shape == bn.running_mean.shape == (bn.num_features,)
    if spec == "resnet20":
        # The residual additions tie the stem and every block's last conv in a stage: they lose channels
        # together, which only a dependency graph knows.
        stage1 = [pruned.conv1.out_channels] + [b.conv2.out_channels for b in pruned.layer1]
        assert len(set(stage1)) == 1 and stage1[0] < 16
    else:
        depthwise = [c for c in convs if c.groups > 1]
        assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)


@pytest.mark.parametrize("spec, multiple, widths", [
    # ResNet20 (stages of 16, 32, 64 channels) at 0.5 in multiples of 16: stage 1 is as narrow as the
    # multiple and keeps all 16; stage 2 goes to 16, stage 3 to 48 (0.5175 of the weights kept).
    ("resnet20", 16, {16, 48}),
    ("torchvision:resnet18", 16, None),
])
def test_pruned_in_multiples_every_layer_that_loses_channels_keeps_a_multiple_of_them(spec, multiple, widths):
    torch.manual_seed(0)
    model = create_model(spec, 10)
    pruned, kept = prune_channels(model, 0.5, 32, multiple=multiple)
    assert abs(kept - 0.5) <= TOLERANCE
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    narrowed = {n: c for n, c in after.items() if c != before[n]}
    assert narrowed and all(c % multiple == 0 for c in narrowed.values()), narrowed
    if widths is not None:
        assert set(after.values()) == widths
    assert pruned.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_density_that_the_multiple_rules_out_is_an_error_naming_the_nearest_one_reached():
    # ResNet20 in multiples of 16 cannot go below 16 channels per stage: 0.2948 of the weights at the
    # least, so 0.25 is out of reach.
    with pytest.raises(SparsityError, match=r"in multiples of 16 channels reaches density 0\.2948 at best, not "
                                            r"within 0\.02 of 0\.25"):
        prune_channels(create_model("resnet20", 10), 0.25, 32, multiple=16)


def test_a_pruned_state_dict_loads_into_a_fresh_model_reshaped_to_it_and_computes_the_same():
    torch.manual_seed(0)
    pruned, _ = prune_channels(create_model("resnet20", 10), 0.5, 32)
    fresh = shape_like(create_model("resnet20", 10), _shapes(pruned), 32)
    fresh.load_state_dict(pruned.state_dict())  # strict: every tensor's shape matches
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(fresh.eval()(x), pruned.eval()(x))


def test_channels_are_ranked_by_magnitude_so_a_network_with_dead_channels_loses_those_first():
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    with torch.no_grad():  # stage 3's first block: its inner conv's last 32 of 64 channels carry nothing
        model.layer3[0].conv1.weight[32:] = 0.0
        model.layer3[0].bn1.weight[32:] = 0.0
        model.layer3[0].bn1.bias[32:] = 0.0
        model.layer3[0].conv2.weight[:, 32:] = 0.0
    pruned, _ = prune_channels(model, 0.5, 32)
    survivors = pruned.layer3[0].conv1.weight.flatten(1)
    # The group loses some of its 64 channels; ranked by L2 norm, every one it loses is dead, so all 32 live
    # channels survive (a random ranking would lose some of them).
    assert 32 < survivors.shape[0] < 64
    assert int((survivors.norm(dim=1) > 0).sum()) == 32


def test_a_channel_pruned_run_trains_a_smaller_dense_student_whose_checkpoint_rebuilds_and_exports(
        tmp_path, tiny_teacher_file):
    import subprocess
    import sys

    from trainables import DistillRun
    from trainables.sparsity import load_sparse, save_sparse
    from trainables.sparsity.channels import fit_to_checkpoint

    # SF-KD from the teacher's copy pruned to half its weights: the student's last map has fewer channels
    # than the teacher's, so its connector is a real 1x1 conv, not an identity.
    run = DistillRun({"dataset": "synthetic", "synthetic_size": 200, "teacher": str(tiny_teacher_file),
                      "teacher_arch": "resnet8", "student": "resnet8", "method": "sfkd", "sparsity_pattern": "channel",
                      "sparse_init": "magnitude", "density": 0.5, "epochs": 1, "batch_size": 50}, device="cpu")
    assert abs(run.scheduled_density - 0.5) <= TOLERANCE
    assert run.dense_weights == maskable_weight_count(create_model("resnet8", 10))
    assert [type(c).__name__ for c in run.connectors] == ["Connector"]
    assert run.cost["macs_effective"] == run.cost["macs_dense"] < run.cost["teacher_macs"]  # really smaller
    assert all(bool(m.all()) for m in run.masks.values()) and run.record["dense_layers"] == ""
    metrics = run.train_epoch()
    assert metrics["density"] == run.scheduled_density

    state = run.state_dict()
    ckpt = tmp_path / "student.sfkd"
    save_sparse(ckpt, state["student"], state["masks"], run.scheduled_density, config=run.cfg.to_dict(),
                extra={"preprocessing": run.preprocessing, "cost": run.cost}, dense_weights=run.dense_weights)
    loaded, _, meta = load_sparse(ckpt)
    assert meta["measured_density"] == run.scheduled_density and meta["dense_weights"] == run.dense_weights
    fresh = fit_to_checkpoint(create_model("resnet8", 10), loaded, meta["config"], 32)
    fresh.load_state_dict(loaded)
    x = torch.randn(2, 3, 32, 32)
    if run.channels_last:  # the same layout as the run's student, so the same kernels: equal to the bit
        fresh.to(memory_format=torch.channels_last)
    assert torch.equal(fresh.eval()(x), run.student.eval()(x))
    r = subprocess.run([sys.executable, "-m", "tuner.checkpoint", str(ckpt), "--onnx", str(tmp_path / "s.onnx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "onnx -> " in r.stdout, r.stdout + r.stderr


def test_channel_pruning_ranks_the_start_weights_once():
    from trainables.config import ConfigError, DistillConfig

    assert DistillConfig.from_dict({"sparsity_pattern": "channel"}).sparse_init == "uniform"
    for values, says in [({"sparsity_pattern": "channel", "sparse_init": "ERK"}, "sparse_init must be uniform"),
                         ({"sparsity_pattern": "channel", "sparse_init": "magnitude", "prune_schedule": "iterative",
                           "student": "resnet8", "teacher_arch": "resnet8"}, "built for unstructured masks only")]:
        with pytest.raises(ConfigError, match=says):
            DistillConfig.from_dict(values)
