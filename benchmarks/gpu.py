"""The GPU rows of BENCHMARKS.md, measured in one prepared run (under 8 minutes on one H100/H200):

    python benchmarks/gpu.py --out OUT_DIR [--data ../shared/data/cifar10-jpeg.tar.gz] [--budget-s 450]

1. teacher: a ResNet56 trained 2 epochs on 10,000 CIFAR-10 training images on the GPU (a teacher worth
   distilling from, for the rest; its numbers are not a result).
2. one trial alone: ResNet56 -> ResNet20, SF-KD, ERK density 0.1, bf16 autocast, channels_last, the
   shared CIFAR-10 (DistillRun, the loop every trial runs), training img/s of its 2nd epoch, teacher-output
   cache off (the teacher runs every batch) and on; against a plain PyTorch KD loop as RepDistiller
   writes it (torchvision ImageFolder over the same JPEGs, a DataLoader with 8 workers and pinned memory,
   RandomCrop + flip, fp32, CE + KD with the teacher's forward every batch, a dense student).
3. the compute bound: the same trial's teacher forward + student step on one staged batch (no data
   pipeline), and the fraction of it the trial reaches.
4. packing: real searches (tuner.search, Ray, MLflow) of K = 1, 2, 4, 8 concurrent trials at 1/K GPU
   each: the aggregate img/s (the sum over trials of each one's 2nd-epoch img/s, all running together)
   against one trial alone, and each trial's peak GPU memory (`gpu_mem_peak_mb`).
5. torch.compile: the trial's img/s in its 3rd epoch and the compile time (its first epoch's extra over the
   3rd); on a 2-core CPU under load the compiled loop measured far slower than eager, so read it on the GPU.
6. GPU against CPU: a 3-epoch trial (seeds 0, 1, 2 on the GPU; seed 0 on the CPU) on 5,000 images:
   whether the GPU's val_acc is within the seed spread of the CPU's.

Nothing here changes the accelerator's settings (no MPS, clocks or MIG). Every section writes its numbers
to OUT_DIR/gpu.json as soon as it has them (a section that fails records its error and the rest go on),
and OUT_DIR/gpu.md is the Markdown of all of them. `--device cpu --quick` runs every section small on a
CPU, to check the script itself (its numbers mean nothing).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables import DistillRun  # noqa: E402
from trainables.data.sources import unpack_archive  # noqa: E402
from trainables.models import create_model  # noqa: E402
from trainables.teacher_file import read_teacher_file  # noqa: E402
from tuner.teacher_training import teacher_config, train_teacher  # noqa: E402

START = time.monotonic()


class Report:
    def __init__(self, out: Path):
        self.out, self.data = out, {}
        out.mkdir(parents=True, exist_ok=True)

    def put(self, section: str, values: dict) -> None:
        self.data[section] = values
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=2, default=str))
        print(f"[{time.monotonic() - START:6.1f}s] {section}: {json.dumps(values, default=str)}", flush=True)

    def markdown(self) -> str:
        d, lines = self.data, []
        env = d.get("machine", {})
        lines += [f"GPU: {env.get('gpu')}; torch {env.get('torch')}, CUDA {env.get('cuda')}; {env.get('cpus')} CPU "
                  f"cores; precision {env.get('precision')}.", ""]
        lines += ["| measurement | value |", "|---|---|"]
        for section, values in d.items():
            if section == "machine":
                continue
            for k, v in values.items():
                shown = f"{v:.4g}" if isinstance(v, float) else " ".join(str(v).split())
                lines.append(f"| {section}: {k} | {shown} |")
        return "\n".join(lines) + "\n"


def section(report: Report, name: str, budget_s: float, fn, *args) -> dict | None:
    left = budget_s - (time.monotonic() - START)
    if left < 20:
        report.put(name, {"skipped": f"time budget spent ({left:.0f} s left)"})
        return None
    try:
        out = fn(*args)
        report.put(name, out)
        return out
    except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
        report.put(name, {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc(limit=3)[-600:]})
        return None


def trial_config(a, teacher: Path, **kw) -> dict:
    cfg = dict(dataset="cifar10", data_dir=a.data, train_subset=a.images, teacher=str(teacher),
               teacher_arch="resnet56", student="resnet20", method="sfkd", alpha=0.5, beta=0.5, gamma=0.5,
               bg_weight=0.4, fg_size=4, density=0.1, sparse_init="ERK", batch_size=64, lr=0.05, epochs=2,
               precision="auto", memory_format="auto", device=a.device)
    return {**cfg, **kw}


def train_small_teacher(a, path: Path) -> dict:
    t = time.monotonic()
    cfg = teacher_config("resnet56", "cifar10", 2 if not a.quick else 3, data_dir=a.data, train_subset=a.images,
                         device=a.device, lr_schedule="cosine")
    _, acc = train_teacher(cfg, path, progress=False)
    return {"test_acc": acc, "seconds": time.monotonic() - t}


def one_trial(a, teacher: Path) -> dict:
    out = {}
    for cache in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            run = DistillRun(trial_config(a, teacher, teacher_cache=cache, cache_dir=tmp))
            run.train_epoch()  # warm-up (and the cache fill)
            m = run.train_epoch()
            out[f"img_per_s_cache_{'on' if cache else 'off'}"] = m["img_per_s"]
            out["precision"], out["channels_last"] = run.precision, run.channels_last
    out["plain_kd_loop_img_per_s"] = plain_kd_loop(a, teacher)
    out["speedup_over_plain_loop"] = out["img_per_s_cache_off"] / out["plain_kd_loop_img_per_s"]
    out["target_speedup_2x"] = "met" if out["speedup_over_plain_loop"] >= 2 else "missed"
    return out


def plain_kd_loop(a, teacher: Path) -> float:
    """A KD training loop as RepDistiller writes it, over the same JPEGs: the reference a user has."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    device = torch.device(a.device)
    root = unpack_archive(Path(a.data))
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465),
                                                                         (0.2470, 0.2435, 0.2616))])
    folder = datasets.ImageFolder(root / "train", tf)
    data = Subset(folder, torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:a.images].tolist())
    loader = DataLoader(data, batch_size=64, shuffle=True, num_workers=min(8, os.cpu_count() or 1),
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=True)
    t_model = create_model("resnet56", 10).to(device).eval()
    t_model.load_state_dict(read_teacher_file(teacher)["state_dict"])
    s_model = create_model("resnet20", 10).to(device).train()
    opt = torch.optim.SGD(s_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def epoch() -> float:
        seen, t = 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t_logits = t_model(x)
            logits = s_model(x)
            kd = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean") * 16
            loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - t)

    epoch()  # warm-up: worker start, cuDNN's algorithm choice
    return epoch()


