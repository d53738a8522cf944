"""Best configs: written at the end of every search, and again from MLflow by `python -m tuner.export`."""
import ast
import sys
import typing
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from trainables.config import DistillConfig
from tuner.cli import OneLineParser, UsageError, run_cli
from tuner.ranking import ranked, score_key, score_of
from tuner.storage import parent_of
from tuner.tracking import CONFIG_ARTIFACT, PARENT_TAG, tracking_client


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


def search_objective(parent) -> tuple[str, str]:
    """The metric and mode a search ranked its trials by (its space's), from its parent run."""
    params = parent.data.params
    return params.get("search.metric", "val_acc"), params.get("search.mode", "max")


def best_child(client: MlflowClient, parent):
    """The search's best trial under the ranking rule (the pick the search itself recorded, when it did)."""
    metric, mode = search_objective(parent)
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=5000)
    best_first = ranked(((score_of(r.data.metrics, metric) if r.data.tags.get("sfkd.status") not in ("diverged", "error")
                          else None, r.data.tags.get("sfkd.trial_id", ""), r) for r in children), mode)
    if not best_first:
        raise UsageError(f"search run {parent.info.run_id} has no finished trial with {score_key(metric)}")
    chosen = parent.data.tags.get("sfkd.best_trial")
    return next((r for _, trial_id, r in best_first if chosen and trial_id == chosen), best_first[0][2])


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
    metric, _ = search_objective(parent)
    score = score_of(best.data.metrics, metric)
    storage = parent.data.params.get("storage")
    out = write_best_config(Path(a.out).resolve(), trial_config(client, best),
                            search_run_id=parent.info.run_id,
                            experiment=client.get_experiment(parent.info.experiment_id).name,
                            trial_id=best.data.tags.get("sfkd.trial_id"), **{metric: score},
                            storage_path=parent_of(storage) if storage else None)
    print(f"best trial {best.data.tags.get('sfkd.trial_id')} ({metric} {score:.2f}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
