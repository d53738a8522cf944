import subprocess
import sys

import pytest
import torch

from trainables.models import create_model
from trainables.teacher_file import TeacherError, load_teacher, read_teacher_file


def test_teacher_trained_with_the_cli_loads_back_with_its_recorded_accuracy(tmp_path):
    out = tmp_path / "t.pt"
    r = subprocess.run([sys.executable, "-m", "tuner.teacher", "--arch", "resnet8", "--dataset", "synthetic",
                        "--epochs", "1", "--set", "synthetic_size=300", "--set", "precision=fp32", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    blob = read_teacher_file(out)
    assert blob["arch"] == "resnet8" and blob["dataset"] == "synthetic" and blob["num_classes"] == 10
    # By default it trains on the training split only and records that, so a search may use it.
    assert (blob["trained_on"], blob["split_seed"], blob["val_fraction"]) == ("train", 0, 0.1)
    assert f"{blob['test_acc']:.2f}%" in r.stdout
    model, info = load_teacher(out, "resnet8", 10)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # The recorded accuracy is the accuracy of the stored weights (fp32 both ways: in bf16 a barely trained
    # model's near-tied logits can flip an image between two layouts).
    from trainables.data import load_splits
    from trainables.run import DistillRun
    run = DistillRun({"dataset": "synthetic", "synthetic_size": 300, "student": "resnet8", "teacher": "none",
                      "method": "ft", "density": 1.0, "sparse_init": "uniform", "precision": "fp32"},
                     data=load_splits("synthetic", synthetic_size=300, full_train=True))
    assert run.evaluate("test", model=model)["acc"] == pytest.approx(info["test_acc"], abs=1e-6)


def test_repdistiller_style_file_with_module_prefix_loads(tmp_path):
    model = create_model("resnet8", 10)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 240}, tmp_path / "r.pth")
    loaded, _ = load_teacher(tmp_path / "r.pth", "resnet8", 10)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_teacher_for_another_architecture_or_class_count_is_refused(tiny_teacher_file, tmp_path):
    with pytest.raises(TeacherError, match="is a resnet8"):
        load_teacher(tiny_teacher_file, "resnet20", 10)
    with pytest.raises(TeacherError, match="classes"):
        load_teacher(tiny_teacher_file, "resnet8", 100)
    torch.save({"model": create_model("resnet8", 100).state_dict()}, tmp_path / "r.pth")
    with pytest.raises(TeacherError, match="does not fit"):
        load_teacher(tmp_path / "r.pth", "resnet8", 10)


def test_the_final_run_says_what_is_short_about_its_teacher_and_the_one_command_that_fixes_it():
    from trainables.config import DistillConfig
    from tuner.final import teacher_budget_note

    cfg = DistillConfig.from_dict({"teacher": "/runs/teachers/resnet110.pt", "teacher_epochs": 240, "epochs": 240,
                                   "dataset": "cifar100", "data_dir": "/data/c100"})
    # A file the user trained for 8 epochs with tuner.teacher: the epochs are what is short.
    mine = teacher_budget_note(cfg, {"epochs": 8, "trained_on": "train", "test_acc": 40.46, "origin": "tuner.teacher"})
    assert mine.startswith("note: teacher resnet110.pt was trained for 8 epochs (on train, test top-1 40.46%): "
                           "fewer than the recipe's teacher budget (teacher_epochs 240).")
    assert ("python -m tuner.teacher --arch resnet110 --dataset cifar100 --data-dir /data/c100 --epochs 240 "
            "--train-on train+val --out teachers/resnet110-cifar100-e240.pt") in mine
    assert mine.endswith("then run this again with --set teacher=teachers/resnet110-cifar100-e240.pt")
    assert "pass --set teacher=FILE" not in mine and mine.count("\n") == 0
    # The search's auto teacher, capped by its --epochs: the note says that is why.
    auto = teacher_budget_note(cfg, {"epochs": 2, "trained_on": "train", "test_acc": 30.0, "origin": "auto"})
    assert "it is the search's auto teacher, cut to that by the search's --epochs (teacher_epochs 240)" in auto
    assert teacher_budget_note(cfg, {"epochs": 240}) is None
    assert teacher_budget_note(cfg, {}) is None  # a file with no recorded recipe: nothing to compare


def test_a_final_run_of_a_teacherless_config_trains_and_registers(tmp_path):
    import yaml

    from tuner import final

    cfg = {"method": "ft", "teacher": "none", "dataset": "synthetic", "synthetic_size": 300, "student": "resnet8",
           "teacher_arch": "resnet8", "epochs": 1, "batch_size": 64, "density": 0.5}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    assert final.main(["--config", str(tmp_path / "ft.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                       "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "student.sfkd").is_file()


def test_a_teacher_must_reach_twice_chance_or_half_way_to_100_where_that_is_lower():
    from trainables.teacher_file import check_worth_distilling, worth_distilling_bar

    # 10 classes: chance 10, bar 20. 3 classes: 33.3 -> min(66.7, 66.7). 2 classes: min(100, 75) = 75.
    assert worth_distilling_bar(10) == pytest.approx(20.0) and worth_distilling_bar(2) == pytest.approx(75.0)
    assert worth_distilling_bar(3) == pytest.approx(200 / 3)
    check_worth_distilling(80.0, "t.pt", 2)  # a good binary teacher passes (under "twice chance" it could not)
    with pytest.raises(TeacherError, match=r"validation top-1 70.00%, not clearly above chance \(50.00% for 2"):
        check_worth_distilling(70.0, "t.pt", 2)
    check_worth_distilling(20.0, "t.pt", 10)
    with pytest.raises(TeacherError, match="not clearly above chance"):
        check_worth_distilling(19.9, "t.pt", 10)
