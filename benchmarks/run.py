"""The speed benchmark of issue "Fast trials": every figure measured side by side in one run.

    python benchmarks/run.py [--quick] [--json PATH] [--data PATH]

Throughput rows use resnet56 -> resnet20, SF-KD at ERK density 0.1, batch 64, on the shared CIFAR-10
JPEGs (or synthetic data when they are absent, which the output says). The plain loop and the trial
are timed alternately (A B A B) and the speedup is the median over the pairs.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.data import load_splits  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.precision import autocast, resolve_memory_format, resolve_precision  # noqa: E402
from trainables.run import DistillRun  # noqa: E402
from trainables.sparsity import apply_masks, init_masks, save_sparse  # noqa: E402
from trainables.teacher_file import save_teacher  # noqa: E402

TARGETS = {"speedup_vs_plain_loop": ">= 1.3 (CPU), >= 2 (GPU)", "fraction_of_compute_bound": ">= 0.9",
           "ray_overhead_pct": "<= 3", "first_result_s": "<= 30", "ckpt_size_ratio_d0.1": "<= 0.16",
           "asha_epoch_fraction": "<= 0.4", "asha_gap_pp": "<= 0.5"}


# -- the reference: a KD loop as the public CIFAR distillation repos write it -----------------------
class UInt8Images(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x = x.permute(0, 2, 3, 1).numpy()  # HWC uint8, like torchvision's CIFAR10.data
        self.y = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def plain_loop_epoch(teacher, student, masks, loader, device) -> float:
    opt = plain_loop_epoch.opt
    student.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t_logits, t_feats = teacher(x, return_features=True)
        logits, feats = student(x, return_features=True)
        kl = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean") * 16
        loss = F.cross_entropy(logits, y) + kl + F.mse_loss(feats[-1], t_feats[-1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for name, p in student.named_parameters():
                if name in masks:
                    p.mul_(masks[name])
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def compute_bound(teacher, student, x, y, steps, device, precision: str) -> float:
    """Bare forward/backward steps on staged tensors at `precision` (the best the hardware offers):
    the ceiling a trial's img/s is compared with."""
    if resolve_memory_format("auto", device, precision):
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
        x = [xb.contiguous(memory_format=torch.channels_last) for xb in x]
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    teacher.eval()
    student.train()
    n = 0
    start = time.perf_counter()
    for i in range(steps):
        xb, yb = x[i % len(x)], y[i % len(y)]
        with autocast(device, precision):
            with torch.inference_mode():
                t_logits, t_feats = teacher(xb, return_features=True)
            logits, feats = student(xb, return_features=True)
        logits, t_logits = logits.float(), t_logits.float()
        loss = F.cross_entropy(logits, yb) + F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t_logits.clone() / 4, 1),
                                                      reduction="batchmean") + F.mse_loss(feats[-1].float(),
                                                                                          t_feats[-1].float().clone())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(yb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def throughput_rows(data_arg, n_images, pairs, out_dir: Path) -> dict:
    import torchvision.transforms as T

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if data_arg:
        splits = load_splits("cifar10", data_arg, train_subset=n_images, val_subset=500)
        source = f"shared CIFAR-10 JPEGs ({n_images} training images)"
    else:
        splits = load_splits("synthetic", synthetic_size=n_images + n_images // 9)
        source = f"synthetic data ({len(splits.train_x)} images; CIFAR-10 archive not found)"
    torch.manual_seed(0)
    teacher = create_model("resnet56", splits.num_classes)
    teacher_file = save_teacher(out_dir / "resnet56.pt", teacher, "resnet56", "bench", splits.num_classes, 0.0)
    cfg = dict(dataset="cifar10", teacher=str(teacher_file), teacher_arch="resnet56", student="resnet20",
               method="sfkd", density=0.1, sparse_init="ERK", batch_size=64, epochs=10, fg_size=4,
               teacher_cache=False)  # one trial alone: the cache pays across trials (benchmarks/levers.py)
    run = DistillRun(cfg, data=splits)  # precision auto: what a user's trial runs at on this hardware
    run_fp32 = DistillRun({**cfg, "precision": "fp32"}, data=splits)

    student = create_model("resnet20", splits.num_classes).to(device)
    masks = {k: v.to(device).float() for k, v in init_masks(student, 0.1, "ERK").items()}
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    plain_loop_epoch.opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    teacher_plain = create_model("resnet56", splits.num_classes).to(device).eval()
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    loader = torch.utils.data.DataLoader(UInt8Images(splits.train_x, splits.train_y, tf), batch_size=64,
                                         shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)

    plain_loop_epoch(teacher_plain, student, masks, loader, device)  # warm-up (workers start)
    run.train_epoch()
    run_fp32.train_epoch()
    plain, trial, trial_fp32, ratios = [], [], [], []
    for _ in range(pairs):
        a = plain_loop_epoch(teacher_plain, student, masks, loader, device)
        b = run.train_epoch()["img_per_s"]
        trial_fp32.append(run_fp32.train_epoch()["img_per_s"])
        plain.append(a)
        trial.append(b)
        ratios.append(b / a)

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 3, 32, 32, generator=g).to(device) for _ in range(4)]
    ys = [torch.randint(0, splits.num_classes, (64,), generator=g).to(device) for _ in range(4)]
    best = resolve_precision("auto", device)  # the best precision this hardware offers
    bound = compute_bound(create_model("resnet56", splits.num_classes).to(device),
                          create_model("resnet20", splits.num_classes).to(device), xs, ys,
                          steps=max(10, n_images // 64), device=device, precision=best)
    return {"source": source, "device": str(device), "trial_precision": run.precision,
            "plain_loop_img_s": statistics.median(plain), "trial_img_s": statistics.median(trial),
            "trial_img_s_fp32": statistics.median(trial_fp32), "speedup_vs_plain_loop": statistics.median(ratios),
            "speedup_pairs": ratios, "compute_bound_precision": best, "compute_bound_img_s": bound,
            "fraction_of_compute_bound": statistics.median(trial) / bound, "_cfg": cfg, "_splits": splits}


def ray_overhead(cfg, splits, epochs: int) -> float:
    """Per-epoch wall time through Ray (SFKDTrainable.step) vs DistillRun.step alone, same config."""
    import ray
    from ray import tune

    from trainables import SFKDTrainable

    local = DistillRun(cfg, data=splits)
    local.step()
    alone = []
    for _ in range(epochs):
        t = time.perf_counter()
        local.step()
        alone.append(time.perf_counter() - t)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        data_cfg = {**cfg, "train_subset": len(splits.train_x), "val_subset": len(splits.val_x)}
        if data_cfg["dataset"] != "cifar10" or not splits.source_dir:
            data_cfg.update(dataset="synthetic", synthetic_size=len(splits.train_x) + len(splits.val_x))
        else:
            data_cfg["data_dir"] = splits.source_dir
        tuner = tune.Tuner(tune.with_resources(SFKDTrainable, {"cpu": os.cpu_count()}),
                           param_space={**data_cfg, "epochs": epochs + 1},
                           run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0))
        res = tuner.fit()[0].metrics_dataframe
        through_ray = list(res["time_this_iter_s"])[1:]
    finally:
        ray.shutdown()
    return 100.0 * (statistics.median(through_ray) - statistics.median(alone)) / statistics.median(alone)


def first_result_seconds(out_dir: Path) -> float:
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tuner.search", "--space", "smoke", "--storage-path",
                             str(out_dir / "first"), "--tracking-uri", f"sqlite:///{out_dir}/first.db"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if re.match(r"\[\s*[\d.]+s\] trial ", line):
                return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    return float("nan")


def checkpoint_ratio(out_dir: Path) -> float:
    torch.manual_seed(0)
    model = create_model("resnet56", 100)
    masks = init_masks(model, 0.1, "ERK")
    apply_masks(model, masks)
    torch.save(model.state_dict(), out_dir / "dense.pt")
    save_sparse(out_dir / "sparse.sfkd", model.state_dict(), masks, 0.1)
    return (out_dir / "sparse.sfkd").stat().st_size / (out_dir / "dense.pt").stat().st_size


def asha_rows(data_arg, out_dir: Path, max_t: int, n_configs: int, train_subset: int = 2000) -> dict:
    """The same seeded random configs under FIFO and under ASHA, through the real CLI."""
    from mlflow.tracking import MlflowClient

    common = ["--space", "smoke", "--quiet", "--num-samples", str(n_configs), "--epochs", str(max_t),
              "--set", "search.searcher=random", "--set", "search.seed=7", "--set", "search.max_concurrent=2",
              "--set", "teacher_arch=resnet14", "--set", "student=resnet8", "--set", "lr={loguniform: [0.003, 0.3]}",
              "--storage-path", str(out_dir / "asha")]
    if data_arg:
        common += ["--dataset", "cifar10", "--data-dir", data_arg, "--set", f"train_subset={train_subset}",
                   "--set", f"val_subset={train_subset // 2}"]
    out = {}
    for sched in ("fifo", "asha"):
        uri = f"sqlite:///{out_dir}/{sched}.db"
        subprocess.run([sys.executable, "-m", "tuner.search", *common, "--tracking-uri", uri, "--name", sched,
                        "--set", f"scheduler.type={sched}", "--set", "scheduler.grace_period=1",
                        "--set", "scheduler.reduction_factor=3"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("smoke")
        runs = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        out[sched] = {r.data.params["lr"]: (int(r.data.tags["sfkd.epochs_run"]), r.data.metrics.get("val_acc", 0.0))
                      for r in runs}
    fifo_epochs = sum(e for e, _ in out["fifo"].values())
    asha_epochs = sum(e for e, _ in out["asha"].values())
    fifo_best = max(acc for _, acc in out["fifo"].values())
    asha_pick = max((acc for e, acc in out["asha"].values() if e == max_t), default=0.0)
    return {"asha_epoch_fraction": asha_epochs / fifo_epochs, "asha_gap_pp": fifo_best - asha_pick,
            "asha_same_configs": sorted(out["fifo"]) == sorted(out["asha"]), "asha_configs": n_configs,
            "asha_max_t": max_t, "asha_train_subset": train_subset}


def find_data(arg) -> str | None:
    for cand in (arg, os.environ.get("SFKD_CIFAR10_DIR"), os.environ.get("SFKD_CIFAR10_ARCHIVE"),
                 str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")):
        if cand and Path(cand).exists():
            return str(Path(cand).resolve())
    return None


def main():
    p = argparse.ArgumentParser(description="Speed benchmark: plain loop vs trial vs compute bound, Ray, ASHA.")
    p.add_argument("--quick", action="store_true", help="smaller sizes; under 10 minutes on 2 CPU cores")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--data", help="CIFAR-10 JPEG tree or archive (default: ../shared/data)")
    a = p.parse_args()
    data = find_data(a.data)
    n_images, pairs = (1280, 3) if a.quick else (5120, 5)
    out_dir = Path(tempfile.mkdtemp(prefix="sfkd-bench-"))
    t0 = time.monotonic()
    res = throughput_rows(data, n_images, pairs, out_dir)
    cfg, splits = res.pop("_cfg"), res.pop("_splits")
    splits.source_dir = data
    print({k: v for k, v in res.items()}, flush=True)
    res["ray_overhead_pct"] = ray_overhead(cfg, splits, epochs=2 if a.quick else 4)
    print("ray_overhead_pct", res["ray_overhead_pct"], flush=True)
    res["first_result_s"] = first_result_seconds(out_dir)
    print("first_result_s", res["first_result_s"], flush=True)
    res["ckpt_size_ratio_d0.1"] = checkpoint_ratio(out_dir)
    res.update(asha_rows(data, out_dir, max_t=4 if a.quick else 9, n_configs=8, train_subset=1000 if a.quick else 2000))
    res.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                       f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
               command="python benchmarks/run.py" + (" --quick" if a.quick else ""),
               date=time.strftime("%Y-%m-%d %H:%M"), wall_s=time.monotonic() - t0)
    width = max(len(k) for k in res)
    for k, v in res.items():
        shown = f"{v:.3f}" if isinstance(v, float) else str(v)
        print(f"{k:<{width}}  {shown:<12}  {TARGETS.get(k, '')}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
