"""Confirmation (docs/search-spaces.md, "Confirmation"): a search's K best configs run again with N new
seeds, compared pairwise by seed under Holm's correction, and the best mean exported."""
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tuner import export, search
from tuner.spaces import SpaceError, parse_space
from tuner.tracking import PARENT_TAG

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("confirm, message", [
    ({"top": 1, "seeds": 3}, "search.confirm.top: expected an integer >= 2"),
    ({"top": 3, "seeds": 1}, "search.confirm.seeds: expected an integer >= 2"),
    ({"top": 3}, "expected {top: K, seeds: N}"),
])
def test_a_confirmation_that_cannot_compare_is_refused_before_anything_runs(confirm, message):
    with pytest.raises(SpaceError, match=message):
        parse_space("smoke", {"search.confirm": confirm})


def test_a_study_has_no_winner_to_confirm_and_the_flag_reads_k_and_n():
    with pytest.raises(SpaceError, match="no winner to confirm"):
        parse_space("study_methods", {"search.confirm": {"top": 2, "seeds": 2}})
    a = search.build_parser().parse_args(["--space", "smoke", "--confirm", "3,4"])
    assert search.cli_overrides(a)["search.confirm"] == {"top": 3, "seeds": 4}
    with pytest.raises(SystemExit) as e:
        search.build_parser().parse_args(["--space", "smoke", "--confirm", "3"])
    assert e.value.code == 2


@pytest.mark.slow
def test_confirmation_puts_the_really_better_config_first_and_leaves_two_equal_ones_unresolved(ray_session, tmp_path,
                                                                                                capsys):
    """Three configs: `a_same` and `b_same` are one config under two labels (lr 0.0005, which barely
    trains in 2 epochs), `c_better` trains at lr 0.05. The search ranks by top-5 accuracy on 4 classes,
    which is 100% for every trial, so its single-seed winner is the first trial by id: a_same, by a tie
    and not by merit. Confirmation (3 new seeds each) must put `c_better` first, resolved against both,
    and leave b_same - a_same unresolved; the export then gives `c_better`."""
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    config = {k: v for k, v in space["config"].items() if not isinstance(v, dict)}
    config.update(teacher="none", method="ft", synthetic_classes=4, epochs=2)
    for key in ("teacher_arch", "teacher_epochs", "gamma", "bg_weight", "beta"):
        config.pop(key, None)
    space.update(config=config, arms={"a_same": {"lr": 0.0005}, "b_same": {"lr": 0.0005}, "c_better": {"lr": 0.05}},
                 scheduler={"type": "fifo"})
    space["search"].update(searcher="grid", num_samples=1, metric="val_acc5", max_concurrent=3,
                           confirm={"top": 3, "seeds": 3})
    (tmp_path / "confirm.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", str(tmp_path / "confirm.yaml"), "--storage-path", str(tmp_path / "runs"),
                      "--tracking-uri", uri, "--name", "c", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("confirm")
    parents = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")
    (searched,) = [p for p in parents if "study.confirms" not in p.data.params]
    (confirmation,) = [p for p in parents if p.data.params.get("study.confirms") == searched.info.run_id]
    trials = {r.data.params["arm"]: r.data.tags["sfkd.trial_id"] for r in client.search_runs(
        [exp.experiment_id], f"tags.`{PARENT_TAG}` = '{searched.info.run_id}'")}
    assert searched.data.tags["sfkd.best_trial"] == trials["a_same"]  # the tie's winner, not the best config
    runs = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{confirmation.info.run_id}'")
    assert len(runs) == 9 and {r.data.params["seed"] for r in runs} == {"1", "2", "3"}  # seeds the search never used
    assert all("test_acc" not in r.data.metrics for r in runs)  # validation only
    last = {(r.data.params["arm"], r.data.params["seed"]): r.data.metrics["val_acc"] for r in runs}
    a, b, c = (f"trial_{trials[k]}" for k in ("a_same", "b_same", "c_better"))
    assert all(last[(a, s)] == last[(b, s)] for s in "123")  # one config, one seed: one run
    assert all(last[(c, s)] > last[(a, s)] for s in "123")
    table = (tmp_path / "runs" / "c-confirm" / "report" / "study_table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| {b} - {a} |"))
    assert "+0.00 (no spread: 3 identical pairs)" in row and row.endswith("| not resolved |")
    for other in (a, b):
        row = next(line for line in table.splitlines() if line.startswith(f"| {c} - {other} |"))
        assert row.endswith("| resolved, higher |")
    assert "reads the validation split only" in table
    searched = client.get_run(searched.info.run_id)
    assert searched.data.tags["sfkd.confirmed_best_trial"] == trials["c_better"]
    assert searched.data.tags["sfkd.confirmation_run"] == confirmation.info.run_id
    assert client.get_run(confirmation.info.run_id).data.tags["sfkd.winner_held"] == "false"
    assert f"the search's single-seed winner lost: trial {trials['c_better']} has the best mean" in out
    assert "resolved after Holm's correction" in out
    # The exported best is the confirmed one, and says where it was confirmed
    assert export.main(["--run", searched.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "b.yaml")]) == 0
    text = (tmp_path / "b.yaml").read_text()
    assert f"# sfkd.trial_id: {trials['c_better']}" in text
    assert f"# sfkd.confirmation_run_id: {confirmation.info.run_id}" in text
    assert yaml.safe_load(text)["lr"] == 0.05
