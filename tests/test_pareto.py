"""Searches with several objectives (docs/search-spaces.md, "Several objectives"): accuracy against a
cost, early stopping that compares a trial only with trials that cost no more, the front tagged in
MLflow and drawn in the report, and the export within a budget."""
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from tuner import export, search
from tuner.cli import run_cli
from tuner.errors import UsageError
from tuner.optuna_study import STUDY_FILE, load_study
from tuner.pareto import CostFloorASHA
from tuner.spaces import SpaceError, parse_space
from tuner.tracking import PARENT_TAG

REPO = Path(__file__).resolve().parents[1]
STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE
ACC_AND_DENSITY = [{"metric": "val_acc", "mode": "max"}, {"metric": "density", "mode": "min"}]


def _scheduler(mode="max", max_t=3, grace=1, rf=2):
    return CostFloorASHA("epoch", "val_acc" if mode == "max" else "val_loss", mode, ["density"], max_t, grace, rf)


def test_a_trial_is_compared_only_with_trials_at_no_greater_cost():
    s = _scheduler()  # rungs at epochs 2 and 1; keep the top 1/2 of the peers' accuracies at a rung
    assert [m for m, _ in s.rungs] == [2, 1]
    assert s.decide("A", 1, 50.0, (0.5,)) == CONTINUE  # nothing recorded yet
    assert s.decide("B", 1, 40.0, (0.5,)) == STOP  # peers {A: 50}: median 50 > 40
    assert s.decide("C", 1, 30.0, (0.2,)) == CONTINUE  # the cheapest so far: no peers
    # D costs the most: peers A, B, C, median of 50, 40, 30 is 40 <= 45
    assert s.decide("D", 1, 45.0, (0.9,)) == CONTINUE
    # E is as cheap as C and worse: peers {C: 30}
    assert s.decide("E", 1, 29.0, (0.2,)) == STOP
    # At rung 2 only what reached it counts: A alone, then D (cost 0.9, peers {A: 52}) loses
    assert s.decide("A", 2, 52.0, (0.5,)) == CONTINUE
    assert s.decide("D", 2, 51.0, (0.9,)) == STOP
    # A later result of a trial already recorded at its rung is not judged again
    assert s.decide("C", 1, 0.0, (0.2,)) == CONTINUE


def test_smaller_is_better_for_a_loss_objective():
    s = _scheduler(mode="min")
    assert s.decide("A", 1, 1.0, (0.5,)) == CONTINUE
    assert s.decide("B", 1, 2.0, (0.5,)) == STOP  # a larger loss at the same cost
    assert s.decide("C", 1, 0.5, (0.5,)) == CONTINUE


def test_with_one_cost_for_every_trial_it_decides_as_rays_asha_does():
    rng = random.Random(0)
    ours, rays = _scheduler(max_t=9, grace=1, rf=3), _Bracket(1, 9, 3, 0)

    class Trial:  # Ray's bracket reads only the trial id
        def __init__(self, trial_id):
            self.trial_id = trial_id

    for i in range(60):
        trial_id, epoch, acc = f"t{i % 12}", rng.choice([1, 3, 5]), rng.uniform(10, 90)
        assert ours.decide(trial_id, epoch, acc, (0.3,)) == rays.on_result(Trial(trial_id), epoch, acc)


def test_a_trial_on_its_rungs_front_is_never_stopped():
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = _scheduler(rf=3)
        seen = []
        for i in range(20):
            acc, cost = float(rng.uniform(0, 100)), float(rng.choice([0.1, 0.2, 0.5, 0.9]))
            dominated = any(c <= cost and a >= acc and (c < cost or a > acc) for a, c in seen)
            decision = s.decide(f"t{i}", 1, acc, (cost,))
            if not dominated:
                assert decision == CONTINUE
            seen.append((acc, cost))


@pytest.mark.parametrize("objectives, message", [
    ([{"metric": "val_acc", "mode": "max"}], "at least two"),
    ([{"metric": "density", "mode": "min"}, {"metric": "val_acc", "mode": "max"}], "the first objective is the accuracy"),
    ([{"metric": "val_acc", "mode": "max"}, {"metric": "density", "mode": "max"}], "density has mode min"),
    ([{"metric": "val_acc", "mode": "max"}, {"metric": "flops", "mode": "min"}], "expected a cost: density, macs_effective"),
    ([{"metric": "val_acc", "mode": "max"}, {"metric": "density"}], "exactly the keys metric and mode"),
    ([{"metric": "val_acc", "mode": "max"}, {"metric": "density", "mode": "min"}, {"metric": "density", "mode": "min"}],
     "listed twice"),
])
def test_objectives_that_cannot_be_run_are_one_line_errors(objectives, message):
    with pytest.raises(SpaceError, match=message):
        parse_space("smoke", {"search.objectives": objectives})


