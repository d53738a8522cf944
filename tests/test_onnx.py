"""The student out of PyTorch: an ONNX file that onnx.checker accepts and whose logits in ONNX Runtime
equal PyTorch's to 1e-4 on real images, for zoo, torchvision, timm and sparse students."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from trainables.data.augment import normalize
from trainables.models import create_model
from trainables.onnx_export import OnnxMismatch, export_onnx, onnx_logits, verify_onnx
from trainables.sparsity import apply_masks, init_masks


@pytest.fixture(scope="module")
def cifar_images(cifar10_dir):
    """16 real CIFAR-10 test images (two per class of the first eight), normalised with CIFAR's statistics."""
    from PIL import Image

    from trainables.data.splits import MEAN_STD

    classes = sorted(p.name for p in (cifar10_dir / "test").iterdir())[:8]
    files = [sorted((cifar10_dir / "test" / c).iterdir())[:2] for c in classes]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                     for pair in files for f in pair])
    mean, std = MEAN_STD["cifar10"]
    return normalize(x, torch.tensor(mean), torch.tensor(std))


@pytest.mark.parametrize("spec", ["resnet20", "vgg8", "torchvision:mobilenet_v3_small", "timm:resnet10t"])
def test_a_sparse_student_exported_to_onnx_gives_pytorchs_logits_in_onnx_runtime(spec, cifar_images, tmp_path):
    torch.manual_seed(0)
    model = create_model(spec, 10)
    apply_masks(model, init_masks(model, 0.1, "ERK", seed=0))
    path = export_onnx(model, tmp_path / "student.onnx", 32)
    assert verify_onnx(path, model, cifar_images) <= 1e-4
    assert onnx_logits(path, cifar_images[:3]).shape == (3, 10)  # the batch axis is dynamic


@pytest.mark.parametrize("spec", ["resnet20", "torchvision:mobilenet_v3_small"])
def test_a_2_of_4_student_exported_to_onnx_gives_pytorchs_logits_in_onnx_runtime(spec, cifar_images, tmp_path):
    from trainables.sparsity import maskable_parameters
    from trainables.sparsity.patterns import check_nm, nm_masks

    torch.manual_seed(0)
    model = create_model(spec, 10)
    masks, _ = nm_masks(maskable_parameters(model), 2, 4)
    apply_masks(model, masks)
    check_nm(masks, 2, 4, {k: p.detach() for k, p in maskable_parameters(model).items()})
    path = export_onnx(model, tmp_path / "student.onnx", 32)
    assert verify_onnx(path, model, cifar_images) <= 1e-4


def test_an_export_that_does_not_match_its_model_is_caught(cifar_images, tmp_path):
    model = create_model("resnet20", 10)
    path = export_onnx(model, tmp_path / "student.onnx", 32)
    with torch.no_grad():
        model.fc.bias += 1.0  # the file no longer computes what the model does
    with pytest.raises(OnnxMismatch, match=r"ONNX Runtime's logits differ from PyTorch's by 1"):
        verify_onnx(path, model, cifar_images)


@pytest.mark.slow
@pytest.mark.parametrize("sparsity", ["density: 0.3\nsparse_init: ERK\n", "sparsity_pattern: '2:4'\n",
                                      "sparsity_pattern: channel\ndensity: 0.5\n"],
                         ids=["unstructured", "2:4", "channel"])
def test_tuner_checkpoint_exports_a_final_runs_student_to_onnx(sparsity, tmp_path):
    config = tmp_path / "final.yaml"
    config.write_text("dataset: synthetic\nsynthetic_size: 200\nstudent: resnet8\nteacher: none\nmethod: ft\n"
                      "epochs: 1\nbatch_size: 50\n" + sparsity)
    r = subprocess.run([sys.executable, "-m", "tuner.final", "--config", str(config), "--out", str(tmp_path / "final"),
                        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test images in ONNX Runtime)" in r.stdout and (tmp_path / "final" / "student.onnx").exists()
    assert "; latency at batch 1 on this CPU: " in r.stdout  # measured and said with the test accuracy
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    final = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert len(final) == 1
    assert {f"latency_ms_b{b}_{e}" for b in (1, 64) for e in ("torch", "onnx")} <= set(final[0].data.metrics)
    # The registered MLflow model loads by name (a channel-pruned student rebuilt to its shapes) and gives the
    # ONNX file's logits.
    from trainables.onnx_export import onnx_logits

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    loaded = mlflow.pyfunc.load_model("models:/sfkd-resnet8-synthetic/1")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert np.abs(loaded.predict(x.numpy()) - onnx_logits(tmp_path / "final" / "student.onnx", x)).max() <= 1e-4
    ckpt = next((tmp_path / "final").rglob("*.sfkd"))
    r = subprocess.run([sys.executable, "-m", "tuner.checkpoint", str(ckpt), "--onnx", str(tmp_path / "again.onnx")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "onnx -> " in r.stdout and (tmp_path / "again.onnx").exists()
