"""What makes a comparison fair (docs/method.md, Protocol and Baselines): every difference between two runs
comes from the thing compared, never from the data, the start, the validation images or a leak."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from trainables import DistillConfig, DistillRun
from trainables.models import create_model
from trainables.sparsity import init_masks
from trainables.teacher_file import read_teacher_file, save_teacher

TINY = dict(dataset="synthetic", synthetic_size=400, student="resnet8", teacher_arch="resnet8", epochs=1,
            batch_size=32, lr=0.05, density=0.3, sparse_init="ERK", fg_size=4, seed=3)


class InputRecorder(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student, self.seen = student, []

    def forward(self, x, **kw):
        self.seen.append(x.detach().clone())
        return self.student(x, **kw)


@pytest.mark.parametrize("sparse_init", ["ERK", "uniform", "SNIP"])
def test_ft_kd_fitnet_and_sfkd_with_one_seed_start_from_the_same_student_masks_and_inputs(tiny_teacher_file, sparse_init):
    starts = {}
    for method in ("ft", "kd", "fitnet", "sfkd"):
        run = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "method": method, "sparse_init": sparse_init},
                         device="cpu")
        weights = {k: v.clone() for k, v in run.student.state_dict().items()}
        masks = {k: v.clone() for k, v in run.masks.items()}
        run.student_forward = recorder = InputRecorder(run.student)
        run.train_epoch()
        starts[method] = (weights, masks, recorder.seen)
    ref_w, ref_m, ref_x = starts["ft"]
    for method, (w, m, xs) in starts.items():
        assert all(torch.equal(ref_w[k], w[k]) for k in ref_w), method
        assert all(torch.equal(ref_m[k], m[k]) for k in ref_m), method
        assert len(xs) == len(ref_x) and all(torch.equal(a, b) for a, b in zip(ref_x, xs)), method


def test_another_seed_moves_the_start_but_not_the_validation_images(tiny_teacher_file):
    a = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "seed": 0}, device="cpu")
    b = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "seed": 1}, device="cpu")
    assert torch.equal(a.data.val_x, b.data.val_x) and torch.equal(a.data.val_y, b.data.val_y)
    assert torch.equal(a.data.train_x, b.data.train_x)
    w = "conv1.weight" if "conv1.weight" in a.student.state_dict() else next(iter(a.student.state_dict()))
    assert not torch.equal(a.student.state_dict()[w], b.student.state_dict()[w])
    assert not all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    c = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "seed": 0, "split_seed": 1}, device="cpu")
    assert not torch.equal(a.data.val_x, c.data.val_x)  # split_seed alone moves the split


def test_ft_is_cross_entropy_at_weight_one_whatever_alpha_beta_gamma_say():
    cfg = DistillConfig.from_dict({**TINY, "teacher": "none", "method": "ft", "alpha": 0.3, "beta": 0.7, "gamma": 2.0})
    assert (cfg.alpha, cfg.beta, cfg.gamma) == (1.0, 0.0, 0.0)
    run = DistillRun(cfg, device="cpu")
    x, y = run.data.train_x[:8].float() / 255, run.data.train_y[:8]
    loss, parts, logits = run._losses(x, y)
    assert set(parts) == {"ce"} and loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_at_and_sp_add_kd_only_when_the_arm_sets_beta():
    for method in ("at", "sp"):
        assert DistillConfig.from_dict({"method": method}).beta == 0.0
        assert DistillConfig.from_dict({"method": method}).alpha == 1.0
        assert DistillConfig.from_dict({"method": method, "beta": 0.2}).beta == 0.2
    assert (DistillConfig.from_dict({"method": "kd"}).alpha, DistillConfig.from_dict({"method": "kd"}).beta) == (0.5, 0.5)


def test_scored_inits_score_ten_training_images_of_every_class_by_default(tiny_teacher_file):
    run = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "sparse_init": "SNIP"}, device="cpu")
    batches = run._score_batches()
    labels = torch.cat([y for _, y in batches])
    assert len(labels) == 10 * run.data.num_classes
    assert torch.bincount(labels, minlength=run.data.num_classes).tolist() == [10] * run.data.num_classes
    assert all(len(y) <= run.cfg.batch_size for _, y in batches)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False))


def _scoring_batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 6, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    return [(x[:6], y[:6]), (x[6:], y[6:])]


def _keep_top(scores: dict, keep: int) -> dict:
    flat = torch.cat([s.flatten() for s in scores.values()])
    threshold = flat.topk(keep).values.min()
    return {k: s >= threshold for k, s in scores.items()}


def test_snip_keeps_the_largest_abs_weight_times_gradient_computed_independently():
    net, batches = _tiny_net(), _scoring_batches()
    params = {k: p.detach() for k, p in net.named_parameters()}

    def loss(p):
        return sum(F.cross_entropy(functional_call(net, p, (x,)), y) for x, y in batches)

    g = grad(loss)(params)
    want = _keep_top({k: (params[k] * g[k]).abs() for k in params}, 12)
    got = init_masks(net, 12 / 45, "SNIP", batches=batches)
    assert all(torch.equal(got[k], want[k]) for k in want)
    by_magnitude = _keep_top({k: params[k].abs() for k in params}, 12)
    assert not all(torch.equal(by_magnitude[k], want[k]) for k in want)  # |w| alone would be caught


def test_grasp_keeps_the_weights_whose_removal_least_reduces_gradient_flow():
    # GraSP (Wang et al. 2020) removes the largest -w * (H g); keeping the top of w * (H g) is the same.
    net, batches = _tiny_net(), _scoring_batches()
    params = {k: p.detach() for k, p in net.named_parameters()}
    temperature = 200.0

    def loss(p):
        return sum(F.cross_entropy(functional_call(net, p, (x,)) / temperature, y) for x, y in batches)

    g = grad(loss)(params)
    _, hg = jvp(grad(loss), (params,), (g,))  # H g, the Hessian-gradient product
    score = {k: params[k] * hg[k] for k in params}
    want = _keep_top(score, 12)
    got = init_masks(net, 12 / 45, "GraSP", batches=batches)
    assert all(torch.equal(got[k], want[k]) for k in want)
    flipped = _keep_top({k: -s for k, s in score.items()}, 12)
    assert not all(torch.equal(flipped[k], want[k]) for k in want)  # a flipped sign would be caught


def _teacher_file(tmp_path, trained, **recipe):
    """The trained resnet8's weights (it passes the search's accuracy gate) under the given recipe."""
    model = create_model("resnet8", 10)
    model.load_state_dict(read_teacher_file(trained)["state_dict"])
    return save_teacher(tmp_path / "teacher.pt", model, "resnet8", "synthetic", 10, 50.0, epochs=3, **recipe)


@pytest.mark.parametrize("recipe,refused", [
    ({"trained_on": "train+val", "split_seed": 0, "val_fraction": 0.1, "dataset": "synthetic"}, True),
    ({"trained_on": "train", "split_seed": 1, "val_fraction": 0.1, "dataset": "synthetic"}, True),
    ({"trained_on": "train", "split_seed": 0, "val_fraction": 0.1, "dataset": "synthetic"}, False),
])
def test_the_search_refuses_a_teacher_that_saw_the_validation_split(tmp_path, trained_teacher_file, recipe, refused):
    recipe = {k: v for k, v in recipe.items() if k != "dataset"}
    path = _teacher_file(tmp_path, trained_teacher_file, **recipe)
    r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--set", f"teacher={path}",
                        "--storage-path", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                        "--set", "search.num_samples=1", "--epochs", "1", "--set", "synthetic_size=200", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    if refused:
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(lines) == 1 and "has seen this search's validation images" in lines[0]
        assert not (tmp_path / "m.db").exists()  # refused before anything was recorded
    else:
        assert r.returncode == 0, r.stdout + r.stderr