def test_objectives_set_the_searchs_metric_and_a_different_metric_is_refused():
    space = parse_space("smoke", {"search.objectives": [{"metric": "val_loss", "mode": "min"},
                                                        {"metric": "density", "mode": "min"}]})
    assert (space.search["metric"], space.search["mode"]) == ("val_loss", "min")
    with pytest.raises(SpaceError, match="differs from the first objective"):
        parse_space("smoke", {"search.metric": "val_acc5", "search.objectives": ACC_AND_DENSITY})
    with pytest.raises(SpaceError, match="objectives are for a search"):
        parse_space("study_methods", {"search.objectives": ACC_AND_DENSITY})


@pytest.mark.parametrize("given, message", [
    (["density"], "expected COST=VALUE"), (["flops=3"], "expected COST=VALUE"),
    (["density=-1"], "not a number > 0"), (["density=abc"], "not a number > 0"),
    (["density=0.1", "density=0.2"], "given twice"),
])
def test_a_budget_that_cannot_be_read_is_one_line_before_mlflow_is_opened(given, message):
    with pytest.raises(UsageError, match=message):
        export.parse_limits(given)


def _non_dominated(points: dict) -> set:
    """Written out here, independent of tuner.ranking: higher accuracy, lower density."""
    return {t for t, (a, d) in points.items()
            if not any(a2 >= a and d2 <= d and (a2 > a or d2 < d) for t2, (a2, d2) in points.items() if t2 != t)}


@pytest.mark.slow
def test_a_search_of_accuracy_against_density_tags_draws_and_exports_its_front(ray_session, tmp_path, capsys,
                                                                               trained_teacher_file):
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space["config"].update(teacher=str(trained_teacher_file), synthetic_size=600,
                           density={"uniform": [0.1, 0.9]})
    space["search"].update(num_samples=6, objectives=ACC_AND_DENSITY)
    (tmp_path / "front.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", str(tmp_path / "front.yaml"), "--storage-path", str(tmp_path / "runs"),
                      "--tracking-uri", uri, "--name", "front", "--epochs", "2", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("front")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(children) == 6
    points = {c.data.tags["sfkd.trial_id"]: (c.data.metrics["best_val_acc"], c.data.metrics["density"])
              for c in children}
    for c in children:  # each trial's cost is its last epoch's measured density
        history = sorted(client.get_metric_history(c.info.run_id, "density"), key=lambda m: m.step)
        assert points[c.data.tags["sfkd.trial_id"]][1] == history[-1].value
    expected = _non_dominated(points)
    tagged = {c.data.tags["sfkd.trial_id"] for c in children if c.data.tags.get("sfkd.pareto") == "true"}
    assert tagged == expected and all(c.data.tags.get("sfkd.pareto") in ("true", "false") for c in children)
    assert set(parent.data.tags["sfkd.pareto_trials"].split(",")) == expected
    assert f"front (val_acc, density): {len(expected)} of 6 finished trials" in out
    for trial_id in expected:
        assert f"| {trial_id} | {points[trial_id][0]:.2f} | {points[trial_id][1]:.4f} |" in out
    # Optuna was told both objectives, in order
    study = load_study(tmp_path / "runs" / "front" / STUDY_FILE)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert sorted(tuple(t.values) for t in study.trials if t.values) == sorted(points.values())
    # The report draws the front, each point a link to its child run
    report = tmp_path / "runs" / "front" / "report"
    assert (report / "front.png").stat().st_size > 0
    svg = (report / "front.svg").read_text()
    for c in children:
        assert f"/#/experiments/{exp.experiment_id}/runs/{c.info.run_id}" in svg
    assert "Accuracy against cost" in (report / "report.html").read_text()
    # Export within a budget: the most accurate trial whose density is at most the median one
    limit = sorted(d for _, d in points.values())[2]
    feasible = {t: a for t, (a, d) in points.items() if d <= limit}
    best = min(feasible, key=lambda t: (-feasible[t], points[t][1], t))  # equal accuracy: the cheaper
    assert export.main(["--run", parent.info.run_id, "--tracking-uri", uri, "--max", f"density={limit}",
                        "--out", str(tmp_path / "budget.yaml")]) == 0
    text = (tmp_path / "budget.yaml").read_text()
    assert f"# sfkd.trial_id: {best}" in text and f"# sfkd.budget: density <= {limit:g}" in text
    assert best in expected  # the most accurate within a cost bound is always on the front
    # Without a budget the export lists the front and asks for one, in one line, exit 2
    capsys.readouterr()
    rc = run_cli(export.main, ["--run", parent.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "x.yaml")])
    captured = capsys.readouterr()
    assert rc == 2 and not (tmp_path / "x.yaml").exists()
    assert captured.err.count("\n") == 1 and "choose a budget, e.g. --max density=VALUE" in captured.err
    assert all(f"| {t} |" in captured.out for t in expected)
    # A budget no trial meets: one line, nothing written
    rc = run_cli(export.main, ["--run", parent.info.run_id, "--tracking-uri", uri, "--max", "density=0.01",
                               "--out", str(tmp_path / "y.yaml")])
    assert rc == 2 and not (tmp_path / "y.yaml").exists()
    assert "no finished trial" in capsys.readouterr().err
