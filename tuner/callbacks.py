"""The Ray Tune callbacks of a search: each trial's results into MLflow (through the tracker's queue,
never waiting on the server), and one printed line per result."""
import math
import time
from pathlib import Path

from ray.tune import Callback

from trainables.config import ConfigError, DistillConfig
from trainables.probe import PROBE_FILE
from tuner.figures import log_run_figures
from tuner.progress import TrialPrinter
from tuner.tracking import SearchTracker

# Result fields that are bookkeeping rather than measurements of the trial.
NOT_METRICS = {"done", "epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
               "time_since_restore", "iterations_since_restore", "timesteps_total", "episodes_total",
               "timesteps_since_restore", "checkpoint_dir_name", "should_checkpoint"}


def numeric_metrics(result: dict) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k in NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class PrintCallback(Callback):
    """The printed progress: a line per result, a status line when a trial ends."""

    def __init__(self, printer: TrialPrinter):
        self.p = printer

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.p.result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        self.p.ended(trial.trial_id, "done" if last.get("epoch", 0) >= self.p.max_t else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.p.ended(trial.trial_id, "failed")


class MLflowTrialCallback(Callback):
    """Each trial becomes a child run: full config as params, every epoch's metrics at step=epoch."""

    def __init__(self, tracker: SearchTracker, max_t: int):
        self.tracker = tracker
        self.max_t = max_t
        self.last: dict[str, dict] = {}
        self.ending: list[tuple] = []  # trials ended, waiting for Ray's state to be saved
        self.recorded: set[str] = set()  # trials whose ending this process wrote
        self._figures = None  # one thread that draws ended trials' figures (see _record_end)

    # Pickled into Ray's tuner.pkl with the run config: the thread stays behind.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_figures"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._figures = None

    def _run(self, trial) -> str:
        # The params are the config as the trial runs it: weights a method resolves (FT's alpha 1, an AT
        # arm's beta 0) show as used, not as the space left them.
        try:
            config = DistillConfig.from_dict(trial.config).to_dict()
        except ConfigError:
            config = trial.config
        return self.tracker.child(trial.trial_id, f"trial_{trial.trial_id}", config)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trial)
        previous = self.last.get(trial.trial_id)
        if previous is None and "precision" in result:  # the first result this process sees
            self.tracker.log_params(run_id, {"precision_used": result["precision"]})
        if previous is None and "student_taps" in result:
            self.tracker.log_params(run_id, {"taps_student": result["student_taps"],
                                             "taps_teacher": result.get("teacher_taps", "")})
        if "dense_layers" in result and (previous or {}).get("dense_layers") != result["dense_layers"]:
            # a tag, not a param: iterative pruning starts dense, so the set changes as the run prunes
            dense = result["dense_layers"] or "(none)"
            self.tracker.set_tags(run_id, {"sfkd.dense_layers": dense if len(dense) <= 5000 else dense[:4990] + ",..."})
        self.last[trial.trial_id] = result
        self.tracker.log_epoch(run_id, numeric_metrics(result), int(result.get("epoch", 0)))
        if result.get("status") == "diverged":
            reason = result.get("diverged_reason") or f"loss became {result.get('loss')} at epoch {result.get('epoch')}"
            self.tracker.set_tags(run_id, {"sfkd.status": "diverged", "sfkd.reason": reason})

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        last = self.last.get(trial.trial_id) or trial.last_result or {}
        if last.get("status") == "diverged":
            status = "diverged"
        elif int(last.get("epoch", 0)) < self.max_t:
            status = "stopped_early"
        else:
            status = "completed"
        # Recorded as ended only once Ray's saved state says so too: a search killed in between must
        # not resume (and re-run) a trial that MLflow already shows as finished.
        self.ending.append((time.time(), trial, run_id, status, last.get("epoch", 0)))
        self._record_endings()

    def on_step_end(self, iteration, trials, **info):
        if self.ending:
            self._record_endings()

    def on_experiment_end(self, trials, **info):
        self._record_endings(force=True)
        self.drain()

    def drain(self) -> None:
        """Wait until every ended trial's figures are drawn and its run ended (before the writer is
        flushed for the last time, or the report is drawn)."""
        if self._figures is not None:
            self._figures.shutdown(wait=True)
            self._figures = None

    def _state_saved_at(self) -> float:
        """When Ray last saved the experiment state (what --resume restores from)."""
        run_dir = self.tracker.run_dir
        if run_dir is None:
            return float("inf")
        return max((f.stat().st_mtime for f in run_dir.glob("experiment_state-*.json")), default=0.0)

    def _record_endings(self, force: bool = False) -> None:
        saved = self._state_saved_at()
        waiting = []
        for item in self.ending:
            ended_at, trial, run_id, status, epochs = item
            if not force and saved <= ended_at:
                waiting.append(item)
                continue
            self._record_end(trial.trial_id, run_id, status, epochs, trial.checkpoint)
        self.ending = waiting

    def _record_end(self, trial_id: str, run_id: str, status: str, epochs, checkpoint) -> None:
        """Tags now; the figures and the run's end on a thread of their own: drawing a trial's heatmaps
        takes about a second, which on Tune's controller thread stalled every trial's results (Ray
        warned "callbacks.on_step_end ... may be a performance bottleneck")."""
        from concurrent.futures import ThreadPoolExecutor

        self.tracker.set_tags(run_id, {"sfkd.status": status, "sfkd.epochs_run": epochs})
        self.recorded.add(trial_id)
        if self._figures is None:
            self._figures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-figures")
        self._figures.submit(self._draw_and_end, trial_id, run_id, status, checkpoint)

    def _draw_and_end(self, trial_id: str, run_id: str, status: str, checkpoint) -> None:
        if status != "diverged":
            self._log_figures(trial_id, run_id, checkpoint)
        self.tracker.end(run_id, "FAILED" if status == "diverged" else "FINISHED")

    def reconcile(self, results) -> None:
        """After a resumed search: a trial Ray had saved as finished whose ending the killed process never
        recorded gets it now, from Ray's result."""
        for r in results:
            last = r.metrics or {}
            trial_id = last.get("trial_id")
            run_id = self.tracker.children.get(trial_id)
            if r.error is not None or trial_id in self.recorded or run_id is None or run_id.startswith("pending-"):
                continue
            try:
                if self.tracker.client.get_run(run_id).data.tags.get("sfkd.status") not in (None, "interrupted"):
                    continue
            except Exception:  # noqa: BLE001 - store unreachable: the queue keeps what follows
                pass
            status = ("diverged" if last.get("status") == "diverged"
                      else "stopped_early" if int(last.get("epoch", 0)) < self.max_t else "completed")
            self._record_end(trial_id, run_id, status, last.get("epoch", 0), r.checkpoint)

    def _log_figures(self, trial_id: str, run_id: str, checkpoint) -> None:
        """Heatmaps and density pictures of the trial's latest checkpoint. A figure that cannot be
        drawn is reported on the run and never stops the search."""
        try:
            if checkpoint is None or self.tracker.run_dir is None:
                return
            with checkpoint.as_directory() as folder:  # downloaded first when the storage is remote
                probe = Path(folder) / PROBE_FILE
                if probe.exists():
                    log_run_figures(self.tracker, run_id, probe, self.tracker.run_dir / "figures" / trial_id)
        except Exception as e:  # noqa: BLE001 - pictures are a convenience; the results matter
            self.tracker.set_tags(run_id, {"sfkd.figures_error": f"{type(e).__name__}: {e}"[:500]})

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        reason = ""
        try:  # the last line of the traceback says what went wrong
            lines = [x for x in Path(trial.error_file).read_text().splitlines() if x.strip()]
            reason = lines[-1][:500] if lines else ""
        except (OSError, TypeError):
            pass
        # Ray syncs error.txt (the full traceback) into the trial's folder in the run folder.
        self.tracker.set_tags(run_id, {"sfkd.status": "error", "sfkd.reason": reason,
                                       "sfkd.error_file": str(Path(trial.path) / "error.txt"),
                                       "sfkd.epochs_run": (trial.last_result or {}).get("epoch", 0)})
        self.tracker.end(run_id, "FAILED")
