"""python -m tuner.final --config best.yaml: train the exported config on train+val, test it, register it."""
import json
import re
import sys
import time
from pathlib import Path

import torch
import yaml

from trainables.config import DistillConfig
from trainables.probe import PROBE_FILE
from trainables.run import DistillRun
from trainables.sparsity import save_sparse
from trainables.teacher_file import read_teacher_file
from tuner.best_config import read_header
from tuner.cli import OneLineParser, output_path, parse_sets, quiet_libraries, run_cli
from tuner.errors import UsageError
from tuner.figures import log_run_figures
from tuner.mlflow_model import log_student_model
from tuner.progress import epoch_postfix, training_bar
from tuner.registered_teacher import resolve_registered_teacher
from tuner.storage import is_uri
from tuner.tracking import SearchTracker, check_tracking_store, normalise_uri

PREPROCESSING_FILE = "preprocessing.json"  # class names, mean/std and image size, beside the checkpoint


def load_config_file(path: Path, overrides: dict) -> DistillConfig:
    if not path.is_file():
        raise UsageError(f"--config {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise UsageError(f"--config {path}: not valid YAML") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path} cannot be read as text ({type(e).__name__})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a mapping of config keys")
    if "sparsity" in overrides:
        values.pop("density", None)
    values.update(overrides)
    if values.get("teacher") not in (None, "auto", "none") and not str(values["teacher"]).startswith("models:/"):
        values["teacher"] = str((path.parent / values["teacher"]).resolve())
    return DistillConfig.from_dict(values)


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.final", description=(
        "Train an exported config on train+val for its full budget, report the last epoch's test top-1/top-5 "
        "(the headline; nothing is selected on test), save the sparse checkpoint, and record and register it "
        "in MLflow."))
    p.add_argument("--config", required=True, help="a best_config.yaml written by a search or tuner.export")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. epochs=1")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--experiment", help="MLflow experiment (default: the search's, else 'final')")
    p.add_argument("--out", help="output folder (default final-<time> under the search's --storage-path, else sfkd_runs/)")
    p.add_argument("--model-name", help="registered model name (default sfkd-<student>-<data>: the dataset, or the "
                                        "folder's name for an ImageFolder dataset)")
    a = p.parse_args(argv)
    path = Path(a.config).resolve()
    cfg = load_config_file(path, parse_sets(a.set))
    if cfg.teacher == "auto":
        raise UsageError("teacher: auto; a final run needs the teacher file the search used")
    header = read_header(path)
    location = header.get("storage_path") or "sfkd_runs"
    storage = Path("sfkd_runs" if is_uri(location) else location)  # a final run's files stay on this machine
    out = output_path("--out", a.out or storage / f"final-{time.strftime('%Y%m%d-%H%M%S')}", folder=True)

    uri = normalise_uri(a.tracking_uri)
    check_tracking_store(uri)
    if cfg.teacher.startswith("models:/"):  # a registered model as the teacher: read into a teacher file first
        values = cfg.to_dict()
        print(resolve_registered_teacher(values, uri), flush=True)
        cfg = DistillConfig.from_dict(values)
    run = DistillRun(cfg, full_train=True)  # reads and checks the data and the teacher before anything is recorded
    for line in run.notes:  # e.g. student_weights whose classifier starts fresh
        print(line, flush=True)
    note = teacher_budget_note(cfg, read_teacher_file(cfg.teacher) if cfg.uses_teacher else {})
    if note:
        print(note, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    tracker = SearchTracker(uri, a.experiment or header.get("experiment", "final"), out)
    (out / "final.json").write_text(json.dumps({"tracking_uri": uri, "experiment": tracker.experiment}, indent=2))
    tags = {"sfkd.kind": "final"}
    if header.get("search_run_id"):
        tags["sfkd.search_run_id"] = header["search_run_id"]
    run_id = tracker.start_parent(f"final-{cfg.student}-d{cfg.density:g}", {**cfg.to_dict(), "precision_used": run.precision},
                                  tags)
    tracker.log_artifact(run_id, str(path), "config")
    tracker.start_writer()  # training never waits on MLflow: a server that stops answering delays only the writes

    bar = training_bar(cfg.epochs, len(run.train_loader), f"final {cfg.student}")
    shown = {}  # the last finished epoch's numbers, shown while the next one runs
    for epoch in range(1, cfg.epochs + 1):
        epoch_postfix(bar, epoch, cfg.epochs, **shown)
        m = run.step("test", on_batch=bar.update)
        tracker.log_metrics(run_id, {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                            step=m["epoch"])
        shown = dict(loss=f"{m['loss']:.3f}", test_acc=f"{m.get('test_acc', float('nan')):.2f}",
                     img_s=f"{m['img_per_s']:.0f}")
        if m["diverged"]:
            bar.close()
            tracker.set_tags(run_id, {"sfkd.status": "diverged", "sfkd.reason": m["diverged_reason"]})
            tracker.end(run_id, "FAILED")
            left = tracker.flush()
            print(f"error: {m['diverged_reason']}; nothing registered" + (
                f" ({left} MLflow writes wait in {out}: python -m tuner.sync --run-dir {out})" if left else ""),
                file=sys.stderr)
            return 1
    epoch_postfix(bar, cfg.epochs, cfg.epochs, **shown)
    bar.close()
    # The headline is the last epoch. The best epoch on test is selection on test: kept only under a
    # name that says so.
    summary = {"test_acc_last": m["test_acc"], "test_acc5_last": m["test_acc5"],
               "test_acc_best_selected_on_test": run.best["best_test_acc"],
               "best_epoch_selected_on_test": run.best["best_epoch"]}
    tracker.log_metrics(run_id, summary, step=cfg.epochs)

    state = run.state_dict()
    ckpt = out / "student.sfkd"
    head = save_sparse(ckpt, state["student"], state["masks"], run.scheduled_density, config=cfg.to_dict(),
                       extra={"precision": run.precision, "preprocessing": run.preprocessing, "cost": run.cost},
                       dense_weights=run.dense_weights)
    (out / PREPROCESSING_FILE).write_text(json.dumps(run.preprocessing, indent=2))
    onnx_file, onnx_gap = export_final_onnx(run, out / "student.onnx")
    latency = final_latency(run, onnx_file)
    tracker.log_metrics(run_id, latency, step=cfg.epochs)
    tracker.log_artifact(run_id, str(ckpt), "checkpoint")
    tracker.log_artifact(run_id, str(onnx_file), "checkpoint")
    tracker.log_artifact(run_id, str(out / PREPROCESSING_FILE), "checkpoint")
    torch.save(run.last_probe, out / PROBE_FILE)
    log_run_figures(tracker, run_id, out / PROBE_FILE, out / "figures")
    model_name = a.model_name or default_model_name(cfg)
    pre = run.preprocessing
    version_tags = {
        "density": f"{head['measured_density']:.6f}", "nonzero_params": head["nonzero_params"],
        "test_acc_last": f"{summary['test_acc_last']:.2f}", "size_bytes": ckpt.stat().st_size,
        "classes": json.dumps(pre["classes"]), "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]),
        "image_size": pre["image_size"], **run.cost}
    if tracker.flush():  # registering needs the run's writes in the store; at most WRITER_DRAIN_S waited
        # The registration and the run's end join the journal, so tuner.sync completes the run as it
        # would have ended: FINISHED, its metrics, its registered model.
        tracker.keep({"op": "register_model", "run_id": run_id, "checkpoint": str(ckpt), "model_name": model_name,
                      "preprocessing": str(out / PREPROCESSING_FILE), "version_tags": version_tags})
        tracker.keep({"op": "terminate", "run_id": run_id, "status": "FINISHED"})
        print(f"error: the MLflow server at {uri} stopped answering; the run's writes and its registration wait in "
              f"{out}: send them with python -m tuner.sync --run-dir {out} (the checkpoint is {ckpt})", file=sys.stderr)
        return 1
    registered = log_student_model(uri, run_id, ckpt, out / PREPROCESSING_FILE, model_name, version_tags)
    tracker.end(run_id)
    optimistic = summary["test_acc_best_selected_on_test"]
    print(f"final {cfg.student} at density {head['measured_density']:.4f}: test top-1 {summary['test_acc_last']:.2f}, "
          f"top-5 {summary['test_acc5_last']:.2f} (last epoch); {run.cost['macs_effective'] / 1e6:,.1f} M MACs per "
          f"image effective of {run.cost['macs_dense'] / 1e6:,.1f} M dense; best epoch on test {optimistic:.2f} "
          f"(epoch {summary['best_epoch_selected_on_test']}, selected on test: optimistic); checkpoint {ckpt}; "
          f"registered {model_name} v{registered}; ONNX {onnx_file} (within {onnx_gap:.1e} of PyTorch on "
          f"{ONNX_CHECK_IMAGES} test images in ONNX Runtime); {latency_phrase(latency)}")
    return 0


LATENCY_MIN_TIME_S = 0.25  # per measurement; python -m tuner.checkpoint --latency measures longer


def final_latency(run, onnx_file: Path) -> dict[str, float]:
    """The student's (and teacher's) median CPU time per batch at batch 1 and 64, eager PyTorch and ONNX
    Runtime, as the metrics the run logs (docs/sparsity.md, "Latency")."""
    from trainables.latency import as_metrics, measure_latency, measure_with_onnx

    size = run.data.image_size
    out = as_metrics(measure_latency(run.student, size, onnx_file, min_time=LATENCY_MIN_TIME_S))
    if run.teacher is not None:
        out.update(as_metrics(measure_with_onnx(run.teacher, size, min_time=LATENCY_MIN_TIME_S), prefix="teacher_"))
    return out


def latency_phrase(latency: dict[str, float]) -> str:
    """'latency at batch 1 on this CPU: 1.20 ms PyTorch, 0.80 ms ONNX Runtime (teacher 3.10 / 2.00)'."""
    text = (f"latency at batch 1 on this CPU: {latency['latency_ms_b1_torch']:.2f} ms PyTorch, "
            f"{latency['latency_ms_b1_onnx']:.2f} ms ONNX Runtime")
    if "teacher_latency_ms_b1_torch" in latency:
        text += f" (teacher {latency['teacher_latency_ms_b1_torch']:.2f} / {latency['teacher_latency_ms_b1_onnx']:.2f})"
    return text


ONNX_CHECK_IMAGES = 64


def export_final_onnx(run, path: Path) -> tuple[Path, float]:
    """The trained student as ONNX beside its checkpoint, verified in ONNX Runtime against PyTorch on the
    first ONNX_CHECK_IMAGES real test images, normalised as the model is fed."""
    import torch

    from trainables.data.augment import normalize
    from trainables.onnx_export import export_onnx, verify_onnx

    data = run.data
    export_onnx(run.student, path, data.image_size)
    images = normalize(data.test_x[:ONNX_CHECK_IMAGES], torch.tensor(data.mean), torch.tensor(data.std))
    return path, verify_onnx(path, run.student, images)


def default_model_name(cfg: DistillConfig) -> str:
    """sfkd-<student>-<data>: the dataset's name, or for an ImageFolder dataset the folder's (or
    archive's) own name, so models trained on different data never share a registered name."""
    data = cfg.dataset
    if cfg.dataset == "imagefolder" and cfg.data_dir:
        data = re.sub(r"\.(tar\.gz|tgz)$", "", Path(cfg.data_dir).expanduser().resolve().name)
    return "sfkd-" + re.sub(r"[^A-Za-z0-9._-]+", "-", f"{cfg.student}-{data}")


def teacher_budget_note(cfg: DistillConfig, info: dict) -> str | None:
    """One line when the teacher file was trained for fewer epochs than this config's teacher budget: what
    is short (the epochs, and why: a search's --epochs caps its auto teacher) and the one command that
    trains a teacher of the full budget (a file the user trained that short gets the same command)."""
    epochs = info.get("epochs")
    if epochs is None or epochs >= cfg.teacher_epochs:
        return None
    why = ("it is the search's auto teacher, cut to that by the search's --epochs"
           if info.get("origin") == "auto" else "fewer than the recipe's teacher budget")
    data = f" --data-dir {cfg.data_dir}" if cfg.data_dir else ""
    out = f"teachers/{cfg.teacher_arch}-{cfg.dataset}-e{cfg.teacher_epochs}.pt"
    return (f"note: teacher {Path(cfg.teacher).name} was trained for {epochs} epochs (on {info.get('trained_on', '?')}, "
            f"test top-1 {info.get('test_acc', float('nan')):.2f}%): {why} (teacher_epochs {cfg.teacher_epochs}). "
            f"A teacher trained for {cfg.teacher_epochs} epochs: python -m tuner.teacher --arch {cfg.teacher_arch} "
            f"--dataset {cfg.dataset}{data} --epochs {cfg.teacher_epochs} --train-on train+val --out {out}, then run "
            f"this again with --set teacher={out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
