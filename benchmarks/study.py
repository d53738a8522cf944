"""A study's wall time with arms sharing the teacher-output cache, against its arms one after another
without it, side by side in one run:

    python benchmarks/study.py --teacher FILE --teacher-arch resnet56 [--json PATH] [--data PATH]

Both sides run the same `study_methods` command (6 arms x `--seeds` seeds, one run at a time, each from
a fresh start of `python -m tuner.search`); the cached side starts with an empty cache of its own, so
the first run of each seed fills it and the other five arms of that seed read it. Pairs alternate
(cached, uncached, cached, ...); the ratio is the median over pairs.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run import find_data  # noqa: E402


def study_wall_s(out: Path, tag: str, data: str, teacher: str, arch: str, a, cache: bool) -> float:
    cmd = [sys.executable, "-m", "tuner.search", "--space", "study_methods", "--dataset", "cifar10", "--data-dir", data,
           "--set", f"teacher={teacher}", "--set", f"teacher_arch={arch}", "--set", f"train_subset={a.train_images}",
           "--epochs", str(a.epochs), "--seeds", str(a.seeds), "--max-concurrent", "1", "--cpus-per-trial", "2",
           "--storage-path", str(out / "runs"), "--tracking-uri", f"sqlite:///{out}/mlflow.db", "--name", tag,
           "--quiet", "--set", f"teacher_cache={str(cache).lower()}", "--set", f"cache_dir={out / ('cache-' + tag)}"]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"error: {tag} exited {r.returncode}: {r.stderr[-2000:]}")
    return wall


def main():
    p = argparse.ArgumentParser(description="Study wall time: shared teacher-output cache vs arms one after another without.")
    p.add_argument("--teacher", required=True, help="a teacher file trained on the CIFAR-10 training split")
    p.add_argument("--teacher-arch", default="resnet56")
    p.add_argument("--data", help="CIFAR-10 JPEG tree or archive (default: ../shared/data)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=2000)
    a = p.parse_args()
    data = find_data(a.data)
    if data is None:
        sys.exit("error: the shared CIFAR-10 JPEGs are needed (give --data)")
    out = Path(tempfile.mkdtemp(prefix="sfkd-study-bench-"))
    teacher = str(Path(a.teacher).resolve())
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "runs_per_study": 6 * a.seeds, "epochs": a.epochs,
           "train_images": a.train_images, "cached_s": [], "uncached_s": []}
    for i in range(a.pairs):
        res["cached_s"].append(study_wall_s(out, f"cached{i}", data, teacher, a.teacher_arch, a, cache=True))
        res["uncached_s"].append(study_wall_s(out, f"uncached{i}", data, teacher, a.teacher_arch, a, cache=False))
        print(f"pair {i}: cached {res['cached_s'][-1]:.1f} s, uncached {res['uncached_s'][-1]:.1f} s", flush=True)
    ratios = [u / c for c, u in zip(res["cached_s"], res["uncached_s"])]
    res.update({"ratio_uncached_over_cached": statistics.median(ratios), "ratio_pairs": ratios})
    for k, v in res.items():
        print(f"{k:<28} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
