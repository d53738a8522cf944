"""Early stopping under several objectives, measured: the same configs searched twice in one process,
once under the cost-floor ASHA (tuner.pareto.CostFloorASHA) and once under FIFO, and the two
accuracy-cost fronts and the epochs each spent side by side.

    python benchmarks/front_early_stopping.py --space sfkd_budget --num-samples 16 --epochs 4 \\
        --dataset cifar10 --data-dir ../shared/data/cifar10-jpeg.tar.gz --set train_subset=10000 ...

Both searches use the random searcher with the same seed, so they run the same configs (checked); the
space's `search.objectives` must be set. The fronts are compared by their hypervolume (Zitzler and
Thiele 1998) in the first two objectives, within one box for both: from the worst accuracy and the
largest cost of any trial of either search. A front found with early stopping that loses little
hypervolume for far fewer epochs is the point of it. Any further argument is passed to tuner.search.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow.tracking import MlflowClient  # noqa: E402

from tuner import search  # noqa: E402
from tuner.pareto import front, objective_values, objectives_from_params  # noqa: E402
from tuner.ranking import hypervolume_2d  # noqa: E402
from tuner.tracking import PARENT_TAG  # noqa: E402

SEARCHED = ("gamma", "bg_weight", "density", "lr", "beta", "fg_size", "alpha", "temperature")


def trials_of(client: MlflowClient, experiment: str) -> tuple[list[dict], list[dict]]:
    exp = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")
    objectives = objectives_from_params(parent.data.params)
    out = []
    for r in client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'", max_results=5000):
        out.append({"trial": r.data.tags.get("sfkd.trial_id"), "values": objective_values(r.data.metrics, objectives),
                    "epochs": int(r.data.metrics.get("epoch", 0)), "status": r.data.tags.get("sfkd.status"),
                    "config": {k: r.data.params.get(k) for k in SEARCHED if k in r.data.params}})
    return objectives, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True)
    p.add_argument("--out", help="also write the numbers here as JSON")
    a, rest = p.parse_known_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        for scheduler in ("asha", "fifo"):
            rc = search.main(["--space", a.space, "--storage-path", f"{tmp}/runs", "--tracking-uri", uri,
                              "--name", scheduler, "--experiment", f"bench-{scheduler}", "--quiet",
                              "--set", "search.searcher=random", "--set", f"scheduler.type={scheduler}", *rest])
            if rc != 0:
                print(f"the {scheduler} search failed (exit {rc})", file=sys.stderr)
                return rc
        client = MlflowClient(uri)
        for scheduler in ("asha", "fifo"):
            results[scheduler] = trials_of(client, f"bench-{scheduler}")
    objectives = results["asha"][0]
    configs = {s: sorted(json.dumps(t["config"], sort_keys=True) for t in results[s][1]) for s in results}
    if configs["asha"] != configs["fifo"]:
        print("the two searches ran different configs; the comparison would not be fair", file=sys.stderr)
        return 1
    every = [t["values"] for s in results for t in results[s][1] if t["values"] is not None]
    modes = tuple(o["mode"] for o in objectives[:2])
    reference = (min(v[0] for v in every) if modes[0] == "max" else max(v[0] for v in every), max(v[1] for v in every))
    rows = {}
    for s, (_, trials) in results.items():
        done = [(t["values"], t["trial"], t) for t in trials if t["values"] is not None]
        on_front = front(done, objectives)
        rows[s] = {"trials": len(trials), "epochs": sum(t["epochs"] for t in trials),
                   "stopped_early": sum(t["status"] == "stopped_early" for t in trials),
                   "front": [{"config": t["config"], "values": list(v)} for v, _, t in on_front],
                   "hypervolume": hypervolume_2d([v[:2] for v, _, _ in on_front], modes, reference)}
    a_, f_ = rows["asha"], rows["fifo"]
    print(f"objectives: {', '.join(o['metric'] + ' ' + o['mode'] for o in objectives)}; hypervolume box from "
          f"{reference[0]:.2f} (worst accuracy) and {reference[1]:.4g} (largest cost) of either search")
    print("| scheduler | trials | stopped early | epochs spent | front size | hypervolume |")
    print("|---|---|---|---|---|---|")
    for s in ("fifo", "asha"):
        r = rows[s]
        print(f"| {s} | {r['trials']} | {r['stopped_early']} | {r['epochs']} | {len(r['front'])} | "
              f"{r['hypervolume']:.4g} |")
    print(f"ASHA/FIFO: epochs {a_['epochs'] / f_['epochs']:.2f}x, hypervolume "
          f"{a_['hypervolume'] / f_['hypervolume']:.3f}x" if f_["hypervolume"] else "FIFO's front has no area")
    same = [c for c in (json.dumps(x["config"], sort_keys=True) for x in a_["front"])
            if c in {json.dumps(x["config"], sort_keys=True) for x in f_["front"]}]
    print(f"configs on both fronts: {len(same)} of {len(f_['front'])} on FIFO's")
    if a.out:
        Path(a.out).write_text(json.dumps({"objectives": objectives, "reference": reference, **rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
