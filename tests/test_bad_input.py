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
    (root / "final_ok.yaml").write_text("dataset: synthetic\nmethod: ft\nteacher: none\nepochs: 1\n")
    _bad_files(root)
    _bad_weights(root)
    return root


class _RunsCode:
    """A pickle that would create a file if unpickled: the tool must refuse it without running it."""

    def __reduce__(self):
        return (open, (str(Path(__file__).parent / "PICKLE_RAN"), "w"))


def _bad_weights(root: Path) -> None:
    """Weights of a user's own model, each wrong in one way (docs/models.md, Weights)."""
    torch.manual_seed(0)
    good = create_model("torchvision:resnet18", 10).state_dict()
    torch.save(create_model("torchvision:mobilenet_v3_small", 10).state_dict(), root / "w_other_arch.pt")
    torch.save(create_model("torchvision:resnet18", 7).state_dict(), root / "w_other_classes.pt")
    torch.save(good, root / "w_cut.pt")
    (root / "w_cut.pt").write_bytes((root / "w_cut.pt").read_bytes()[:100_000])
    torch.save({"model": good, "trainer": _RunsCode()}, root / "w_pickle.pt")
    torch.save(good, root / "w_good.pt")
    torch.save(create_model("torchvision:resnet18", 1000).state_dict(), root / "w_imagenet_head.pt")
    (root / "user_model.py").write_text("import torch.nn as nn\n\ndef build(num_classes):\n    return 'not a module'\n")


def _png(path: Path, size=16, seed=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    Image.fromarray(torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()).save(path)


def _tree(root: Path, bad: dict | None = None, classes=("c0", "c1"), per_class=3, empty=()):
    """An ImageFolder tree of small PNGs; `bad` puts named files (bytes, or a size for an odd image) in
    train/<last class>/, decoded last, so nothing is decoded or cached before the bad one is met."""
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            if split == "train" and c in empty:
                continue
            for i in range(per_class):
                _png(root / split / c / f"{i}.png", seed=i)
    for name, content in (bad or {}).items():
        target = root / "train" / classes[-1] / name
        if isinstance(content, int):
            _png(target, size=content)
        else:
            target.write_bytes(content)
    return root


def _sparse_file(path: Path, payload) -> None:
    """A sparse checkpoint whose header and checksum are right for whatever payload it holds."""
    import io
    import json
    import struct

    from trainables.sparsity.sparse_checkpoint import MAGIC

    buf = io.BytesIO()
    torch.save(payload, buf)
    blob = buf.getvalue()
    head = json.dumps({"format": "sfkd-sparse-v1", "sha256": hashlib.sha256(blob).hexdigest(), "payload_bytes": len(blob),
                       "scheduled_density": 0.5, "measured_density": 0.5, "nonzero_params": 0}).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(head)) + head + blob)


