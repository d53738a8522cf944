"""The search end to end: real Ray, real MLflow sqlite store, real training on synthetic data."""
import json
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from trainables.precision import resolve_precision
from trainables.sparsity import load_sparse
from tuner import checkpoint, export, final, heatmaps, search, search_runs
from tuner import report as report_cli
from tuner.optuna_study import STUDY_FILE, load_study
from tuner.tracking import PARENT_TAG

REPO = Path(__file__).resolve().parents[1]


def _runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sfkd.kind") == "search"]
    return client, parents, runs


@pytest.mark.slow
def test_smoke_search_records_every_trial_stops_some_early_and_exports_a_runnable_best_config(smoke_search, tmp_path):
    uri = smoke_search.uri
    assert smoke_search.rc == 0
    client, parents, runs = _runs(uri, smoke_search.experiment)
    assert client.get_experiment_by_name("smoke") is None  # --experiment named it, not the space
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 8  # smoke's num_samples
    statuses = []
    for child in children:
        ran = int(child.data.tags["sfkd.epochs_run"])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert steps == list(range(1, ran + 1))
        assert child.data.params["density"] == "0.5"
        # The precision the trial really used (auto resolves on the worker's hardware).
        assert child.data.params["precision_used"] == resolve_precision("auto", torch.device("cpu"))
        statuses.append(child.data.tags["sfkd.status"])
    assert "stopped_early" in statuses and "completed" in statuses  # ASHA stopped some before max_t=3

    # The search's own Optuna study, beside the run and on the parent run: told each trial's score
    # under the ranking rule (its best val_acc, not its last), with the space's log scale kept.
    study = load_study(smoke_search.run_dir / STUDY_FILE)
    by_trial = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert len(by_trial) == 8 and study.trials[0].distributions["lr"].log
    for child in children:
        t = by_trial[child.data.tags["sfkd.trial_id"]]
        assert t.value == pytest.approx(child.data.metrics["best_val_acc"])
        assert t.user_attrs["epochs"] == int(child.data.tags["sfkd.epochs_run"])
    assert any(f.path == f"optuna/{STUDY_FILE}" for f in client.list_artifacts(parent.info.run_id, "optuna"))

    best_id = parent.data.tags["sfkd.best_trial"]
    best = next(c for c in children if c.data.tags["sfkd.trial_id"] == best_id)
    local = client.download_artifacts(best.info.run_id, "checkpoint/student.sfkd", str(tmp_path))
    _, masks, meta = load_sparse(local, expect_density=0.5)
    assert meta["measured_density"] == pytest.approx(0.5, abs=1e-3)
    assert best.data.tags["sfkd.checkpoint.density"].startswith("0.5")

    best_yaml = smoke_search.run_dir / "best_config.yaml"
    cfg = yaml.safe_load(best_yaml.read_text())
    assert cfg["student"] == "resnet8" and Path(cfg["teacher"]).is_file() and cfg["epochs"] == 3
    # The auto teacher trained on the training split only: it never saw the validation images.
    from trainables.teacher_file import read_teacher_file

    recipe = read_teacher_file(cfg["teacher"])
    assert (recipe["trained_on"], recipe["split_seed"], recipe["val_fraction"]) == ("train", 0, 0.1)
    assert parent.data.metrics["best_val_acc"] == pytest.approx(best.data.metrics["best_val_acc"])

    # tuner.export writes the same config again, from MLflow alone: by experiment or by the search's run id.
    assert export.main(["--experiment", smoke_search.experiment, "--tracking-uri", uri,
                        "--out", str(tmp_path / "again.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "again.yaml").read_text()) == cfg
    assert export.main(["--run", parent.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "by_run.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "by_run.yaml").read_text()) == cfg

    # tuner.checkpoint verifies the uploaded sparse checkpoint and exports it dense.
    assert checkpoint.main([local, "--dense", str(tmp_path / "dense.pt")]) == 0
    assert (tmp_path / "dense.pt").stat().st_size > 0

    rc = final.main(["--config", str(best_yaml), "--set", "epochs=1", "--tracking-uri", uri])
    assert rc == 0
    # With no --out, the final run writes under the search's --storage-path.
    (final_dir,) = (smoke_search.root / "runs").glob("final-*")
    assert (final_dir / "student.sfkd").is_file()
    finals = [r for r in client.search_runs([parent.info.experiment_id], "tags.`sfkd.kind` = 'final'")]
    assert len(finals) == 1 and "test_acc_last" in finals[0].data.metrics
    # The headline is the last epoch; a best epoch on test is only ever named as selection on test.
    assert "test_acc_best" not in finals[0].data.metrics and "best_test_acc" not in finals[0].data.metrics
    assert "test_acc_best_selected_on_test" in finals[0].data.metrics
    assert finals[0].data.tags["sfkd.search_run_id"] == parent.info.run_id
    versions = client.search_model_versions("name = 'sfkd-resnet8-synthetic'")
    assert versions and versions[0].tags["density"].startswith("0.5")
    # A user of the registered model needs neither the training data nor this code's dataset logic:
    # the class names and the normalisation the model was trained with travel with it.
    from trainables.data import load_splits

    data = load_splits("synthetic", synthetic_size=cfg["synthetic_size"], full_train=True)
    want = {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std), "image_size": 32}
    assert want["classes"] == [f"class{i}" for i in range(10)]
    source = Path(client.download_artifacts(finals[0].info.run_id, "checkpoint", str(tmp_path / "registered")))
    # Exactly: the same floats, through JSON and through the checkpoint.
    assert json.loads((source / "preprocessing.json").read_text()) == want
    _, _, registered_meta = load_sparse(source / "student.sfkd")
    assert registered_meta["extra"]["preprocessing"] == want
    assert [json.loads(versions[0].tags[k]) for k in ("classes", "mean", "std")] == [want["classes"], want["mean"],
                                                                                      want["std"]]
    # The registered version is an MLflow model: it loads by name and predicts the checkpoint's logits.
    from trainables.models import create_model

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"models:/sfkd-resnet8-synthetic/{versions[0].version}")
    state, _, _ = load_sparse(source / "student.sfkd")
    student = create_model("resnet8", 10).eval()
    student.load_state_dict(state)
    batch = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = student(batch).numpy()
    got = loaded.predict(batch.numpy())
    assert got.shape == (6, 10) and float(abs(got - expected).max()) <= 1e-5
    for key in ("density", "nonzero_params", "test_acc_last"):
        assert versions[0].tags[key]
    final_art = {f.path for f in client.list_artifacts(finals[0].info.run_id, "figures")}
    assert {"figures/attention_heatmaps.png", "figures/layer_density.png"} <= final_art
    assert_png(client.download_artifacts(finals[0].info.run_id, "figures/attention_heatmaps.png", str(tmp_path)))


def assert_png(path) -> None:
    """A real, non-empty PNG that an image library can decode."""
    from PIL import Image

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with Image.open(path) as img:
        img.load()
        assert min(img.size) > 200


@pytest.mark.slow
def test_every_trial_logs_heatmaps_and_density_figures_and_the_search_logs_its_report(smoke_search, tmp_path):
    client, parents, runs = _runs(smoke_search.uri, smoke_search.experiment)
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    for child in children:
        names = {f.path for f in client.list_artifacts(child.info.run_id, "figures")}
        assert {"figures/attention_heatmaps.png", "figures/layer_density.png", "figures/probe.pt"} <= names
        assert 0.0 < child.data.metrics["student_fg_share"] <= 1.0
        assert 0.0 < child.data.metrics["teacher_fg_share"] <= 1.0
    some = children[0].info.run_id
    for name in ("attention_heatmaps.png", "layer_density.png"):
        assert_png(client.download_artifacts(some, f"figures/{name}", str(tmp_path / "child")))

    report = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/learning_curves.png", "report/metric_vs_params.png",
            "report/param_importances.png"} <= report  # 8 Optuna trials: enough for importances
    for name in ("learning_curves.png", "metric_vs_params.png", "param_importances.png"):
        assert_png(client.download_artifacts(parent.info.run_id, f"report/{name}", str(tmp_path / "parent")))
    page = Path(client.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path))).read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3
    assert "Top 5 configs" in page and parent.data.tags["sfkd.best_trial"] in page

    # Both CLIs rebuild their pictures from MLflow alone.
    out = tmp_path / "side_by_side.png"
    ids = [c.info.run_id for c in children[:3]]
    assert heatmaps.main(["--runs", *ids, "--tracking-uri", smoke_search.uri, "--out", str(out)]) == 0
    assert_png(out)
    assert report_cli.main(["--run", parent.info.run_id, "--tracking-uri", smoke_search.uri, "--no-log",
                            "--out", str(tmp_path / "rebuilt")]) == 0
    assert_png(tmp_path / "rebuilt" / "learning_curves.png")
    assert (tmp_path / "rebuilt" / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_four_trials_share_one_gpu_at_a_quarter_each_and_train_on_cpu_without_cuda(ray_session, tmp_path,
                                                                                  trained_teacher_file):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", "smoke", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
                      "--name", "gpu", "--gpus-per-trial", "0.25", "--num-samples", "4", "--max-concurrent", "4",
                      "--epochs", "2", "--set", "scheduler.type=fifo", "--set", "synthetic_size=400",
                      "--set", f"teacher={trained_teacher_file}", "--quiet"])
    assert rc == 0
    client, parents, runs = _runs(uri, "smoke")
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(children) == 4
    # Every trial was granted a quarter of the session's one GPU by Ray, so four fit on it at once.
    # (Whether they also overlapped in time depends on how fast each finishes on a loaded CPU,
    # so it is not asserted here: overlap on a real GPU belongs to the GPU rows of BENCHMARKS.md.)
    assert all(c.data.metrics["ray_gpu_ids"] == 1 for c in children)
    assert all(c.data.metrics["ray_gpu_share"] == 0.25 for c in children)
    assert all(c.data.metrics["cuda"] == 0 for c in children)
    assert all(c.data.params["epochs"] == "2" for c in children)


