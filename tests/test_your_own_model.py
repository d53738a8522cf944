"""The user who arrives with their own model: a torchvision resnet18 they trained themselves on real
images at 64 px, saved as a plain state_dict, distilled into a sparse torchvision mobilenet_v3_small
with SF-KD on named taps; the search, the export, the final run and the registered MLflow model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

CLASSES = ("airplane", "automobile", "frog", "ship")
SIZE = 64
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # what the user normalised with


@pytest.fixture(scope="module")
def folder_64px(cifar10_dir, tmp_path_factory) -> Path:
    """Real CIFAR-10 JPEGs of four classes, upscaled to 64 px: an ImageFolder tree (train/, test/)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cifar64")
    for split, count in (("train", 120), ("test", 40)):
        for c in CLASSES:
            out = root / split / c
            out.mkdir(parents=True)
            for src in sorted((cifar10_dir / split / c).iterdir())[:count]:
                Image.open(src).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(out / f"{src.stem}.png")
    return root


def _train_plain_resnet18(root: Path, epochs: int = 4) -> torch.nn.Module:
    """How a user trained their model: torchvision's resnet18 and transforms, a plain PyTorch loop."""
    import torchvision
    from torchvision import transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.RandomCrop(SIZE, padding=8), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(IMAGENET["mean"], IMAGENET["std"])])
    data = torchvision.datasets.ImageFolder(root / "train", tf)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def users_resnet18(folder_64px, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("users_teacher") / "resnet18_cifar4.pth"
    torch.save(_train_plain_resnet18(folder_64px).state_dict(), path)
    return path


@pytest.mark.slow
def test_a_torchvision_teacher_the_user_has_distils_into_a_sparse_torchvision_student(
        ray_session, folder_64px, users_resnet18, tmp_path):
    space = tmp_path / "mine.yaml"
    space.write_text(yaml.safe_dump({
        "description": "resnet18 (mine) -> mobilenet_v3_small at ERK 0.1, SF-KD on named taps",
        "config": {"dataset": "imagefolder", "data_dir": str(folder_64px), "teacher": str(users_resnet18),
                   "teacher_arch": "torchvision:resnet18", "student": "torchvision:mobilenet_v3_small",
                   "method": "sfkd", "sparse_init": "ERK", "density": 0.1, "feature_stages": ["features.8"],
                   "teacher_feature_stages": ["layer3"], "fg_size": 2, "epochs": 2, "batch_size": 32,
                   "lr_schedule": "cosine", "lr": {"choice": [0.02, 0.05]}, **IMAGENET},
        "search": {"num_samples": 2, "metric": "val_acc", "mode": "max", "searcher": "optuna", "seed": 0,
                   "max_concurrent": 2},
        "scheduler": {"type": "fifo", "max_t": 2}, "resources": {"cpu": 1, "gpu": 0}}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--tracking-uri", uri]
    r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", str(space), "--storage-path",
                        str(tmp_path / "runs"), "--name", "mine", "--quiet", "--address",
                        ray_session.get_runtime_context().gcs_address, *common], cwd=tmp_path, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    teacher_line = [x for x in r.stdout.splitlines() if x.startswith("teacher resnet18_cifar4.pth: validation top-1")]
    assert teacher_line, r.stdout  # a plain state_dict records no accuracy: the search measured it

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mine")
    children = [x for x in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in x.data.tags]
    assert len(children) == 2
    from trainables.models import create_model
    from trainables.sparsity import init_masks

    # ERK's allocation does not depend on the seed: the layers it keeps dense here are MobileNetV3's
    # depthwise convolutions (fan-in 1 x 3 x 3), its squeeze-excitation layers and the classifier.
    erk = init_masks(create_model("torchvision:mobilenet_v3_small", len(CLASSES)), 0.1, "ERK")
    dense = {k.removesuffix(".weight") for k, m in erk.items() if m.all()}
    assert "features.1.block.0.0" in dense and "features.0.0" not in dense
    for c in children:
        # 48 x 4 x 4 and 256 x 4 x 4 at 64 px: a central 2 x 2 foreground, a connector for the channels
        assert c.data.params["taps_student"] == "features.8" and c.data.params["taps_teacher"] == "layer3"
        assert abs(c.data.metrics["density"] - 0.1) < 1e-3
        assert set(c.data.tags["sfkd.dense_layers"].split(",")) == dense

    best = tmp_path / "best.yaml"
    r = subprocess.run([sys.executable, "-m", "tuner.export", "--experiment", "mine", "--out", str(best), *common],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    exported = yaml.safe_load(best.read_text())
    assert exported["student"] == "torchvision:mobilenet_v3_small" and exported["feature_stages"] == ["features.8"]

    r = subprocess.run([sys.executable, "-m", "tuner.final", "--config", str(best), "--out", str(tmp_path / "final"),
                        "--set", "epochs=1", *common], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    ckpt = next((tmp_path / "final").rglob("*.sfkd"))

    import mlflow

    from trainables.sparsity import load_sparse

    mlflow.set_tracking_uri(uri)
    (model_version,) = client.search_model_versions("")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_version.name}/{model_version.version}")
    state, masks, meta = load_sparse(ckpt)
    student = create_model(meta["config"]["student"], len(CLASSES))
    student.load_state_dict(state)
    student.eval()
    pre = json.loads(next((tmp_path / "final").rglob("preprocessing.json")).read_text())
    x = (torch.rand(4, 3, SIZE, SIZE) - torch.tensor(pre["mean"])[:, None, None]) / torch.tensor(pre["std"])[:, None, None]
    with torch.inference_mode():
        expected = student(x).numpy()
    got = pyfunc.predict(x.numpy())
    assert got.shape == (4, len(CLASSES)) and abs(got - expected).max() < 1e-4
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.1 * sum(m.numel() for m in masks.values()))

    # The registered student can be the teacher of a next search: models:/NAME/VERSION becomes a teacher
    # file of its architecture whose outputs are the registered model's.
    from trainables.teacher_file import load_teacher
    from tuner.registered_teacher import resolve_registered_teacher

    values = {"teacher": f"models:/{model_version.name}/{model_version.version}", "teacher_arch": "resnet110"}
    source = values["teacher"]
    said = resolve_registered_teacher(values, uri)
    assert values["teacher_arch"] == "torchvision:mobilenet_v3_small" and said.startswith(f"teacher {source}: the ")
    teacher, info = load_teacher(values["teacher"], values["teacher_arch"], len(CLASSES), image_size=SIZE)
    with torch.inference_mode():
        assert torch.allclose(teacher(x), torch.as_tensor(expected), atol=1e-5)
    assert info["registered_model"] == f"models:/{model_version.name}/{model_version.version}"


USER_NET = '''
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def build(num_classes):
    return TinyNet(num_classes)
'''


def _final_run_of(student: str, tmp_path: Path) -> tuple[str, Path]:
    """`tuner.final` of a one-epoch sparse `student` on synthetic data into a fresh sqlite store: (store
    URI, the final sparse checkpoint)."""
    config = tmp_path / "final.yaml"
    config.write_text(yaml.safe_dump({"dataset": "synthetic", "synthetic_size": 200, "student": student,
                                      "teacher": "none", "method": "ft", "epochs": 1, "density": 0.3,
                                      "sparse_init": "ERK", "batch_size": 50}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = subprocess.run([sys.executable, "-m", "tuner.final", "--config", str(config), "--out", str(tmp_path / "final"),
                        "--tracking-uri", uri], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return uri, next((tmp_path / "final").rglob("*.sfkd"))


@pytest.mark.slow
def test_a_user_code_student_is_registered_with_its_code_and_exports_dense_without_the_users_file(tmp_path):
    """The final run of a module:FILE.py student registers a model that predicts in a fresh process after
    the user's file is gone (it travels as a code path), and tuner.checkpoint --dense writes a state_dict
    the user's own class loads."""
    import shutil

    src = tmp_path / "elsewhere" / "my_net.py"
    src.parent.mkdir()
    src.write_text(USER_NET)
    uri, ckpt = _final_run_of(f"module:{src}:build", tmp_path)
    r = subprocess.run([sys.executable, "-m", "tuner.checkpoint", str(ckpt), "--dense", str(tmp_path / "dense.pt")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    from trainables.models import create_model
    from trainables.sparsity import load_sparse

    state, masks, meta = load_sparse(ckpt)
    student = create_model(meta["config"]["student"], 10)
    student.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = student.eval()(x)
    # The user's own class, given the dense export: the same outputs, the pruned weights zero.
    sys.path.insert(0, str(src.parent))
    try:
        import my_net

        mine = my_net.build(10)
        mine.load_state_dict(torch.load(tmp_path / "dense.pt", weights_only=True))
    finally:
        sys.path.remove(str(src.parent))
        sys.modules.pop("my_net", None)
    with torch.inference_mode():
        assert torch.allclose(mine.eval()(x), expected, atol=1e-5)
    assert int((mine.body[0].weight == 0).sum()) >= int((~masks["body.0.weight"].bool()).sum())

    shutil.rmtree(src.parent)  # the user's file is gone; the registered model carries its own copy
    torch.save(x, tmp_path / "x.pt")
    probe = ("import mlflow, sys, torch\n"
             f"mlflow.set_tracking_uri({uri!r})\n"
             "(v,) = mlflow.MlflowClient().search_model_versions('')\n"
             "m = mlflow.pyfunc.load_model(f'models:/{v.name}/{v.version}')\n"
             f"out = m.predict(torch.load({str(tmp_path / 'x.pt')!r}).numpy())\n"
             f"torch.save(torch.as_tensor(out), {str(tmp_path / 'out.pt')!r})\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-4)


@pytest.mark.slow
def test_a_timm_student_is_registered_and_predicts_by_name_as_its_checkpoint_does(tmp_path):
    """The final run of a timm student registers a model whose requirements name timm at this version,
    and which, loaded by name, gives the checkpoint's logits."""
    uri, ckpt = _final_run_of("timm:resnet10t", tmp_path)
    import mlflow
    import timm

    from trainables.models import create_model
    from trainables.sparsity import load_sparse

    state, _, meta = load_sparse(ckpt)
    student = create_model(meta["config"]["student"], 10)
    student.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = student.eval()(x).numpy()
    mlflow.set_tracking_uri(uri)
    (v,) = mlflow.MlflowClient().search_model_versions("")
    uri_model = f"models:/{v.name}/{v.version}"
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri_model}/requirements.txt", dst_path=str(tmp_path)))
    assert f"timm=={timm.__version__.split('+')[0]}" in requirements.read_text().split()
    got = mlflow.pyfunc.load_model(uri_model).predict(x.numpy())
    assert abs(got - expected).max() < 1e-4