def _bad_files(root: Path) -> None:
    """Files of every kind the tool reads, each damaged in one way."""
    import gzip
    import io
    import tarfile

    from PIL import Image

    jpeg = io.BytesIO()
    Image.fromarray(torch.zeros(16, 16, 3, dtype=torch.uint8).numpy()).save(jpeg, format="JPEG")
    _tree(root / "tree_corrupt", {"z.jpg": bytes(range(256)) * 4})
    _tree(root / "tree_truncated", {"z.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2]})
    _tree(root / "tree_zero", {"z.jpg": b""})
    _tree(root / "tree_text", {"z.png": b"this is a text file, not a picture\n"})
    _tree(root / "tree_sizes", {"z.png": 20})
    _tree(root / "tree_empty_class", empty=("c1",))
    _tree(root / "tree_one_class", classes=("only",))
    (root / "notgzip.tar.gz").write_text("plain text with an archive's name\n")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        tar.add(root / "tree_one_class", arcname="tree")
    (root / "cut.tar.gz").write_bytes(gzip.compress(tar_bytes.getvalue())[:300])
    (root / "binary.yaml").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x81]) * 64)
    (root / "final_list.yaml").write_text("- dataset: synthetic\n")
    (root / "final_binary.yaml").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x81]) * 64)
    # Teacher files: the right format without weights, no tensors at all, weights that are NaN.
    torch.save({"format": "sfkd-teacher-v1", "arch": "resnet8", "num_classes": 10, "test_acc": 50.0},
               root / "teacher_no_state.pt")
    torch.save({"model": {"conv1.weight": [1, 2, 3]}}, root / "teacher_not_tensors.pt")
    nan_model = create_model("resnet8", 10)
    with torch.no_grad():
        next(nan_model.parameters()).fill_(float("nan"))
    save_teacher(root / "teacher_nan.pt", nan_model, "resnet8", "synthetic", 10, 50.0)
    # Sparse checkpoints whose checksum is right but whose payload is not one.
    _sparse_file(root / "payload_list.sfkd", [1, 2, 3])
    _sparse_file(root / "payload_keys.sfkd", {"values": torch.zeros(3), "bitmasks": torch.zeros(1, dtype=torch.uint8)})
    # A search folder whose search.json was cut off (and a Ray state beside it, so --resume reads it).
    trunc = root / "sfkd_runs" / "cut-search"
    trunc.mkdir(parents=True)
    (trunc / "search.json").write_text('{"space": "smoke", "space_file": "/x/smo')
    (trunc / "tuner.pkl").write_bytes(b"")
    (trunc / "mlflow_pending.jsonl").write_text('{"op": "terminate", "run_id": "r", "status": "FINISHED", "seq": 0}\n')