def test_export_picks_the_trial_the_search_chose_when_val_acc_ties(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("ties")
    parent = client.create_run(exp, tags={"sfkd.kind": "search"})
    for trial in ("aaaa", "bbbb", "cccc"):
        child = client.create_run(exp, tags={PARENT_TAG: parent.info.run_id, "sfkd.trial_id": trial,
                                             "sfkd.status": "completed"})
        client.log_metric(child.info.run_id, "best_val_acc", 83.33 if trial != "cccc" else 50.0)
    client.set_tag(parent.info.run_id, "sfkd.best_trial", "bbbb")
    assert search_runs.best_child(client, client.get_run(parent.info.run_id)).data.tags["sfkd.trial_id"] == "bbbb"
    # Without the search's tag (an interrupted search), ties go to the smaller trial id.
    client.delete_tag(parent.info.run_id, "sfkd.best_trial")
    assert search_runs.best_child(client, client.get_run(parent.info.run_id)).data.tags["sfkd.trial_id"] == "aaaa"


def test_registered_model_names_say_which_data_they_were_trained_on():
    from trainables.config import DistillConfig

    def name(**kw):
        return final.default_model_name(DistillConfig.from_dict({"student": "resnet20", **kw}))

    assert name(dataset="cifar10") == "sfkd-resnet20-cifar10"
    assert name(dataset="imagefolder", data_dir="/data/flowers/") == "sfkd-resnet20-flowers"
    assert name(dataset="imagefolder", data_dir="/data/my birds.tar.gz") == "sfkd-resnet20-my-birds"
    assert name(dataset="imagefolder", data_dir="/data/flowers") != name(dataset="imagefolder", data_dir="/data/cars")


@pytest.mark.slow
def test_a_relative_data_dir_given_with_set_reaches_trials_that_run_in_folders_of_their_own(ray_session, tmp_path,
                                                                                          monkeypatch):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("test", 3)):
        for c in range(10):
            (tmp_path / "tree" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(tmp_path / "tree" / split / f"c{c}" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # train_subset is searched, so the data is not sent through the object store: each trial reads
    # the tree itself, from inside its own trial folder, by the path the driver resolved.
    rc = search.main(["--space", "smoke", "--storage-path", "runs", "--tracking-uri", uri, "--name", "relative",
                      "--num-samples", "2", "--epochs", "1", "--set", "scheduler.type=fifo",
                      "--set", "dataset=imagefolder", "--set", "data_dir=tree", "--set", "train_subset={choice: [60, 80]}",
                      "--set", "method=ft", "--set", "teacher=none", "--quiet"])
    assert rc == 0
    _, parents, runs = _runs(uri, "smoke")
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(children) == 2
    for c in children:
        assert c.data.params["data_dir"] == str(tmp_path / "tree")
        assert c.data.tags["sfkd.status"] == "completed" and c.data.metrics["data_shipped"] == 0


@pytest.mark.slow
def test_optuna_dashboard_opens_the_searchs_study_with_the_readme_command(smoke_search, tmp_path):
    import shutil
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = smoke_search.run_dir / STUDY_FILE
    proc = subprocess.Popen([shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard"),
                             f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.monotonic() + 90, None
        while studies is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard never answered"
        (summary,) = studies
        assert summary["study_name"] == "e2e" and summary["directions"] == ["maximize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as r:
            assert len(json.loads(r.read())["trials"]) == 8
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_a_space_ranked_by_val_loss_min_picks_exports_and_reports_its_smallest_loss(ray_session, tmp_path,
                                                                                     trained_teacher_file):
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space["search"].update(metric="val_loss", mode="min", num_samples=4)
    space["config"].update(teacher=str(trained_teacher_file), synthetic_size=600)
    (tmp_path / "by_loss.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", str(tmp_path / "by_loss.yaml"), "--storage-path", str(tmp_path / "runs"),
                      "--tracking-uri", uri, "--name", "loss", "--epochs", "2", "--quiet"])
    assert rc == 0
    client, (parent,), runs = _runs(uri, "by_loss")
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 4
    for c in children:  # each trial's score is the smallest val_loss it reached
        losses = [m.value for m in client.get_metric_history(c.info.run_id, "val_loss")]
        assert c.data.metrics["best_val_loss"] == pytest.approx(min(losses))
    smallest = min(children, key=lambda c: (c.data.metrics["best_val_loss"], c.data.tags["sfkd.trial_id"]))
    assert parent.data.tags["sfkd.best_trial"] == smallest.data.tags["sfkd.trial_id"]
    assert parent.data.metrics["best_val_loss"] == pytest.approx(smallest.data.metrics["best_val_loss"])
    assert export.main(["--run", parent.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "b.yaml")]) == 0
    assert f"# sfkd.trial_id: {smallest.data.tags['sfkd.trial_id']}" in (tmp_path / "b.yaml").read_text()
    study = load_study(tmp_path / "runs" / "loss" / STUDY_FILE)
    assert study.direction.name == "MINIMIZE"
    assert min(t.value for t in study.trials) == pytest.approx(smallest.data.metrics["best_val_loss"])
    page = (tmp_path / "runs" / "loss" / "report" / "report.html").read_text()
    assert "best val_loss" in page