def compute_bound(a, teacher: Path, trial_img_s: float | None) -> dict:
    run = DistillRun(trial_config(a, teacher, teacher_cache=False))
    x, y, idx = next(iter(run.train_loader.batches(0, 0)))
    from trainables.precision import autocast

    def steps(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            with autocast(run.device, run.precision):
                t_logits, t_feats = run._teacher_outputs(x, None, idx)
                loss, _, _ = run._losses(x, y, t_logits, t_feats)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
        if run.cuda:
            torch.cuda.synchronize()
        return n * len(y) / (time.perf_counter() - t)

    steps(20)
    bound = steps(10 if a.quick else 200)
    out = {"staged_img_per_s": bound}
    if trial_img_s:
        out["trial_fraction_of_bound"] = trial_img_s / bound
    return out


def packing(a, teacher: Path, alone: float | None) -> dict:
    import yaml
    from mlflow.tracking import MlflowClient

    from tuner import search

    out = {}
    base = trial_config(a, teacher, teacher_cache=False, epochs=3, train_subset=a.pack_images)
    base.pop("device")
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.pack:
            space = {"config": base, "search": {"num_samples": k, "searcher": "random", "max_concurrent": k},
                     "scheduler": {"type": "fifo"},
                     "resources": {"cpu": max(1, (os.cpu_count() or 2) // k // 2),
                                   "gpu": round(1.0 / k, 4) if a.device == "cuda" else 0}}
            path = Path(tmp) / f"pack{k}.yaml"
            path.write_text(yaml.safe_dump(space))
            uri = f"sqlite:///{tmp}/mlflow.db"
            t = time.monotonic()
            rc = search.main(["--space", str(path), "--storage-path", f"{tmp}/runs", "--tracking-uri", uri,
                              "--name", f"pack{k}", "--quiet"])
            wall = time.monotonic() - t
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name(f"pack{k}")
            parents = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")
            runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
            rates, peaks = [], []
            for r in runs:
                hist = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "img_per_s")}
                if 2 in hist:
                    rates.append(hist[2])
                if "gpu_mem_peak_mb" in r.data.metrics:
                    peaks.append(r.data.metrics["gpu_mem_peak_mb"])
            out[f"K={k}"] = {"exit": rc, "trials": len(runs), "aggregate_img_per_s": sum(rates),
                             "per_trial_img_per_s": statistics.mean(rates) if rates else None,
                             "peak_gpu_mem_mb_per_trial": max(peaks) if peaks else None, "wall_s": wall}
        one = out.get("K=1", {}).get("aggregate_img_per_s")
        for k in a.pack:
            if one and out[f"K={k}"]["aggregate_img_per_s"]:
                out[f"K={k}"]["x_one_trial"] = out[f"K={k}"]["aggregate_img_per_s"] / one
        if "K=4" in out and "x_one_trial" in out["K=4"]:
            out["target_4_trials_2.5x"] = "met" if out["K=4"]["x_one_trial"] >= 2.5 else "missed"
    flat = {}
    for key, values in out.items():
        if isinstance(values, dict):
            flat.update({f"{key} {k}": v for k, v in values.items()})
        else:
            flat[key] = values
    return flat


