"""Your own model (docs/models.md): torchvision, timm and user code as students and teachers, tapped by
module name, sparsified by role with exact counts, loaded from the weight formats users have."""
import io
import pickle

import pytest
import torch
import torch.nn as nn

from trainables.config import ConfigError, DistillConfig
from trainables.models import create_model
from trainables.models.sources import ModelSourceError, check_spec
from trainables.models.taps import TapError, forward_taps, resolve_taps, tap_shapes
from trainables.sparsity import init_masks
from trainables.sparsity.layers import layer_roles, maskable_parameters
from trainables.teacher_file import TeacherError, load_student_weights, load_teacher, read_teacher_file

USER_CODE = '''
import torch.nn as nn


class Small(nn.Module):
    """Defines its classifier before its features, so module order is not execution order."""

    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(16, num_classes)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=8),
                                  nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.head(self.pool(self.body(x)).flatten(1))


def build(num_classes):
    return Small(num_classes)


def not_a_model(num_classes):
    return "a string"
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_CODE)
    return path


# -- sources ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, classes", [("torchvision:resnet18", 7), ("torchvision:mobilenet_v3_small", 7),
                                           ("timm:resnet10t", 7), ("resnet20", 7)])
def test_every_source_builds_a_module_with_the_datas_classes(spec, classes):
    model = create_model(spec, classes)
    assert isinstance(model, nn.Module) and model.arch == spec
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, classes)


def test_user_code_by_file_and_factory_builds_the_users_module(user_file):
    model = create_model(f"module:{user_file}:build", 5)
    assert type(model).__name__ == "Small" and model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("spec, expect", [
    ("torchvision:resnet19", "torchvision has no classification model 'resnet19'; did you mean 'resnet18'?"),
    ("torchvison:resnet18", "unknown source 'torchvison'; did you mean 'torchvision'?"),
    ("timm:resnet10q", "timm has no model 'resnet10q'"),
    ("resnet21", "unknown model 'resnet21'; did you mean"),
    ("module:{f}:buld", "has no callable 'buld'; did you mean 'build'?"),
    ("module:{d}/nope.py:build", "nope.py does not exist"),
    ("module:{f}", "expected module:path/to/file.py:factory"),
])
def test_a_spec_that_names_nothing_is_one_line_with_a_did_you_mean(user_file, spec, expect):
    with pytest.raises(ModelSourceError) as e:
        check_spec(spec.format(f=user_file, d=user_file.parent))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_a_factory_that_returns_no_module_is_refused(user_file):
    with pytest.raises(ModelSourceError, match="returned a str, not a torch.nn.Module"):
        create_model(f"module:{user_file}:not_a_model", 5)


def test_the_config_accepts_every_source_and_says_which_key_is_wrong(user_file):
    cfg = DistillConfig(student="torchvision:mobilenet_v3_small", teacher_arch="torchvision:resnet18",
                        feature_stages=["features"], teacher_feature_stages=["layer4"])
    assert cfg.teacher_taps == ["layer4"]
    with pytest.raises(ConfigError, match="^student: model torchvision:resnet19"):
        DistillConfig(student="torchvision:resnet19")
    with pytest.raises(ConfigError, match="teacher_feature_stages has 2 taps and feature_stages 1"):
        DistillConfig(feature_stages=[-1], teacher_feature_stages=["layer3", "layer4"])


# -- taps ------------------------------------------------------------------------------------------
def test_a_named_tap_reads_the_output_of_that_module_exactly():
    model = create_model("torchvision:resnet18", 10).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, (m3, m4) = forward_taps(model, x, ["layer3", "layer4"])
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        l3 = model.layer3(model.layer2(model.layer1(h)))
        l4 = model.layer4(l3)
    assert torch.allclose(m3, l3) and torch.allclose(m4, l4) and torch.allclose(logits, model(x))
    assert not model.layer3._forward_hooks  # the hooks live for one call


@pytest.mark.parametrize("spec, size, name, shape", [
    ("torchvision:resnet18", 64, "layer4", (512, 2, 2)),
    ("torchvision:resnet18", 32, "layer3", (256, 2, 2)),  # layer4 is 1x1 at 32 px: no spatial map to split
    ("torchvision:mobilenet_v3_small", 64, "features", (576, 2, 2)),
    ("timm:resnet10t", 64, "layer4", (512, 2, 2)),
])
def test_minus_one_finds_the_last_spatial_map_before_global_pooling(spec, size, name, shape):
    assert tap_shapes(spec, (-1,), 10, size) == ((name,), (shape,))


def test_the_zoo_keeps_its_stage_indices_and_takes_names_too():
    taps, shapes = tap_shapes("resnet20", (-1, 2), 10, 32)  # stages: stem, layer1, layer2, layer3
    assert taps == (-1, 2) and shapes == ((64, 8, 8), (32, 16, 16))
    assert tap_shapes("resnet20", ("layer3",), 10, 32) == (("layer3",), ((64, 8, 8),))


def test_a_tap_that_does_not_exist_lists_the_closest_real_names():
    model = create_model("torchvision:resnet18", 10)
    with pytest.raises(TapError) as e:
        resolve_taps(model, ["layer5"], 64)
    assert str(e.value) == "torchvision:resnet18 has no module 'layer5'; the closest are layer4, layer3, layer2"
    with pytest.raises(TapError, match="has no numbered stages: name its modules"):
        resolve_taps(model, [2], 64)
    with pytest.raises(ConfigError, match="^feature_stages: torchvision:resnet18 has no module 'layer5'"):
        from trainables.stages import check_feature_config
        check_feature_config(DistillConfig(student="torchvision:resnet18", teacher_arch="torchvision:resnet18",
                                           feature_stages=["layer5"]), 10, 64)


# -- sparsity on any architecture ------------------------------------------------------------------
def _erk_raw(shape):
    n_out, n_in = shape[0], shape[1]
    if len(shape) == 4:
        return (n_out + n_in + shape[2] + shape[3]) / (n_out * n_in * shape[2] * shape[3])
    return (n_out + n_in) / (n_out * n_in)


FOREIGN = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:mobilenetv3_small_050"]


@pytest.mark.parametrize("spec", FOREIGN)
@pytest.mark.parametrize("method", ["uniform", "uniform+", "ER", "ERK", "SNIP", "GraSP", "magnitude"])
def test_every_init_keeps_exactly_the_target_count_on_foreign_models(spec, method):
    torch.manual_seed(0)
    model = create_model(spec, 10)
    params = maskable_parameters(model)
    total = sum(p.numel() for p in params.values())
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert (len(depthwise) > 0) == ("mobilenet" in spec)  # depthwise layers are among the masked ones
    assert all(f"{n}.weight" in params for n in depthwise)
    kw = {"seed": 1, "image_size": 32}
    if method in ("SNIP", "GraSP"):
        g = torch.Generator().manual_seed(0)
        kw["batches"] = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))]
    masks = init_masks(model, 0.1, method, **kw)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
    if method == "uniform+":
        roles = layer_roles(model, 32)
        assert masks[roles["input"]].all()  # the convolution that sees the image stays dense
        assert masks[roles["classifier"]].float().mean().item() >= 0.2 - 1 / masks[roles["classifier"]].numel()


@pytest.mark.parametrize("spec", FOREIGN)
def test_erk_gives_each_layer_the_density_of_its_formula(spec):
    """d_l = eps * (n_out + n_in + k_h + k_w) / (n_out n_in k_h k_w), one eps for every layer not made dense;
    a dense layer is one whose formula would exceed 1 (Evci et al. 2020)."""
    model = create_model(spec, 10)
    params = maskable_parameters(model)
    masks = init_masks(model, 0.1, "ERK", seed=0)
    sparse = {k: masks[k].float().mean().item() / _erk_raw(p.shape) for k, p in params.items() if not masks[k].all()}
    eps = sorted(sparse.values())[len(sparse) // 2]
    for k, ratio in sparse.items():  # each layer's kept count is round(d_l n_l): within one weight
        assert abs(ratio - eps) * _erk_raw(params[k].shape) * params[k].numel() <= 1.0 + 1e-6, k
    for k, p in params.items():
        if masks[k].all():
            assert eps * _erk_raw(p.shape) >= 1.0 - 1.0 / p.numel(), k


def test_uniform_plus_finds_the_input_conv_and_classifier_by_role_not_by_definition_order(user_file):
    model = create_model(f"module:{user_file}:build", 10)
    assert list(maskable_parameters(model))[0] == "head.weight"  # defined first, runs last
    assert layer_roles(model, 32) == {"input": "body.0.weight", "classifier": "head.weight"}
    masks = init_masks(model, 0.5, "uniform+", seed=0)
    assert masks["body.0.weight"].all()


# -- weights ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(3)
    return create_model("torchvision:resnet18", 10).state_dict()


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("form", ["state_dict", "model", "state_dict_key", "module_prefix", "safetensors"])
def test_a_teacher_loads_from_every_weight_format(tmp_path, resnet18_state, form):
    from safetensors.torch import save_file

    if form == "safetensors":
        path = tmp_path / "t.safetensors"
        save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    else:
        obj = {"state_dict": resnet18_state, "model": {"model": resnet18_state},
               "state_dict_key": {"state_dict": resnet18_state, "epoch": 90},
               "module_prefix": {f"module.{k}": v for k, v in resnet18_state.items()}}[form]
        path = _save(tmp_path, "t.pt", obj)
    teacher, _ = load_teacher(path, "torchvision:resnet18", 10)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in resnet18_state.items())
    assert read_teacher_file(path.read_bytes())["state_dict"].keys() == resnet18_state.keys()  # as shipped bytes


@pytest.mark.parametrize("case, expect", [
    ("other architecture", "does not fit torchvision:resnet18 with 10 classes: missing key 'conv1.weight'"),
    ("other class count", "does not fit torchvision:resnet18 with 10 classes: 'fc.weight' is (3, 512), the model's is (10, 512)"),
    ("extra key", "unexpected key 'extra.weight'"),
    ("truncated", "cannot be read as a PyTorch checkpoint"),
    ("safetensors truncated", "cannot be read as safetensors"),
])
def test_bad_teacher_weights_name_the_first_key_or_the_file(tmp_path, resnet18_state, case, expect):
    from safetensors.torch import save_file

    if case == "other architecture":
        path = _save(tmp_path, "t.pt", create_model("torchvision:mobilenet_v3_small", 10).state_dict())
    elif case == "other class count":
        path = _save(tmp_path, "t.pt", create_model("torchvision:resnet18", 3).state_dict())
    elif case == "extra key":
        path = _save(tmp_path, "t.pt", {**resnet18_state, "extra.weight": torch.zeros(1)})
    elif case == "truncated":
        path = _save(tmp_path, "t.pt", resnet18_state)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path = tmp_path / "t.safetensors"
        save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(TeacherError) as e:
        load_teacher(path, "torchvision:resnet18", 10)
    assert expect in str(e.value) and "\n" not in str(e.value)


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/sfkd-pickle-ran", "w"))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, resnet18_state):
    import os

    marker = "/tmp/sfkd-pickle-ran"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"model": resnet18_state, "hook": _Boom()}, buf)
    path.write_bytes(buf.getvalue())
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_Boom(), f)
    for p in (path, tmp_path / "plain.pkl"):
        with pytest.raises(TeacherError, match="holds Python objects other than tensors, which are never unpickled"):
            load_teacher(p, "torchvision:resnet18", 10)
    assert not os.path.exists(marker)


def test_student_weights_of_another_class_count_keep_all_but_a_fresh_classifier(tmp_path):
    torch.manual_seed(5)
    pretrained = create_model("torchvision:mobilenet_v3_small", 1000).state_dict()
    path = _save(tmp_path, "imagenet.pt", pretrained)
    torch.manual_seed(6)
    student = create_model("torchvision:mobilenet_v3_small", 10)
    fresh_head = student.classifier[3].weight.clone()
    note = load_student_weights(student, path, "classifier.3.weight", 10)
    assert note == (f"student_weights {path}: its classifier classifier.3 is (1000, 1024), not 10 classes; "
                    f"it starts freshly initialised, every other layer from the file")
    assert torch.equal(student.features[0][0].weight, pretrained["features.0.0.weight"])
    assert torch.equal(student.classifier[3].weight, fresh_head)
    with pytest.raises(TeacherError, match="student_weights .* does not fit torchvision:resnet18: missing key"):
        load_student_weights(create_model("torchvision:resnet18", 10), path, "fc.weight", 10)


def test_grasp_scores_mobilenet_v3_with_hard_activations_written_in_relu6_and_puts_them_back():
    """PyTorch has no double backward for hardswish/hardsigmoid; GraSP scores with the same functions in
    relu6 and leaves the model as it was."""
    from trainables.sparsity.init import _HardSigmoid2, _HardSwish2

    x = torch.linspace(-5, 5, 101)
    assert torch.allclose(_HardSwish2()(x), nn.Hardswish()(x)) and torch.allclose(_HardSigmoid2()(x), nn.Hardsigmoid()(x))
    model = create_model("torchvision:mobilenet_v3_small", 10)
    before = [type(m) for m in model.modules()]
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    masks = init_masks(model, 0.2, "GraSP", batches=batches)
    assert [type(m) for m in model.modules()] == before
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * sum(m.numel() for m in masks.values()))


# -- image sizes -----------------------------------------------------------------------------------
def test_fg_fraction_gives_the_square_as_a_share_of_each_maps_side():
    """One space for 32 px and 224 px: the square's side is fg_fraction of the distilled map's shorter
    side, rounded, at least one cell; fg_size stays in cells; giving both is an error."""
    cfg = DistillConfig(fg_fraction=0.5)
    assert cfg.fg_size is None
    assert (cfg.fg_cells(8, 8), cfg.fg_cells(7, 7), cfg.fg_cells(2, 2), cfg.fg_cells(1, 1)) == (4, 4, 1, 1)
    assert DistillConfig().fg_cells(8, 8) == 4 and DistillConfig(fg_size=2).fg_cells(16, 16) == 2
    with pytest.raises(ConfigError, match="give either fg_size .* or fg_fraction"):
        DistillConfig(fg_size=4, fg_fraction=0.5)
    assert DistillConfig(fg_size=3).replace(fg_fraction=0.25).fg_cells(8, 8) == 2  # one replaces the other


def test_sfkd_with_fg_fraction_splits_each_map_at_its_own_size():
    from trainables.losses import sfkd_parts
    from trainables.methods import get_method

    cfg = DistillConfig(method="sfkd", fg_fraction=0.5, gamma=1.0, bg_weight=1.0, alpha=0.0, beta=0.0)
    g = torch.Generator().manual_seed(0)
    small = (torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g))
    large = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g))
    logits, y = torch.randn(2, 3, generator=g), torch.tensor([0, 1])
    _, parts = get_method("sfkd").losses(cfg, logits, y, logits, [small, large])
    expect = [sfkd_parts(*small, 2), sfkd_parts(*large, 4)]  # half of 4 is 2 cells, half of 8 is 4
    assert torch.allclose(parts["fg"], expect[0][0] + expect[1][0]) and torch.allclose(parts["bg"], expect[0][1] + expect[1][1])


def test_a_student_with_slow_batchnorm_statistics_has_them_recomputed_before_each_evaluation():
    """torchvision's MobileNetV3 keeps BatchNorm statistics with momentum 0.01: auto recalibration is on
    for it and off for the zoo (momentum 0.1, whose numbers stay as they were). Recomputing is a plain
    average over fixed training images: the same twice, the momentum restored, the random stream intact."""
    from trainables.run import DistillRun

    base = dict(dataset="synthetic", synthetic_size=200, synthetic_classes=4, teacher="none", method="ft",
                epochs=1, batch_size=50, density=0.5)
    assert not DistillRun({**base, "student": "resnet8"}, device="cpu").bn_recalibrate
    run = DistillRun({**base, "student": "torchvision:mobilenet_v3_small"}, device="cpu")
    assert run.bn_recalibrate
    bn = run.student.features[0][1]
    rng = torch.get_rng_state()
    run.recalibrate_batchnorm()
    first = bn.running_mean.clone()
    run.recalibrate_batchnorm()
    assert torch.equal(bn.running_mean, first) and bn.momentum == 0.01 and torch.equal(torch.get_rng_state(), rng)
    import dataclasses

    by_class = torch.argsort(run.data.train_y, stable=True)  # an ImageFolder split is stored class by class
    sorted_data = dataclasses.replace(run.data, train_x=run.data.train_x[by_class], train_y=run.data.train_y[by_class])
    real, run.data = run.data, sorted_data
    run.RECALIBRATION_IMAGES = 20  # the first 20 images of that split are all of class 0
    assert set(run.data.train_y[:20].tolist()) == {0}
    rows = run.recalibration_rows()
    assert set(run.data.train_y[rows].tolist()) == set(range(4)) and torch.equal(rows, run.recalibration_rows())
    run.RECALIBRATION_IMAGES, run.data = DistillRun.RECALIBRATION_IMAGES, real
    assert run.step()["bn_recalibrated"] == 1
    off = DistillRun({**base, "student": "torchvision:mobilenet_v3_small", "bn_recalibrate": False}, device="cpu")
    assert off.step()["bn_recalibrated"] == 0
