"""A search as MLflow holds it: its parent run, its best trial under the ranking rule, a trial's config."""
from pathlib import Path

from mlflow.tracking import MlflowClient

from tuner.best_config import config_from_params
from tuner.errors import UsageError
from tuner.ranking import ranked, score_key, score_of
from tuner.tracking import CONFIG_ARTIFACT, PARENT_TAG


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


def finished_children(client: MlflowClient, parent) -> list:
    """The search's child runs that did not diverge or fail (each may still lack a score)."""
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=5000)
    return [r for r in children if r.data.tags.get("sfkd.status") not in ("diverged", "error")]


def best_child(client: MlflowClient, parent):
    """The search's best trial: the one its confirmation chose, else the pick the search itself recorded,
    else the best under the ranking rule."""
    metric, mode = search_objective(parent)
    best_first = ranked(((score_of(r.data.metrics, metric), r.data.tags.get("sfkd.trial_id", ""), r)
                         for r in finished_children(client, parent)), mode)
    if not best_first:
        raise UsageError(f"search run {parent.info.run_id} has no finished trial with {score_key(metric)}")
    # A confirmation's choice (the best mean over new seeds) over the search's own single-seed pick.
    chosen = parent.data.tags.get("sfkd.confirmed_best_trial") or parent.data.tags.get("sfkd.best_trial")
    return next((r for _, trial_id, r in best_first if chosen and trial_id == chosen), best_first[0][2])
