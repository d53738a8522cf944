"""DistillRun: one loop, config errors, exact resume."""
import pytest
import torch

from trainables import ConfigError, DistillConfig, DistillRun
from trainables.data import load_splits

TINY = dict(dataset="synthetic", synthetic_size=400, student="resnet8", teacher_arch="resnet8", epochs=3,
            batch_size=32, lr=0.05, density=0.5, sparse_init="ERK", fg_size=4, seed=1)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'alhpa'"):
        DistillConfig.from_dict({"alhpa": 1.0})


@pytest.mark.parametrize("bad,match", [
    ({"density": 0.0}, "density"), ({"density": 1.5}, "density"), ({"density": 0.5, "sparsity": 0.5}, "either"),
    ({"epochs": 0}, "epochs"), ({"alpha": "high"}, "wrong type"), ({"sparse_init": "random"}, "sparse_init"),
    ({"student": "resnet21"}, "student"), ({"bg_weight": -0.1}, "bg_weight"),
    ({"sfkd_norm": "area"}, "sfkd_norm"), ({"cache_views": 0}, "cache_views"),
])
def test_bad_values_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig.from_dict(bad)


def test_sparsity_key_is_the_complement_of_density():
    assert DistillConfig.from_dict({"sparsity": 0.9}).density == pytest.approx(0.1)


def test_fg_size_larger_than_the_distilled_map_fails_before_training(tiny_teacher_file):
    with pytest.raises(ConfigError, match="fg_size"):
        DistillRun({**TINY, "teacher": str(tiny_teacher_file), "fg_size": 9})


def test_dense_student_trains_and_reports_loss_parts(tiny_teacher_file):
    run = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "density": 1.0, "sparse_init": "uniform"})
    m = run.step()
    assert m["density"] == 1.0 and m["epoch"] == 1
    for k in ("loss_ce", "loss_kd", "loss_fg", "loss_bg", "lr", "img_per_s", "val_acc", "val_acc5"):
        assert k in m
    assert m["loss_kd"] > 0 and m["loss_fg"] > 0 and m["loss_bg"] > 0


def test_run_restored_after_epoch_one_gives_the_same_epoch_two_metrics(tiny_teacher_file):
    cfg = {**TINY, "teacher": str(tiny_teacher_file)}
    data = load_splits("synthetic", synthetic_size=400, split_seed=1)
    straight = DistillRun(cfg, data=data)
    straight.step()
    expected = straight.step()

    first = DistillRun(cfg, data=data)
    first.step()
    saved = first.state_dict()
    torch.manual_seed(999)  # disturb the global RNG: the restore must not depend on it
    resumed = DistillRun(cfg, data=data)
    resumed.load_state_dict(saved)
    got = resumed.step()
    for k in ("loss", "loss_ce", "loss_kd", "loss_fg", "loss_bg", "train_acc", "val_acc", "val_acc5", "lr", "density"):
        assert got[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("method", ["ft", "kd", "fitnet", "at", "sp", "sfkd"])
def test_every_distillation_method_trains_an_epoch(tiny_teacher_file, method):
    run = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "method": method, "epochs": 1, "synthetic_size": 200})
    m = run.step()
    assert m["loss"] > 0 and not m["diverged"]
    # docs/method.md, Baselines: AT and SP are CE plus their own term, with no KD unless an arm sets beta.
    active = {"ft": [], "kd": ["kd"], "fitnet": ["kd", "fg"], "at": ["at"], "sp": ["sp"],
              "sfkd": ["kd", "fg", "bg"]}[method]
    for part in ("kd", "fg", "bg", "at", "sp"):
        assert (m[f"loss_{part}"] > 0) == (part in active), part


def test_channel_mismatch_gets_a_trainable_connector(tmp_path):
    from trainables.models import create_model
    from trainables.teacher_file import save_teacher

    path = save_teacher(tmp_path / "t.pt", create_model("resnet8x4", 10), "resnet8x4", "synthetic", 10, 0.0)
    run = DistillRun({**TINY, "teacher": str(path), "teacher_arch": "resnet8x4", "epochs": 1, "synthetic_size": 200})
    conn = run.connectors[0]
    assert conn.conv.weight.shape == (256, 64, 1, 1)
    before = conn.conv.weight.detach().clone()
    run.train_epoch()
    assert not torch.equal(before, conn.conv.weight)


def _first_losses(cfg: dict, steps: int) -> list[float]:
    run = DistillRun(cfg, device="cpu")
    run.student.train()
    losses = []
    for (x, y), _ in zip(run.train_loader, range(steps)):
        loss, _, _ = run._losses(x, y, *run._teacher_outputs(x, None, None))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        losses.append(loss.item())
    return losses


def test_two_runs_with_the_same_seed_build_the_same_student_in_one_process(tiny_teacher_file):
    # Regression: a cold shape cache used to draw from the global RNG after the run's seed was set.
    from trainables.models.taps import tap_shapes

    tap_shapes.cache_clear()
    cfg = {**TINY, "teacher": str(tiny_teacher_file), "density": 0.3}
    first, second = DistillRun(cfg, device="cpu"), DistillRun(cfg, device="cpu")
    for a, b in zip(first.student.state_dict().values(), second.student.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_and_eager_training_give_matching_losses(tiny_teacher_file, backend):
    cfg = {**TINY, "teacher": str(tiny_teacher_file), "density": 0.3, "beta": 0.5, "method": "sfkd"}
    eager = _first_losses(cfg, 5)
    compiled = _first_losses({**cfg, "compile": True, "compile_backend": backend}, 5)
    # aot_eager runs the same kernels; inductor fuses them, so its sums round differently.
    assert compiled == pytest.approx(eager, rel=1e-6 if backend == "aot_eager" else 1e-3)


def test_a_loss_that_is_not_finite_or_explodes_past_1000x_the_first_epochs_is_divergence():
    from trainables.run import divergence

    assert divergence(float("nan"), 2.0) == "loss became nan"
    assert divergence(float("inf"), None) == "loss became inf"
    assert divergence(2001.0, 2.0).startswith("loss exploded to 2001, 1000x the first epoch's 2")
    assert divergence(1999.0, 2.0) is None  # 999.5x: large, but not orders of magnitude
    assert divergence(5.0, None) is None  # the first epoch is its own reference


def test_an_exploding_run_reports_diverged_with_its_reason(tiny_teacher_file):
    cfg = {**TINY, "teacher": str(tiny_teacher_file), "epochs": 2, "synthetic_size": 200}
    run = DistillRun(cfg)
    first = run.step()
    assert not first["diverged"] and run.first_loss == first["loss"]
    # Resumed from a state whose first epoch's loss was 10^4 times smaller than this run's: the next
    # epoch's loss is then "orders of magnitude above its first epoch's".
    state = run.state_dict()
    state["first_loss"] = first["loss"] / 1e4
    run = DistillRun(cfg)
    run.load_state_dict(state)
    second = run.step()
    assert second["diverged"] and second["diverged_reason"].startswith("loss exploded to ")
    assert second["diverged_reason"].endswith("at epoch 2") and "val_acc" not in second