def _snapshot(root: Path) -> dict:
    """Every file's bytes and every folder under root: a new run folder, sqlite file or MLflow record
    (which changes mlflow.db) shows as a difference."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


S = ["-m", "tuner.search", "--space", "smoke"]
CASES = [  # (id, argv, what the line must say)
    ("unknown space", ["-m", "tuner.search", "--space", "no_such_space"], "unknown space 'no_such_space'"),
    ("space typo", ["-m", "tuner.search", "--space", "smokee"], "unknown space 'smokee'; did you mean 'smoke'?"),
    ("config key typo", S + ["--set", "alhpa=0.3"], "unknown config key; did you mean 'alpha'?"),
    ("dataset typo", S + ["--dataset", "cifar11"], "dataset: unknown value 'cifar11'; did you mean 'cifar10'?"),
    ("data dir with synthetic data", S + ["--data-dir", "{r}"], "dataset is synthetic, which reads no folder"),
    ("teacher file near chance", S + ["--set", "teacher={r}/chance.pt"],
     "not clearly above chance (10.00% for 10 classes)"),
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
    ("unknown model", S + ["--set", "student=resnet21"], "student: unknown model 'resnet21'; did you mean 'resnet"),
    ("unknown dataset", S + ["--dataset", "imagenet"], "dataset: unknown value 'imagenet'"),
    ("unknown init method", S + ["--set", "sparse_init=random"], "sparse_init: unknown value 'random'"),
    ("unknown sparsity pattern", S + ["--set", "sparsity_pattern=blocky"], "sparsity_pattern: unknown value 'blocky'"),
    ("N:M unquoted", S + ["--set", "sparsity_pattern=2:4"], "YAML reads an unquoted N:M such as 2:4 as a base-60"),
    ("N:M backwards", S + ["--set", "sparsity_pattern='4:2'"], "N:M needs 0 < N < M"),
    ("N:M with another density", S + ["--set", "sparsity_pattern='1:4'", "--set", "sparse_init=uniform"],
     "density 0.5 cannot hold with it"),
    ("N:M with ERK", S + ["--set", "sparsity_pattern='2:4'"], "sparse_init must be uniform"),
    ("channel with ERK", S + ["--set", "sparsity_pattern=channel"], "channel ranks channels by the L2 norm"),
    ("channel multiple that rules out the density", S + ["--set", "sparsity_pattern=channel", "--set",
                                                          "sparse_init=uniform", "--set", "channel_multiple=8"],
     "channel pruning in multiples of 8 channels reaches density 0.5327 at best, not within 0.02 of 0.5"),
    ("channel multiple of zero", S + ["--set", "channel_multiple=0"], "channel_multiple: 0 is out of range"),
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
    ("study arm typo", ["-m", "tuner.search", "--space", "study_methods", "--arms", "kd,sfdk"],
     "study.only: no arm 'sfdk'; did you mean 'sfkd'?"),
    ("study arms without their reference", ["-m", "tuner.search", "--space", "study_patterns", "--arms",
                                            "resnet20_channel_50,resnet18_unstructured_50"],
     "no arm with sparsity_pattern=unstructured for student=resnet20, density=0.5, so its arms have nothing "
     "to be paired with; --arms (study.only) left its arms out"),
    ("arms of a search that has none", S + ["--arms", "kd"], "study.only: the space has no arms to choose from"),
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
     "unknown model 'resnet21'"),
]
IMAGEFOLDER = ["--dataset", "imagefolder", "--set", "teacher=none", "--set", "method=ft", "--set", "fg_size=2"]
# Rule 1: everything that can be checked is checked before the first record (what Ray, Optuna or the
# tracking store would refuse only once the search had started).
RULE_1 = [
    ("search seed not an integer", S + ["--set", "search.seed=abc"], "search.seed: expected an integer >= 0, got 'abc'"),
    ("quniform low not a multiple of q", S + ["--set", "bg_weight={{quniform: [0.15, 1.0, 0.1]}}"],
     "bg_weight: quniform needs low and high that are multiples of q"),
    ("quniform high not a multiple of q", S + ["--set", "bg_weight={{quniform: [0.1, 0.95, 0.2]}}"],
     "bg_weight: quniform needs low and high that are multiples of q"),
    ("uniform bound of inf", S + ["--set", "gamma={{uniform: [0.1, .inf]}}"], "gamma: uniform bounds must be finite numbers"),
    ("loguniform bound of nan", S + ["--set", "lr={{loguniform: [.nan, 0.1]}}"], "lr: loguniform bounds must be finite"),
    ("randint bounds not integers", S + ["--set", "fg_size={{randint: [1.5, 4]}}"], "fg_size: randint bounds must be integers"),
    ("tracking URI of no known scheme", S + ["--tracking-uri", "foo://somewhere/x"],
     "tracking URI foo://somewhere/x: MLflow has no tracking store for scheme 'foo'"),
    ("tracking sqlite in a missing folder", S + ["--tracking-uri", "sqlite:///{r}/no_folder/m.db"],
     "no_folder does not exist"),
    ("tracking sqlite that is not a database", S + ["--tracking-uri", "sqlite:///{r}/afile"], "afile is not a sqlite database"),
    ("tracking sqlite that is a folder", S + ["--tracking-uri", "sqlite:///{r}/empty"], "empty is a folder, not a sqlite"),
    ("tracking database that refuses", S + ["--tracking-uri", "postgresql+psycopg://u:p@127.0.0.1:9/db"],
     "tracking URI 127.0.0.1:9/db: the database cannot be reached"),
    ("search metric unknown", S + ["--set", "search.metric=val_accuracy"], "search.metric: 'val_accuracy'"),
    ("export: no store here", ["-m", "tuner.export", "--experiment", "smoke", "--tracking-uri", "sqlite:///{r}/none.db"],
     "none.db does not exist, so it holds no search"),
    # Outputs are checked before the work that fills them (a teacher trained for an hour, a final run).
    ("teacher: --out a folder", ["-m", "tuner.teacher", "--arch", "resnet8", "--dataset", "synthetic", "--out", "{r}/empty"],
     "empty is a folder; expected a file to write"),
    ("teacher: --out under a file", ["-m", "tuner.teacher", "--arch", "resnet8", "--dataset", "synthetic", "--out",
                                     "{r}/afile/t.pt"], "afile is not a writable folder"),
    ("final: --out a file", ["-m", "tuner.final", "--config", "{r}/final_ok.yaml", "--out", "{r}/afile"],
     "afile is a file; expected a folder to write"),
    ("export: --out a folder", ["-m", "tuner.export", "--experiment", "smoke", "--out", "{r}/empty"],
     "empty is a folder; expected a file to write"),
    ("checkpoint: --dense a folder", ["-m", "tuner.checkpoint", "{r}/sfkd_runs/smoke-old/student.sfkd", "--dense", "{r}/empty"],
     "empty is a folder; expected a file to write"),
    ("heatmaps: --out a folder", ["-m", "tuner.heatmaps", "--runs", "abc", "--out", "{r}/empty"],
     "empty is a folder; expected a file to write"),
]
# Rule 2: every file is read defensively; a bad one is one line naming it and what is wrong with it.
RULE_2 = [
    ("corrupt jpeg", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_corrupt"], "tree_corrupt/train/c1/z.jpg cannot be decoded"),
    ("truncated jpeg", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_truncated"], "tree_truncated/train/c1/z.jpg cannot be decoded"),
    ("zero-byte jpeg", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_zero"], "tree_zero/train/c1/z.jpg is empty"),
    ("text named .png", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_text"], "tree_text/train/c1/z.png cannot be decoded"),
    ("images of two sizes", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_sizes"], "tree_sizes/train/c1/z.png is 20x20"),
    ("a tree too large to hold in memory", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_sizes", "--set", "image_size=100000"],
     "tree_sizes: its 13 images decoded at 100000x100000 take 390.0 GB in memory, over the limit of"),
    ("archive that is not gzip", S + IMAGEFOLDER + ["--data-dir", "{r}/notgzip.tar.gz"],
     "notgzip.tar.gz cannot be read as a .tar.gz"),
    ("archive cut off", S + IMAGEFOLDER + ["--data-dir", "{r}/cut.tar.gz"], "cut.tar.gz cannot be"),
    ("space file of binary bytes", ["-m", "tuner.search", "--space", "{r}/binary.yaml"], "binary.yaml cannot be read as text"),
    ("final: config that is a list", ["-m", "tuner.final", "--config", "{r}/final_list.yaml"],
     "final_list.yaml: expected a mapping of config keys"),
    ("final: config of binary bytes", ["-m", "tuner.final", "--config", "{r}/final_binary.yaml"],
     "final_binary.yaml cannot be read as text"),
    ("teacher of our format without weights", S + ["--set", "teacher={r}/teacher_no_state.pt"],
     "teacher_no_state.pt says it is sfkd-teacher-v1 but holds no state_dict"),
    ("teacher whose state is not tensors", S + ["--set", "teacher={r}/teacher_not_tensors.pt"],
     "teacher_not_tensors.pt holds no state_dict"),
    ("checkpoint payload not a mapping", ["-m", "tuner.checkpoint", "{r}/payload_list.sfkd"],
     "payload_list.sfkd: checkpoint payload is a list, not the expected mapping"),
    ("checkpoint payload missing keys", ["-m", "tuner.checkpoint", "{r}/payload_keys.sfkd"],
     "payload_keys.sfkd: checkpoint payload has no valid 'shapes'"),
    ("resume: search.json cut off", S + ["--resume", "--name", "cut-search"], "cut-search/search.json is not valid JSON"),
    ("sync: search.json cut off", ["-m", "tuner.sync", "--run-dir", "{r}/sfkd_runs/cut-search"],
     "cut-search/search.json is not valid JSON"),
]
# Rule 3: values are checked for meaning, not only for type.
RULE_3 = [
    ("lr of inf", S + ["--set", "lr=.inf"], "lr: inf is not a finite number"),
    ("lr of nan", S + ["--set", "lr=.nan"], "lr: nan is not a finite number"),
    ("temperature of inf", S + ["--set", "temperature=.inf"], "temperature: inf is not a finite number"),
    ("density of nan", S + ["--set", "density=.nan"], "density: nan is not a finite number"),
    ("gpu share of nan", S + ["--gpus-per-trial", "nan"], "--gpus-per-trial nan: expected a finite number >= 0"),
    ("cpus of inf", S + ["--cpus-per-trial", "inf"], "--cpus-per-trial inf: expected a finite number > 0"),
    ("cpus in the space of inf", S + ["--set", "resources.cpu=.inf"], "resources.cpu: expected a finite number >= 0, got inf"),
    ("epochs a boolean", S + ["--set", "epochs=true"], "epochs: True has the wrong type; expected int"),
    ("num_samples a boolean", S + ["--set", "search.num_samples=true"], "search.num_samples: expected an integer >= 1, got True"),
    ("gpu share a boolean", S + ["--set", "resources.gpu=true"], "resources.gpu: expected a finite number >= 0, got True"),
    ("one synthetic class", S + ["--set", "synthetic_classes=1"], "synthetic_classes: 1 is out of range"),
    ("a class with no training images", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_empty_class"],
     "tree_empty_class/train/c1 holds no images"),
    ("a dataset of one class", S + IMAGEFOLDER + ["--data-dir", "{r}/tree_one_class"], "a classifier needs at least 2"),
    ("teacher with nan weights", S + ["--set", "teacher={r}/teacher_nan.pt"],
     "teacher_nan.pt has weights that are not finite (nan or inf in conv1.weight)"),
    ("choice holding nan", S + ["--set", "beta={{choice: [0.5, .nan]}}"], "beta: choice values must be finite"),
]
# Rule 6: a name is one folder name, and a run folder belongs to one search.
RULE_6 = [
    ("name that leaves the storage", S + ["--name", "../x"], "--name '../x': a run name is one folder name"),
    ("name with a slash", S + ["--name", "a/b"], "--name 'a/b': a run name is one folder name"),
    ("name dot", S + ["--name", "."], "--name '.': a run name is one folder name"),
    ("name dot dot", S + ["--name", ".."], "--name '..': a run name is one folder name"),
    ("empty name", S + ["--name", ""], "--name '': a run name is one folder name"),
    ("name with surrounding spaces", S + ["--name", " x"], "--name ' x': a run name is one folder name"),
    ("name of another search's folder", S + ["--name", "smoke-old"], "smoke-old already exists (another search's run folder)"),
    ("resume: name that leaves the storage", S + ["--resume", "--name", "../recorded"],
     "--name '../recorded': a run name is one folder name"),
]
# Your own model: sources, weights and taps (docs/models.md).
TV = ["--set", "teacher_arch=torchvision:resnet18", "--set", "method=kd"]  # KD: no square to fit a 2x2 map
YOUR_MODEL = [
    ("teacher weights of another architecture", S + TV + ["--set", "teacher={r}/w_other_arch.pt"],
     "w_other_arch.pt does not fit torchvision:resnet18 with 10 classes: missing key 'conv1.weight'"),
    ("teacher weights of another class count", S + TV + ["--set", "teacher={r}/w_other_classes.pt"],
     "w_other_classes.pt does not fit torchvision:resnet18 with 10 classes: 'fc.weight' is (7, 512)"),
    ("teacher weights cut off", S + TV + ["--set", "teacher={r}/w_cut.pt"],
     "w_cut.pt cannot be read as a PyTorch checkpoint"),
    ("teacher pickle that would run code", S + TV + ["--set", "teacher={r}/w_pickle.pt"],
     "w_pickle.pt cannot be read as a PyTorch checkpoint (it holds Python objects other than tensors"),
    ("student weights of another architecture", S + ["--set", "student=torchvision:resnet18", "--set", "method=kd",
                                                     "--set", "student_weights={r}/w_other_arch.pt"],
     "w_other_arch.pt does not fit torchvision:resnet18: missing key 'conv1.weight'"),
    ("a tap that does not exist", S + TV + ["--set", "method=sfkd", "--set", "fg_size=1", "--set",
                                            "teacher={r}/w_good.pt", "--set", "feature_stages=[layer5]"],
     "feature_stages: resnet8 has no module 'layer5'; the closest are"),
    ("a teacher tap that does not exist", S + TV + ["--set", "method=sfkd", "--set", "fg_size=1", "--set",
                                                    "teacher={r}/w_good.pt", "--set", "teacher_feature_stages=[layer9]"],
     "teacher_feature_stages: torchvision:resnet18 has no module 'layer9'; the closest are layer"),
    ("a numbered stage of a torchvision model", S + ["--set", "student=torchvision:resnet18", "--set",
                                                      "feature_stages=[2]"],
     "feature_stages: torchvision:resnet18 has no numbered stages: name its modules"),
    ("unknown torchvision model", S + ["--set", "student=torchvision:resnet19"],
     "student: model torchvision:resnet19: torchvision has no classification model 'resnet19'; did you mean 'resnet18'?"),
    ("unknown model source", S + ["--set", "student=torchvison:resnet18"], "unknown source 'torchvison'; did you mean"),
    ("user factory that returns no module", S + ["--set", "student=module:{r}/user_model.py:build"],
     "the factory returned a str, not a torch.nn.Module"),
    ("user factory that does not exist", S + ["--set", "student=module:{r}/user_model.py:buld"],
     "has no callable 'buld'; did you mean 'build'?"),
    ("user model file that does not exist", S + ["--set", "student=module:{r}/nowhere.py:build"], "nowhere.py does not exist"),
]
CASES += RULE_1 + RULE_2 + RULE_3 + RULE_6 + YOUR_MODEL


def _run_case(recorded: Path, base: Path, index: int, argv: list[str]):
    """Runs one case in its own copy of the recorded folder and returns the folder's snapshots before and
    after it. The copy is removed once snapshotted: with the torchvision weight files it is ~180 MB, and
    keeping ~130 of them filled a CI disk."""
    work = base / f"case{index}"
    shutil.copytree(recorded, work)
    before = _snapshot(work)
    r = subprocess.run([sys.executable, *[a.format(r=work) for a in argv]], cwd=work, capture_output=True,
                       text=True, timeout=300)
    after = _snapshot(work)
    shutil.rmtree(work)
    return before, after, r


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
    before, after, r = outcomes[index]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert after == before
    assert not (Path(__file__).parent / "PICKLE_RAN").exists()  # no case unpickled code


def test_there_are_at_least_25_bad_inputs_and_four_of_each_promised_rule():
    assert len(CASES) >= 85
    assert min(len(RULE_1), len(RULE_2), len(RULE_3), len(RULE_6)) >= 4 and len(YOUR_MODEL) >= 5


def test_an_auto_teacher_near_chance_stops_the_search_before_anything_is_recorded(tmp_path):
    # One SGD step (one epoch of 20 images) leaves the resnet8 teacher at chance on the 10 synthetic classes.
    r = subprocess.run([sys.executable, *S, "--set", "teacher_epochs=1", "--set", "train_subset=20",
                        "--storage-path", str(tmp_path / "runs")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    # Before it, only the teacher's own progress bar (stderr) and what the search found (stdout).
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("teacher resnet8:")]
    assert len(lines) == 1 and lines[0].startswith("error: teacher resnet8 (auto, 1 epochs) has validation top-1")
    # The teacher trained as a Ray task; its epochs still reached the console.
    assert "teacher resnet8: epoch 1/1 loss " in r.stderr
    assert "not clearly above chance (10.00% for 10 classes)" in lines[0]
    # What the search found is printed before any training.
    assert "data: synthetic (generated): 20 training / " in r.stdout and "10 classes, 32x32" in r.stdout
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["teachers"]  # no run folder left behind
