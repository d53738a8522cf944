"""A trial's per-epoch time with a healthy MLflow server vs one that black-holes (accepts connections,
never answers), side by side in one run:

    python benchmarks/tracking_outage.py [--pairs 2] [--json PATH]

Each side runs the same `smoke` search (2 trials at once, FIFO, `--epochs`) against a real
`mlflow server` on 127.0.0.1; on the black-hole side the server is replaced by a hole after the first
logged epoch, and a write that reaches it waits an hour; the hole closes after the last epoch (what
is still unsent then waits in the journal). Per-epoch time: the mean gap between a
trial's results (Ray's whole-second `timestamp`, taken on the worker) from epoch 2 on, which includes
any time the driver keeps the next epoch waiting. Sides alternate; the ratio is hole / healthy.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from mlflow.tracking import MlflowClient  # noqa: E402
from test_scale_out import BlackHole, free_port, start_mlflow_server, stop  # noqa: E402

from tuner.teacher_training import teacher_config, train_teacher  # noqa: E402


def epoch_gaps(run_dir: Path) -> list[float]:
    """Per trial, (last timestamp - epoch 2's) / epochs between: Ray's timestamps are whole seconds."""
    gaps = []
    for f in run_dir.glob("*/result.json"):
        stamps = [json.loads(line)["timestamp"] for line in f.read_text().splitlines() if line.strip()]
        gaps.append((stamps[-1] - stamps[1]) / (len(stamps) - 2))
    return gaps


def one_search(out: Path, tag: str, teacher: Path, epochs: int, hole: bool) -> float:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    folder = out / tag
    folder.mkdir()
    server, blackhole = start_mlflow_server(folder, port), None
    cmd = [sys.executable, "-m", "tuner.search", "--space", "smoke", "--tracking-uri", uri, "--storage-path",
           str(folder / "runs"), "--name", tag, "--num-samples", "2", "--epochs", str(epochs), "--set",
           "scheduler.type=fifo", "--set", "synthetic_size=1600", "--set", f"teacher={teacher}", "--quiet"]
    search = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "3600"})
    try:
        if hole:
            client = MlflowClient(uri)
            while search.poll() is None:
                exp = client.get_experiment_by_name("smoke")
                if exp and any("val_acc" in r.data.metrics for r in client.search_runs([exp.experiment_id])):
                    break
                time.sleep(0.5)
            stop(server)
            blackhole = BlackHole(port)
            rows = lambda: sum(len(f.read_text().splitlines()) for f in (folder / "runs" / tag).glob("*/result.json"))  # noqa: E731
            while rows() < 2 * epochs and search.poll() is None:
                time.sleep(0.5)
            blackhole.close()  # the writes left fail fast now and wait in the journal: the search can end
            blackhole = None
        out_text, _ = search.communicate(timeout=1800)
        if search.returncode != 0:
            sys.exit(f"error: {tag}: {out_text[-2000:]}")
    finally:
        if blackhole is not None:
            blackhole.close()
        stop(server)
    return statistics.median(epoch_gaps(folder / "runs" / tag))


def main():
    p = argparse.ArgumentParser(description="Per-epoch time: healthy MLflow server vs a black-holed one.")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="sfkd-outage-bench-"))
    teacher = out / "teacher.pt"
    train_teacher(teacher_config("resnet8", "synthetic", 3, synthetic_size=1200), teacher, progress=False)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "epochs": a.epochs, "healthy_s": [], "hole_s": []}
    for i in range(a.pairs):
        res["healthy_s"].append(round(one_search(out, f"healthy{i}", teacher, a.epochs, hole=False), 3))
        res["hole_s"].append(round(one_search(out, f"hole{i}", teacher, a.epochs, hole=True), 3))
        print(f"pair {i}: epoch {res['healthy_s'][-1]:.2f} s healthy, {res['hole_s'][-1]:.2f} s black-holed", flush=True)
    res["hole_over_healthy"] = round(statistics.median(res["hole_s"]) / statistics.median(res["healthy_s"]), 3)
    print(f"per-epoch time, black-holed / healthy: {res['hole_over_healthy']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
