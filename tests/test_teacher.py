import subprocess
import sys

import pytest
import torch

from trainables.models import create_model
from trainables.teacher import TeacherError, load_teacher, read_teacher_file


def test_teacher_trained_with_the_cli_loads_back_with_its_recorded_accuracy(tmp_path):
    out = tmp_path / "t.pt"
    r = subprocess.run([sys.executable, "-m", "tuner.teacher", "--arch", "resnet8", "--dataset", "synthetic",
                        "--epochs", "1", "--set", "synthetic_size=300", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    blob = read_teacher_file(out)
    assert blob["arch"] == "resnet8" and blob["dataset"] == "synthetic" and blob["num_classes"] == 10
    assert f"{blob['test_acc']:.2f}%" in r.stdout
    model, info = load_teacher(out, "resnet8", 10)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # The recorded accuracy is the accuracy of the stored weights.
    from trainables.data import load_splits
    from trainables.run import DistillRun
    run = DistillRun({"dataset": "synthetic", "synthetic_size": 300, "student": "resnet8", "teacher": "none",
                      "method": "ft", "density": 1.0, "sparse_init": "uniform"},
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
