"""python -m tuner.export: the best config of a search, written again from MLflow alone."""
import sys

from tuner.best_config import write_best_config
from tuner.cli import OneLineParser, output_path, quiet_libraries, run_cli
from tuner.ranking import score_of
from tuner.search_runs import best_child, find_search_run, search_objective, trial_config
from tuner.storage import parent_of
from tuner.tracking import tracking_client


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.export", description=(
        "Write the best config of a search as YAML: the latest search in an MLflow experiment, or the one "
        "whose parent run id --run gives."))
    p.add_argument("--experiment", help="MLflow experiment name (default of a search: its space name, e.g. sfkd_gamma)")
    p.add_argument("--run", help="a search's parent run id (instead of the latest search in --experiment)")
    p.add_argument("--out", default="best_config.yaml", help="output YAML (default best_config.yaml)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    a = p.parse_args(argv)
    out = output_path("--out", a.out)
    client = tracking_client(a.tracking_uri)
    parent = find_search_run(client, a.experiment, a.run)
    best = best_child(client, parent)
    metric, _ = search_objective(parent)
    score = score_of(best.data.metrics, metric)
    storage = parent.data.params.get("storage")
    out = write_best_config(out, trial_config(client, best),
                            search_run_id=parent.info.run_id,
                            experiment=client.get_experiment(parent.info.experiment_id).name,
                            trial_id=best.data.tags.get("sfkd.trial_id"), **{metric: round(score, 4)},
                            storage_path=parent_of(storage) if storage else None)
    print(f"best trial {best.data.tags.get('sfkd.trial_id')} ({metric} {score:.2f}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
