"""Learning on the real CIFAR-10 JPEGs from ../shared/data (skipped with a reason only without them)."""
import pytest

from trainables.run import DistillRun


@pytest.mark.slow
def test_resnet20_learns_real_cifar10_in_four_epochs_on_5000_images(cifar10_dir):
    run = DistillRun({"dataset": "cifar10", "data_dir": str(cifar10_dir), "train_subset": 5000, "val_subset": 2000,
                      "student": "resnet20", "teacher": "none", "method": "ft", "alpha": 1.0, "density": 1.0,
                      "sparse_init": "uniform", "epochs": 4, "seed": 0})
    assert run.data.num_classes == 10 and len(run.data.train_x) == 5000 and len(run.data.val_x) == 2000
    history = [run.step() for _ in range(4)]
    print("val_acc by epoch:", [round(m["val_acc"], 2) for m in history])
    assert history[-1]["val_acc"] > 30.0  # chance is 10%
    assert history[-1]["val_acc5"] > history[-1]["val_acc"]
