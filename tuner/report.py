"""python -m tuner.report --experiment NAME: the pictures of a whole search, rebuilt from MLflow alone.

Learning curves with ASHA's stops, the metric against each searched hyperparameter, Optuna's
parameter importances and the top configs, as PNGs and one self-contained HTML page. The driver
builds it at the end of every search and logs it to the parent run under `report/`.
"""
import sys
from pathlib import Path

from tuner.cli import OneLineParser, output_path, quiet_libraries, run_cli
from tuner.search_report import HTML_FILE, REPORT_DIR, build_report
from tuner.search_runs import find_search_run
from tuner.tracking import tracking_client


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.report", description=(
        "Rebuild the report of a past search (learning curves with ASHA stops, val_acc against each searched "
        "hyperparameter, Optuna importances, top-5 configs, one HTML page) and log it to its parent run."))
    p.add_argument("--experiment", help="MLflow experiment name (default of a search: its space name)")
    p.add_argument("--run", help="search (parent) run id (default: the latest search in the experiment)")
    p.add_argument("--out", help="output folder (default sfkd_runs/report-<experiment>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--no-log", action="store_true", help="write the files only; do not log them to MLflow")
    a = p.parse_args(argv)
    if a.out:
        output_path("--out", a.out, folder=True)
    client = tracking_client(a.tracking_uri)
    parent = find_search_run(client, a.experiment, a.run)
    experiment = client.get_experiment(parent.info.experiment_id).name
    out = Path(a.out or f"sfkd_runs/report-{experiment}").resolve()
    files = build_report(client, parent, out)
    if not a.no_log:
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), REPORT_DIR)
    print(f"report of search run {parent.info.run_id}: {out / HTML_FILE} ({sum(f.suffix == '.png' for f in files)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
