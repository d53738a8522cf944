"""python -m tuner.export: the best config of a search, written again from MLflow alone; with --max, the
most accurate trial within a budget."""
import math
import sys

from tuner.best_config import write_best_config
from tuner.cli import OneLineParser, output_path, quiet_libraries, run_cli
from tuner.errors import UsageError
from tuner.pareto import COST_METRICS, feasible, format_value, front, front_table, objective_values, objectives_from_params
from tuner.ranking import score_of
from tuner.search_runs import best_child, find_search_run, finished_children, search_objective, trial_config
from tuner.storage import parent_of
from tuner.tracking import tracking_client


def parse_limits(given: list[str]) -> dict[str, float]:
    """--max density=0.1 --max macs_effective=2e7 -> {density: 0.1, macs_effective: 2e7}."""
    limits = {}
    for text in given:
        key, eq, raw = text.partition("=")
        if not eq or key not in COST_METRICS:
            raise UsageError(f"--max {text}: expected COST=VALUE with COST one of {', '.join(COST_METRICS)} "
                             f"(e.g. --max density=0.1)")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"--max {text}: {raw!r} is not a number > 0")
        if key in limits:
            raise UsageError(f"--max {key} is given twice")
        limits[key] = value
    return limits


def within_budget(client, parent, limits: dict[str, float]):
    """The most accurate finished trial whose costs meet every limit (its best metric, as the ranking
    rule scores it), and its costs."""
    metric, mode = search_objective(parent)
    objectives = [{"metric": metric, "mode": mode}] + [{"metric": k, "mode": "min"} for k in limits]
    entries = [(objective_values(r.data.metrics, objectives), r.data.tags.get("sfkd.trial_id", ""), r)
               for r in finished_children(client, parent)]
    entries = [e for e in entries if e[0] is not None]
    if not entries:
        raise UsageError(f"search run {parent.info.run_id} has no finished trial with {metric} and "
                         f"{', '.join(limits)}")
    inside = [e for e in entries if feasible(e[0], objectives, limits)]
    if not inside:
        said = "; ".join(f"the least {k} is {format_value(k, min(v[i + 1] for v, _, _ in entries))}"
                         for i, k in enumerate(limits))
        raise UsageError(f"no finished trial of search run {parent.info.run_id} is within "
                         f"{', '.join(f'{k} <= {v:g}' for k, v in limits.items())} ({said})")
    # Equal accuracy: the cheaper trial, then the smaller trial id (the ranking rule's tie-break).
    sign = -1 if mode == "max" else 1
    values, _, run = min(inside, key=lambda e: (sign * e[0][0], *e[0][1:], e[1]))
    return run, dict(zip(limits, values[1:])), len(inside), len(entries)


def main(argv=None) -> int:
    quiet_libraries()
    p = OneLineParser(prog="python -m tuner.export", description=(
        "Write the best config of a search as YAML: the latest search in an MLflow experiment, or the one "
        "whose parent run id --run gives. With --max, the most accurate finished trial within that budget. "
        "A search with several objectives needs --max: it has a front of trials, not one best."))
    p.add_argument("--experiment", help="MLflow experiment name (default of a search: its space name, e.g. sfkd_gamma)")
    p.add_argument("--run", help="a search's parent run id (instead of the latest search in --experiment)")
    p.add_argument("--max", action="append", default=[], metavar="COST=VALUE",
                   help=f"a budget the exported trial must meet, repeatable: {', '.join(COST_METRICS)} "
                        f"(e.g. --max density=0.1 --max macs_effective=2e7); the last epoch's value of each trial")
    p.add_argument("--out", default="best_config.yaml", help="output YAML (default best_config.yaml)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    a = p.parse_args(argv)
    limits = parse_limits(a.max)
    out = output_path("--out", a.out)
    client = tracking_client(a.tracking_uri)
    parent = find_search_run(client, a.experiment, a.run)
    metric, _ = search_objective(parent)
    objectives = objectives_from_params(parent.data.params)
    header = {}
    if limits:
        best, costs, n_inside, n_all = within_budget(client, parent, limits)
        header = {"budget": ", ".join(f"{k} <= {v:g}" for k, v in limits.items()),
                  **{k: format_value(k, v) for k, v in costs.items()}}
        said = f"; {', '.join(f'{k} {format_value(k, v)}' for k, v in costs.items())}, most accurate of {n_inside} " \
               f"of {n_all} finished trials within the budget"
    elif objectives:
        entries = [(objective_values(r.data.metrics, objectives), r.data.tags.get("sfkd.trial_id", ""), r)
                   for r in finished_children(client, parent)]
        print(front_table([(v, t) for v, t, _ in front(entries, objectives)], objectives))
        cost = objectives[1]["metric"]
        raise UsageError(f"search run {parent.info.run_id} has {len(objectives)} objectives and the front above, not "
                         f"one best: choose a budget, e.g. --max {cost}=VALUE")
    else:
        best, said = best_child(client, parent), ""
        if parent.data.tags.get("sfkd.confirmed_best_trial"):
            header = {"confirmation_run_id": parent.data.tags.get("sfkd.confirmation_run")}
            said = f"; the best mean over new seeds in confirmation run {header['confirmation_run_id']}"
    score = score_of(best.data.metrics, metric)
    storage = parent.data.params.get("storage")
    out = write_best_config(out, trial_config(client, best),
                            search_run_id=parent.info.run_id,
                            experiment=client.get_experiment(parent.info.experiment_id).name,
                            trial_id=best.data.tags.get("sfkd.trial_id"), **{metric: round(score, 4)}, **header,
                            storage_path=parent_of(storage) if storage else None)
    print(f"best trial {best.data.tags.get('sfkd.trial_id')} ({metric} {score:.2f}{said}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
