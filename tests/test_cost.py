"""MACs per image: dense counts from torch's FlopCounterMode against the textbook sum over layers, and
effective counts that scale each masked layer by its kept fraction (docs/sparsity.md, "Cost")."""
import pytest
import torch
import torch.nn as nn

from trainables.cost import count_macs, effective_macs
from trainables.models import create_model
from trainables.sparsity import init_masks


def textbook_macs(model: nn.Module, image_size: int) -> dict[str, int]:
    """conv: C_in / groups x C_out x k_h x k_w x H_out x W_out; linear: in x out (per image), from the
    output shapes a forward hook sees."""
    out_shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: out_shapes.__setitem__(name, o.shape)))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    macs = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            h, w = out_shapes[name][-2:]
            macs[name] = m.in_channels // m.groups * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * h * w
        elif isinstance(m, nn.Linear):
            macs[name] = m.in_features * m.out_features
    return macs


@pytest.mark.parametrize("spec, size", [("resnet20", 32), ("torchvision:mobilenet_v3_small", 64)])
def test_dense_macs_are_the_textbook_sum_over_conv_and_linear_layers(spec, size):
    model = create_model(spec, 10)
    total, layers = count_macs(model, size)
    want = textbook_macs(model, size)
    assert layers == want
    assert total == sum(want.values())  # nothing else in these networks is a matrix product
    if spec == "resnet20":
        # The first conv by hand: 3 x 16 x 3 x 3 x 32 x 32 = 442,368; the classifier 64 x 10 = 640.
        assert layers["conv1"] == 442_368 and layers["fc"] == 640
        assert total == 40_813_184  # ResNet20's often-quoted 41 M MACs


def test_effective_macs_scale_each_masked_layer_by_its_exact_density():
    model = create_model("torchvision:mobilenet_v3_small", 10)
    total, layers = count_macs(model, 64)
    masks = init_masks(model, 0.1, "ERK", seed=0)
    want = total - sum(layers[k.removesuffix(".weight")] * (1 - float(m.sum()) / m.numel()) for k, m in masks.items())
    assert effective_macs(total, layers, masks) == round(want)
    assert effective_macs(total, layers, masks) < total
    ones = {k: torch.ones_like(m) for k, m in masks.items()}
    assert effective_macs(total, layers, ones) == total  # a dense mask costs the dense count


def test_counting_leaves_the_model_and_the_random_stream_as_they_were():
    model = create_model("resnet20", 10).train()
    torch.manual_seed(5)
    count_macs(model, 32)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert model.training and torch.equal(after, torch.rand(1))


def test_every_epoch_reports_dense_and_effective_macs_and_the_effective_count_follows_pruning(tiny_teacher_file):
    from trainables import DistillRun

    # Magnitude pruning of the teacher's copy, iterative: density 1 -> 0.25 over epochs 0, 1, 2.
    run = DistillRun({"dataset": "synthetic", "synthetic_size": 200, "teacher": str(tiny_teacher_file),
                      "teacher_arch": "resnet8", "student": "resnet8", "method": "kd", "sparse_init": "magnitude",
                      "prune_schedule": "iterative", "prune_steps": 3, "prune_interval": 1, "density": 0.25,
                      "epochs": 3, "batch_size": 50}, device="cpu")
    total, layers = count_macs(create_model("resnet8", 10), 32)
    seen = [run.train_epoch() for _ in range(3)]
    assert all(m["macs_dense"] == total and m["teacher_macs"] == total for m in seen)  # the teacher is a resnet8
    effective = [m["macs_effective"] for m in seen]
    assert effective[0] > effective[1] > effective[2] == effective_macs(total, layers, run.masks)
    assert run.state_dict()["cost"] == run.cost  # what a checkpoint records
