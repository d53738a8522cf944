"""Bad input: one line naming what is wrong and what is expected, exit status 2, no traceback, and
nothing already recorded (MLflow runs, checkpoints, best_config.yaml) touched."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.models import create_model
from trainables.sparsity import apply_masks, init_masks, save_sparse
from trainables.teacher_file import save_teacher


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A folder with results a previous search left: an MLflow store, a run folder, a checkpoint."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("recorded")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.create_experiment("smoke", artifact_location=(root / "mlartifacts").as_uri())
    run = client.create_run(exp, tags={"sfkd.kind": "search"})
    client.log_metric(run.info.run_id, "best_val_acc", 81.0)
    client.set_terminated(run.info.run_id)
    old = root / "sfkd_runs" / "smoke-old"
    old.mkdir(parents=True)
    (old / "best_config.yaml").write_text("dataset: synthetic\n")
    torch.manual_seed(0)
    model = create_model("resnet8", 10)
    masks = init_masks(model, 0.5, "ERK")
    apply_masks(model, masks)
    save_sparse(old / "student.sfkd", model.state_dict(), masks, 0.5)
    raw = (old / "student.sfkd").read_bytes()
    (root / "tampered.sfkd").write_bytes(raw[:-1000] + bytes([raw[-1000] ^ 0xFF]) + raw[-999:])
    (root / "truncated.sfkd").write_bytes(raw[:-500])
    save_teacher(root / "t8.pt", create_model("resnet8", 10), "resnet8", "synthetic", 10, 50.0)
    save_teacher(root / "t32.pt", create_model("resnet8", 10), "resnet8", "synthetic", 10, 50.0, image_size=32)
    save_teacher(root / "chance.pt", create_model("resnet8", 10), "resnet8", "synthetic", 10, 11.0, trained_on="train",
                 split_seed=0, val_fraction=0.1)
    (root / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (root / "afile").write_text("a file, not a folder")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("config:\n  alpha: [1, 2\n")
    (root / "list.yaml").write_text("- dataset: synthetic\n")
    (root / "unknown_key.yaml").write_text("config:\n  dataset: synthetic\n  alhpa: 1\n")
    (root / "unknown_section.yaml").write_text("config:\n  dataset: synthetic\nsearhc:\n  num_samples: 2\n")
    (root / "bad_dist.yaml").write_text("config:\n  dataset: synthetic\n  gamma: {uniform: [1.0, 0.1]}\n")
    (root / "bad_dist_name.yaml").write_text("config:\n  dataset: synthetic\n  gamma: {normal: [0, 1]}\n")
    (root / "final_bad.yaml").write_text("dataset: synthetic\nalhpa: 1\n")
    return root


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


S = ["-m", "tuner.search", "--space", "smoke"]
CASES = [  # (id, argv, what the line must say)
    ("unknown space", ["-m", "tuner.search", "--space", "no_such_space"], "unknown space 'no_such_space'"),
    ("space typo", ["-m", "tuner.search", "--space", "smokee"], "unknown space 'smokee'; did you mean 'smoke'?"),
    ("config key typo", S + ["--set", "alhpa=0.3"], "unknown config key; did you mean 'alpha'?"),
    ("dataset typo", S + ["--dataset", "cifar11"], "dataset: unknown value 'cifar11'; did you mean 'cifar10'?"),
    ("data dir with synthetic data", S + ["--data-dir", "{r}"], "dataset is synthetic, which reads no folder"),
    ("teacher file near chance", S + ["--set", "teacher={r}/chance.pt"],
     "teacher chance.pt has test top-1 11.00%, not clearly above chance (10.00% for 10 classes)"),
    ("yaml syntax", ["-m", "tuner.search", "--space", "{r}/bad.yaml"], "bad.yaml: not valid YAML at line"),
    ("yaml not a mapping", ["-m", "tuner.search", "--space", "{r}/list.yaml"], "list.yaml: expected a mapping"),
    ("unknown yaml key", ["-m", "tuner.search", "--space", "{r}/unknown_key.yaml"],
     "config.alhpa: unknown config key; did you mean 'alpha'?"),
    ("unknown section", ["-m", "tuner.search", "--space", "{r}/unknown_section.yaml"], "searhc: unknown section"),
    ("bad bounds", ["-m", "tuner.search", "--space", "{r}/bad_dist.yaml"], "gamma: uniform needs low < high"),
    ("unknown distribution", ["-m", "tuner.search", "--space", "{r}/bad_dist_name.yaml"], "unknown distribution 'normal'"),
    ("distribution arity", S + ["--set", "gamma={{uniform: [0.5]}}"], "gamma: uniform expects [low, high]"),
    ("fg_size too large", S + ["--set", "fg_size=9"], "fg_size=9 does not fit the distilled 8x8 map"),
    ("density zero", S + ["--set", "density=0"], "density: 0.0 is out of range"),
    ("density above one", S + ["--set", "density=1.5"], "density: 1.5 is out of range"),
    ("density and sparsity", S + ["--set", "sparsity=0.5"], "give either density or sparsity"),
    ("zero epochs", S + ["--epochs", "0"], "epochs: 0 is out of range"),
    ("negative epochs", S + ["--epochs", "-3"], "epochs: -3 is out of range"),
    ("wrong type", S + ["--set", "alpha=abc"], "alpha: 'abc' has the wrong type; expected float"),
    ("unknown model", S + ["--set", "student=resnet21"], "student: unknown value 'resnet21'; did you mean 'resnet"),
    ("unknown dataset", S + ["--dataset", "imagenet"], "dataset: unknown value 'imagenet'"),
    ("unknown init method", S + ["--set", "sparse_init=random"], "sparse_init: unknown value 'random'"),
    ("missing data folder", S + ["--dataset", "cifar10", "--data-dir", "{r}/missing"], "does not exist"),
    ("empty data folder", S + ["--dataset", "imagefolder", "--data-dir", "{r}/empty"], "is not an ImageFolder tree"),
    ("missing teacher", S + ["--set", "teacher={r}/missing.pt"], "teacher file"),
    ("teacher for another arch", S + ["--set", "teacher={r}/t8.pt", "--set", "teacher_arch=resnet14",
                                      "--set", "student=resnet14"], "is a resnet8; the config expects teacher_arch resnet14"),
    ("teacher for another class count", S + ["--set", "teacher={r}/t8.pt", "--set", "synthetic_classes=5"],
     "has 10 classes; the dataset has 5"),
    ("teacher trained at another image size", S + ["--set", "teacher={r}/t32.pt", "--set", "image_size=16",
                                                   "--set", "fg_size=2"],
     "t32.pt was trained on 32x32 images; this data is 16x16"),
    ("unreadable teacher", S + ["--set", "teacher={r}/garbage.pt"], "cannot be read as a PyTorch checkpoint"),
    ("storage not writable", S + ["--storage-path", "{r}/afile/runs"], "is not writable"),
    ("storage URI of no known kind", S + ["--storage-path", "nosuch://bucket/runs"],
     "--storage-path nosuch://bucket/runs: Unrecognized filesystem type in URI"),
    ("tracking server that does not answer", S + ["--tracking-uri", "http://127.0.0.1:9"],
     "tracking URI http://127.0.0.1:9: no MLflow server answers there"),
    ("export: tracking server that does not answer", ["-m", "tuner.export", "--experiment", "smoke", "--tracking-uri",
                                                       "http://127.0.0.1:9"], "no MLflow server answers there"),
    ("zero samples", S + ["--num-samples", "0"], "search.num_samples: expected an integer >= 1"),
    ("max_t above epochs", S + ["--set", "scheduler.max_t=10"], "scheduler.max_t: 10 exceeds config.epochs (3)"),
    ("set without value", S + ["--set", "density"], "expected key=value"),
    ("bad flag value", S + ["--num-samples", "x"], "invalid int value"),
    ("gpu on a machine without", S + ["--gpus-per-trial", "1"], "this Ray cluster has no GPU"),
    ("final: missing config", ["-m", "tuner.final", "--config", "{r}/nope.yaml"], "does not exist"),
    ("final: unknown key", ["-m", "tuner.final", "--config", "{r}/final_bad.yaml"],
     "unknown config key 'alhpa'; did you mean 'alpha'?"),
    ("checkpoint tampered", ["-m", "tuner.checkpoint", "{r}/tampered.sfkd"], "checksum does not match"),
    ("checkpoint truncated", ["-m", "tuner.checkpoint", "{r}/truncated.sfkd"], "checksum does not match"),
    ("checkpoint not ours", ["-m", "tuner.checkpoint", "{r}/garbage.pt"], "not an sfkd sparse checkpoint"),
    ("teacher cli: unknown arch", ["-m", "tuner.teacher", "--arch", "resnet21", "--dataset", "synthetic"],
     "unknown value 'resnet21'"),
]


def _run_case(recorded: Path, base: Path, index: int, argv: list[str]):
    work = base / f"case{index}"
    shutil.copytree(recorded, work)
    before = _snapshot(work)
    r = subprocess.run([sys.executable, *[a.format(r=work) for a in argv]], cwd=work, capture_output=True,
                       text=True, timeout=300)
    return work, before, r


@pytest.fixture(scope="module")
def outcomes(recorded, tmp_path_factory):
    """Every case's command, run three at a time (each is a fresh interpreter: mostly import time)."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(_run_case, recorded, base, i, case[1]) for i, case in enumerate(CASES)]
        return [f.result() for f in futures]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_exit_2_and_leaves_recorded_results_untouched(outcomes, index):
    expect = CASES[index][2]
    work, before, r = outcomes[index]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert _snapshot(work) == before


def test_there_are_at_least_25_bad_inputs():
    assert len(CASES) >= 25


def test_an_auto_teacher_near_chance_stops_the_search_before_anything_is_recorded(tmp_path):
    # One SGD step (one epoch of 20 images) leaves the resnet8 teacher at chance on the 10 synthetic classes.
    r = subprocess.run([sys.executable, *S, "--set", "teacher_epochs=1", "--set", "train_subset=20",
                        "--storage-path", str(tmp_path / "runs")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    # Before it, only the teacher's own progress bar (stderr) and what the search found (stdout).
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("teacher resnet8:")]
    assert len(lines) == 1 and lines[0].startswith("error: teacher resnet8 (auto, 1 epochs) has test top-1")
    # The teacher trained as a Ray task; its epochs still reached the console.
    assert "teacher resnet8: epoch 1/1 loss " in r.stderr
    assert "not clearly above chance (10.00% for 10 classes)" in lines[0]
    # What the search found is printed before any training.
    assert "data: synthetic (generated): 20 training / " in r.stdout and "10 classes, 32x32" in r.stdout
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["teachers"]  # no run folder left behind
