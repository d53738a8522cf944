"""Searches with several objectives: the most accurate student for what it costs.

A space's `search.objectives` lists one accuracy objective first (the search's metric, scored by the
ranking rule as `best_<metric>`) and then one or more costs that a smaller student has less of
(`density`, `macs_effective`), read from the trial's last result: the student it ends with. See
docs/search-spaces.md ("Several objectives") for the rules, and docs/decisions.md for why early
stopping compares a trial only with trials that cost no more.
"""
import json
import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuner.ranking import pareto_front, score_key, score_of

ACCURACY_METRICS = {"val_acc": "max", "val_acc5": "max", "val_loss": "min"}
# Costs known from the config and the masks, reported by every epoch's result (trainables.run).
COST_METRICS = {"density": "fraction of the student's prunable weights kept",
                "macs_effective": "multiply-accumulates of one image, counting only kept weights"}


def objectives_of(search: dict) -> list[dict] | None:
    """The search section's objectives, or None for a search with one metric."""
    return search.get("objectives") or None


def result_field(objective: dict) -> str:
    """What a trial's result reports for an objective: the accuracy's ranking score, or the cost itself."""
    return score_key(objective["metric"]) if objective["metric"] in ACCURACY_METRICS else objective["metric"]


def objective_values(values: dict, objectives: list[dict]) -> tuple[float, ...] | None:
    """A trial's objective values from its last result or its MLflow metrics (the latest value of each
    is the last epoch's); None when one is missing or not finite."""
    out = []
    for o in objectives:
        if o["metric"] in ACCURACY_METRICS:
            v = score_of(values, o["metric"])
        else:
            v = values.get(o["metric"])
            v = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
        if v is None:
            return None
        out.append(v)
    return tuple(out)


def front(entries, objectives: list[dict]) -> list:
    """The non-dominated (values, trial id, anything) entries, most accurate first."""
    return pareto_front(entries, tuple(o["mode"] for o in objectives))


def objectives_param(objectives: list[dict]) -> str:
    """How a search's objectives are kept on its MLflow parent run (param `search.objectives`)."""
    return json.dumps([{"metric": o["metric"], "mode": o["mode"]} for o in objectives])


def objectives_from_params(params: dict) -> list[dict] | None:
    raw = params.get("search.objectives")
    if raw in (None, "", "None"):
        return None
    return json.loads(raw)


def feasible(values: tuple[float, ...], objectives: list[dict], limits: dict[str, float]) -> bool:
    """Whether a trial's values meet every `--max metric=value` limit (costs only)."""
    by_metric = {o["metric"]: v for o, v in zip(objectives, values)}
    return all(by_metric[k] <= limit for k, limit in limits.items())


def format_value(metric: str, value: float) -> str:
    if metric == "macs_effective":
        return f"{value / 1e6:.2f}M"
    if metric == "density":
        return f"{value:.4f}"
    return f"{value:.2f}"


def front_table(rows: list[tuple[tuple[float, ...], str]], objectives: list[dict]) -> str:
    """The front as a short Markdown table: trial id and each objective."""
    head = ["trial"] + [result_field(o) if o["metric"] in ACCURACY_METRICS else o["metric"] for o in objectives]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for values, trial_id in rows:
        lines.append("| " + " | ".join([trial_id] + [format_value(o["metric"], v) for o, v in zip(objectives, values)])
                     + " |")
    return "\n".join(lines)


class CostFloorASHA(FIFOScheduler):
    """ASHA (Li et al. 2020) for a search with costs: at each rung a trial is compared only with the
    trials recorded at that rung that cost no more than it does (no greater value of every cost), and
    stopped when its accuracy there is below the (1 - 1/reduction_factor) quantile of theirs (itself
    left out, as in Ray's ASHA). With one cost value for all trials this is Ray's single-bracket ASHA;
    a trial on the rung's accuracy-cost front is never stopped, because nothing at its cost or less is
    more accurate. Written here because Ray's schedulers and Optuna's pruners take one objective
    (ray#8018, optuna#3450)."""

    def __init__(self, time_attr: str, metric: str, mode: str, costs: list[str], max_t: int, grace_period: int,
                 reduction_factor: float):
        super().__init__()
        self._time_attr, self._metric, self._costs = time_attr, metric, list(costs)
        self._sign = 1.0 if mode == "max" else -1.0
        self._max_t, self._rf = max_t, reduction_factor
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        # Rung epochs, highest first (a result can pass several; it is recorded at the highest).
        self.rungs = [(grace_period * reduction_factor ** k, {}) for k in reversed(range(count))]
        self.num_stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the metric, mode and costs are this scheduler's own

    def decide(self, trial_id: str, epoch: float, accuracy: float, cost: tuple[float, ...]) -> str:
        """CONTINUE or STOP for a trial's result at `epoch`, recording it at the highest rung it reached."""
        reward = self._sign * accuracy
        for milestone, recorded in self.rungs:
            if epoch < milestone or trial_id in recorded:
                continue
            peers = [r for r, c in recorded.values() if all(x <= y for x, y in zip(c, cost))]
            recorded[trial_id] = (reward, tuple(cost))
            if peers and reward < np.nanpercentile(peers, (1 - 1 / self._rf) * 100):
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def _decide_result(self, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result or any(c not in result for c in self._costs):
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, result[self._time_attr], result[self._metric],
                           tuple(float(result[c]) for c in self._costs))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            action = TrialScheduler.STOP
        else:
            action = self._decide_result(trial, result)
        self.num_stopped += action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result:
            self._decide_result(trial, result)

    def debug_string(self) -> str:
        return f"CostFloorASHA: {self.num_stopped} stopped early; costs {', '.join(self._costs)}"

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
