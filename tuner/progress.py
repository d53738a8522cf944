import sys

from tqdm import tqdm

from tuner.ranking import better, score_of


def training_bar(epochs: int, batches_per_epoch: int, desc: str, enabled: bool = True) -> tqdm:
    """A bar that moves every batch: a real-data teacher epoch on a CPU takes tens of minutes."""
    return tqdm(total=epochs * batches_per_epoch, desc=desc, unit="batch", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, leave=True)


def epoch_postfix(bar: tqdm, epoch: int, epochs: int, **values) -> None:
    bar.set_postfix(epoch=f"{epoch}/{epochs}", **values, refresh=True)


class TrialPrinter:
    """One line per trial result and a status line when a trial ends; Ray's tables stay out of sight."""

    def __init__(self, max_t: int, metric: str = "val_acc", mode: str = "max"):
        self.max_t, self.metric, self.mode = max_t, metric, mode
        self.start = None
        self.best = None
        self.states: dict[str, str] = {}

    def result(self, trial_id: str, r: dict) -> None:
        import time

        self.start = self.start or time.monotonic()
        self.states[trial_id] = "running"
        value, score = r.get(self.metric), score_of(r, self.metric)
        if score is not None and r.get("status") != "diverged" and better((score, trial_id), self.best, self.mode):
            self.best = (score, trial_id)
        shown = f"{value:6.2f}" if value is not None else "   n/a"
        extra = "  DIVERGED" if r.get("status") == "diverged" else ""
        print(f"[{time.monotonic() - self.start:7.1f}s] trial {trial_id}  epoch {r.get('epoch', 0):>3}/{self.max_t}  "
              f"{self.metric} {shown}  loss {r.get('loss', float('nan')):.4f}  "
              f"density {r.get('density', float('nan')):.3f}  {r.get('img_per_s', 0):6.0f} img/s{extra}", flush=True)

    def ended(self, trial_id: str, state: str) -> None:
        self.states[trial_id] = state
        counts = {s: sum(v == s for v in self.states.values()) for s in ("running", "stopped", "done", "failed")}
        best = f"best {self.metric} {self.best[0]:.2f} (trial {self.best[1]})" if self.best else "no result yet"
        print(f"status: {counts['running']} running, {counts['stopped']} stopped early, {counts['done']} done, "
              f"{counts['failed']} failed; {best}", flush=True)
