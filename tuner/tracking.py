"""MLflow: one parent run per search, one child run per trial; the driver is the only writer."""
import math
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

PARENT_TAG = "mlflow.parentRunId"
# Result fields that are bookkeeping rather than measurements of the trial.
NOT_METRICS = {"done", "epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
               "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total",
               "timesteps_since_restore", "checkpoint_dir_name", "should_checkpoint"}


def default_tracking_uri() -> str:
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def normalise_uri(uri: str | None) -> str:
    """Relative sqlite and file URIs become absolute before Ray changes working directories."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def get_experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        db = Path(uri[len("sqlite:///"):])
        location = (db.parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _params(config: dict) -> list[Param]:
    return [Param(k, str(v)[:500]) for k, v in sorted(config.items())]


def log_params(client: MlflowClient, run_id: str, config: dict) -> None:
    params = _params(config)
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])


def numeric_metrics(result: dict) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k in NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class SearchTracker:
    """Parent and child runs of one search, addressed by explicit run ids (safe from Ray's threads)."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = get_experiment_id(self.client, experiment, uri)
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}

    def start_parent(self, run_name: str, params: dict, tags: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_id = run.info.run_id
        log_params(self.client, self.parent_id, params)
        return self.parent_id

    def child(self, trial_id: str, run_name: str, config: dict) -> str:
        if trial_id not in self.children:
            run = self.client.create_run(self.experiment_id, run_name=run_name,
                                         tags={PARENT_TAG: self.parent_id, "sfkd.trial_id": trial_id})
            self.children[trial_id] = run.info.run_id
            log_params(self.client, self.children[trial_id], config)
        return self.children[trial_id]

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 200):
            self.client.log_batch(run_id, metrics=items[i:i + 200])

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class MLflowTrialCallback(Callback):
    """Each trial becomes a child run: full config as params, every epoch's metrics at step=epoch."""

    def __init__(self, tracker: SearchTracker, max_t: int):
        self.tracker = tracker
        self.max_t = max_t
        self.last: dict[str, dict] = {}

    def _run(self, trial) -> str:
        return self.tracker.child(trial.trial_id, f"trial_{trial.trial_id}", trial.config)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trial)
        self.last[trial.trial_id] = result
        self.tracker.log_metrics(run_id, numeric_metrics(result), step=int(result.get("epoch", 0)))
        if result.get("status") == "diverged":
            self.tracker.set_tags(run_id, {"sfkd.status": "diverged",
                                           "sfkd.reason": f"loss became {result.get('loss')} at epoch {result.get('epoch')}"})

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        last = self.last.get(trial.trial_id, {})
        if last.get("status") == "diverged":
            status = "diverged"
        elif int(last.get("epoch", 0)) < self.max_t:
            status = "stopped_early"
        else:
            status = "completed"
        self.tracker.set_tags(run_id, {"sfkd.status": status, "sfkd.epochs_run": last.get("epoch", 0)})
        self.tracker.end(run_id, "FAILED" if status == "diverged" else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        self.tracker.set_tags(run_id, {"sfkd.status": "error", "sfkd.error_file": str(trial.error_file or "")})
        self.tracker.end(run_id, "FAILED")
