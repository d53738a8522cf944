"""Best configs: written at the end of every search, and again from MLflow by `python -m tuner.export`."""
import ast
import sys
import typing
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from trainables.config import DistillConfig
from tuner.cli import OneLineParser, UsageError, run_cli
from tuner.storage import parent_of
from tuner.tracking import CONFIG_ARTIFACT, PARENT_TAG, tracking_client

HEADER_KEYS = ("search_run_id", "experiment", "trial_id", "val_acc")


def write_best_config(path: Path, config: dict, **header) -> Path:
    """A complete, fixed config as YAML (its keys are config keys only) with provenance comments."""
    cfg = DistillConfig.from_dict(config).to_dict()
    lines = [f"# sfkd.{k}: {v}" for k, v in header.items() if v is not None]
    text = "\n".join(lines + ["# Run it: python -m tuner.final --config " + str(path), ""])
    text += yaml.safe_dump(cfg, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_header(path: Path) -> dict:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("# sfkd.") and ":" in line:
            key, _, value = line[len("# sfkd."):].partition(":")
            out[key.strip()] = value.strip()
    return out


def config_from_params(params: dict) -> dict:
    """MLflow keeps params as strings; turn them back into typed config values."""
    hints = typing.get_type_hints(DistillConfig)
    out = {}
    for key, raw in params.items():
        if key not in hints:
            continue
        base = next((a for a in typing.get_args(hints[key]) if a is not type(None)), hints[key])
        base = typing.get_origin(base) or base
        if raw == "None":
            out[key] = None
        elif base is bool:
            out[key] = raw == "True"
        elif base in (int, float):
            out[key] = base(float(raw)) if base is int else float(raw)
        elif base is list:
            out[key] = ast.literal_eval(raw)
        else:
            out[key] = raw
    return out


def trial_config(client: MlflowClient, run) -> dict:
    """A trial's full config: its config.json artifact, or (runs recorded before it existed) its params,
    which MLflow cuts at 500 characters."""
    import json
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as folder:
            return json.loads(Path(client.download_artifacts(run.info.run_id, CONFIG_ARTIFACT, folder)).read_text())
    except Exception:  # noqa: BLE001 - no such artifact: an older run
        return config_from_params(run.data.params)


def latest_search_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UsageError(f"no MLflow experiment named {experiment!r} at this tracking URI")
    runs = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise UsageError(f"experiment {experiment!r} has no search runs")
    return runs[0]


def find_search_run(client: MlflowClient, experiment: str | None, run_id: str | None):
    """The search (parent) run named by --run, else the latest search in --experiment."""
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - MLflow raises its own for an unknown id
            raise UsageError(f"--run {run_id}: no such run at this tracking URI") from None
        if run.data.tags.get("sfkd.kind") != "search":
            raise UsageError(f"--run {run_id} is not a search's parent run (its tag sfkd.kind is "
                             f"{run.data.tags.get('sfkd.kind', 'missing')})")
        return run
    if not experiment:
        raise UsageError("give --experiment NAME (its latest search) or --run ID (a search's parent run)")
    return latest_search_run(client, experiment)


def best_child(client: MlflowClient, parent, metric: str = "best_val_acc"):
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=5000)
    ok = [r for r in children if r.data.tags.get("sfkd.status") not in ("diverged", "error") and metric in r.data.metrics]
    if not ok:
        raise UsageError(f"search run {parent.info.run_id} has no finished trial with {metric}")
    # The search's own choice wins, so ties in val_acc cannot make export disagree with best_config.yaml.
    chosen = parent.data.tags.get("sfkd.best_trial")
    for r in ok:
        if chosen and r.data.tags.get("sfkd.trial_id") == chosen:
            return r
    return min(ok, key=lambda r: (-r.data.metrics[metric], r.data.tags.get("sfkd.trial_id", "")))


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m tuner.export", description=(
        "Write the best config of a search as YAML: the latest search in an MLflow experiment, or the one "
        "whose parent run id --run gives."))
    p.add_argument("--experiment", help="MLflow experiment name (default of a search: its space name, e.g. sfkd_gamma)")
    p.add_argument("--run", help="a search's parent run id (instead of the latest search in --experiment)")
    p.add_argument("--out", default="best_config.yaml", help="output YAML (default best_config.yaml)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    a = p.parse_args(argv)
    client = tracking_client(a.tracking_uri)
    parent = find_search_run(client, a.experiment, a.run)
    best = best_child(client, parent)
    storage = parent.data.params.get("storage")
    out = write_best_config(Path(a.out).resolve(), trial_config(client, best),
                            search_run_id=parent.info.run_id,
                            experiment=client.get_experiment(parent.info.experiment_id).name,
                            trial_id=best.data.tags.get("sfkd.trial_id"), val_acc=best.data.metrics["best_val_acc"],
                            storage_path=parent_of(storage) if storage else None)
    print(f"best trial {best.data.tags.get('sfkd.trial_id')} (val_acc {best.data.metrics['best_val_acc']:.2f}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
