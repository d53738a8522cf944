"""A trial's time to its first result and its per-epoch time, with the data and teacher sent through
Ray's object store (what a search does) vs read from a local path by the trial itself, side by side
in one run, on the smoke data and on a CIFAR-10 subset:

    python benchmarks/object_store.py [--data PATH] [--pairs 3] [--json PATH]

Each trial is a fresh Ray actor (no actor reuse) running `SFKDTrainable` for `--epochs` KD epochs with
the teacher-output cache off; modes alternate (store, path, store, ...). First result: from Ray's
`Tuner.fit()` to its first reported epoch (actor start, data and teacher load, one epoch). The ratio is
path / store of the medians.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from benchmarks.run import find_data  # noqa: E402
from trainables.config import DistillConfig  # noqa: E402
from trainables.inputs import TrialInputs, load_run_splits, split_args  # noqa: E402
from trainables.ray_trainable import SFKDTrainable  # noqa: E402
from tuner.teacher_training import teacher_config, train_teacher  # noqa: E402


class Clock(tune.Callback):
    """Seconds from `Tuner.fit()` to the trial's first result, and each epoch's own time."""

    def __init__(self):
        self.start, self.first, self.epochs = time.perf_counter(), {}, {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.first.setdefault(trial.trial_id, time.perf_counter() - self.start)
        self.epochs.setdefault(trial.trial_id, []).append(result["time_this_iter_s"])


def one_trial(config: dict, inputs: TrialInputs, out: Path, tag: str) -> tuple[float, float]:
    clock = Clock()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(SFKDTrainable, inputs=inputs), {"cpu": 2}),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False),
        run_config=tune.RunConfig(name=tag, storage_path=str(out), callbacks=[clock], verbose=0,
                                  stop={"epoch": config["epochs"]}))
    clock.start = time.perf_counter()
    results = tuner.fit()
    if results.errors:
        sys.exit(f"error: {tag}: {results.errors[0]}")
    (trial_id,) = clock.first
    return clock.first[trial_id], statistics.mean(clock.epochs[trial_id][1:])


def case(name: str, config: dict, out: Path, pairs: int) -> dict:
    cfg = DistillConfig.from_dict(config)
    teacher = out / f"teacher-{name}.pt"
    tcfg = teacher_config(cfg.teacher_arch, cfg.dataset, 1, data_dir=cfg.data_dir, train_subset=cfg.train_subset,
                          synthetic_size=cfg.synthetic_size)
    train_teacher(tcfg, teacher, progress=False)
    config = {**config, "teacher": str(teacher)}
    cfg = DistillConfig.from_dict(config)
    shipped = TrialInputs(data=load_run_splits(cfg), data_args=split_args(cfg), teacher_file=str(teacher),
                          teacher_bytes=teacher.read_bytes())
    row = {"case": name, "train_images": len(shipped.data.train_x), "store_first_s": [], "path_first_s": [],
           "store_epoch_s": [], "path_epoch_s": []}
    for i in range(pairs):
        for mode, inputs in (("store", shipped), ("path", TrialInputs())):
            first, epoch = one_trial(config, inputs, out, f"{name}-{mode}-{i}")
            row[f"{mode}_first_s"].append(round(first, 3))
            row[f"{mode}_epoch_s"].append(round(epoch, 3))
            print(f"{name} {mode} pair {i}: first result {first:.2f} s, epoch {epoch:.2f} s", flush=True)
    for kind in ("first", "epoch"):
        row[f"{kind}_path_over_store"] = round(statistics.median(row[f"path_{kind}_s"])
                                               / statistics.median(row[f"store_{kind}_s"]), 3)
    return row


def main():
    p = argparse.ArgumentParser(description="Trial start-up and epoch time: data through the object store vs a path.")
    p.add_argument("--data", help="CIFAR-10 JPEG tree or archive (default: ../shared/data)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    data = find_data(a.data)
    out = Path(tempfile.mkdtemp(prefix="sfkd-store-bench-"))
    common = dict(student="resnet8", teacher_arch="resnet8", method="kd", alpha=0.5, beta=0.5, gamma=0.0, density=0.5,
                  sparse_init="ERK", epochs=a.epochs, batch_size=64, lr=0.05, teacher_cache=False)
    cases = [("smoke", dict(common, dataset="synthetic", synthetic_size=1200))]
    if data:
        cases.append(("cifar10", dict(common, dataset="cifar10", data_dir=data, train_subset=a.train_images,
                                      val_subset=1000)))
    else:
        print("warning: no CIFAR-10 found; only the smoke case runs", file=sys.stderr)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "epochs": a.epochs, "pairs": a.pairs,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}",
           "cases": [case(name, config, out, a.pairs) for name, config in cases]}
    for row in res["cases"]:
        print(f"{row['case']} ({row['train_images']} training images): first result path/store "
              f"{row['first_path_over_store']:.2f}x, epoch path/store {row['epoch_path_over_store']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