def compiled(a, teacher: Path) -> dict:
    run = DistillRun(trial_config(a, teacher, teacher_cache=False, compile=True, epochs=3))
    first = run.train_epoch()
    run.train_epoch()  # a recompilation (a guard that failed once) falls here, not in the timed epoch
    second = run.train_epoch()
    eager = DistillRun(trial_config(a, teacher, teacher_cache=False, epochs=2))
    eager.train_epoch()
    e = eager.train_epoch()
    return {"compiled_img_per_s": second["img_per_s"], "eager_img_per_s": e["img_per_s"],
            "compiled_over_eager": second["img_per_s"] / e["img_per_s"],
            "compile_s (first epoch's extra)": first["epoch_s"] - second["epoch_s"]}


def gpu_against_cpu(a, teacher: Path) -> dict:
    def val_acc(device: str, seed: int) -> float:
        cfg = trial_config(a, teacher, epochs=3, train_subset=a.check_images, seed=seed)
        cfg["device"] = device
        run = DistillRun(cfg)
        m = {}
        for _ in range(3):
            m = run.step("val")
        return m["val_acc"]

    gpu = [val_acc(a.device, s) for s in (0, 1, 2)]
    cpu0 = val_acc("cpu", 0)
    spread = statistics.stdev(gpu)
    return {"gpu_val_acc_seeds_0_1_2": gpu, "cpu_val_acc_seed_0": cpu0, "gpu_seed_sd": spread,
            "gpu_seed0_minus_cpu_seed0": gpu[0] - cpu0,
            "within_seed_noise (|diff| <= 2 sd)": abs(gpu[0] - cpu0) <= 2 * spread}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=450.0, help="sections not started by then are skipped")
    p.add_argument("--quick", action="store_true", help="everything small: checks the script, measures nothing")
    p.add_argument("--skip", action="append", default=[], help="a section to leave out (repeatable)")
    a = p.parse_args()
    a.images, a.pack_images, a.check_images = (10000, 20000, 5000) if not a.quick else (2000, 1000, 1000)
    a.pack = [1, 2, 4, 8] if not a.quick else [1, 2]
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu --quick to check the script", file=sys.stderr)
        return 2
    report = Report(Path(a.out))
    from trainables.precision import resolve_precision

    report.put("machine", {"gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else "none (CPU)",
                           "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
                           "precision": resolve_precision("auto", torch.device(a.device))})
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "resnet56.pt"
        section(report, "teacher", a.budget_s, train_small_teacher, a, teacher)
        if not teacher.exists():
            print("no teacher: nothing else can run", file=sys.stderr)
            return 1
        alone = section(report, "one trial", a.budget_s, one_trial, a, teacher) if "one" not in a.skip else None
        rate = (alone or {}).get("img_per_s_cache_off")
        if "bound" not in a.skip:
            section(report, "compute bound", a.budget_s, compute_bound, a, teacher, rate)
        if "pack" not in a.skip:
            section(report, "packing", a.budget_s, packing, a, teacher, rate)
        if "compile" not in a.skip:
            section(report, "torch.compile", a.budget_s, compiled, a, teacher)
        if "check" not in a.skip:
            section(report, "GPU against CPU", a.budget_s, gpu_against_cpu, a, teacher)
    (Path(a.out) / "gpu.md").write_text(report.markdown())
    print(report.markdown())
    print(f"total {time.monotonic() - START:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
