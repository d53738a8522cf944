"""Interruptions and faults never lose a finished trial or a logged metric."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import cloudpickle
from test_study import STUDY

from tuner import driver, search
from tuner.tracking import PARENT_TAG


def _children(uri, experiment="smoke"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sfkd.kind") == "search"]
    return client, parents, [r for r in runs if PARENT_TAG in r.data.tags]


@pytest.mark.slow
def test_diverging_and_failing_trials_are_reported_and_the_search_goes_on(ray_session, tmp_path, monkeypatch,
                                                                         trained_teacher_file):
    import faults

    cloudpickle.register_pickle_by_value(faults)
    faults.FlakyTrainable.LOG = str(tmp_path / "restores.log")
    monkeypatch.setattr(driver, "SFKDTrainable", faults.FlakyTrainable)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", "smoke", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
                      "--name", "faults", "--quiet", "--set", "lr={grid: [0.05, 0.1, 1000000.0]}",
                      "--set", "search.searcher=grid", "--set", "search.num_samples=1", "--set", "scheduler.type=fifo",
                      "--set", "beta=0.5", "--set", "gamma=0.5", "--set", "bg_weight=0.4", "--set", "synthetic_size=400",
                      "--epochs", "2", "--set", "search.max_failures=1", "--set", f"teacher={trained_teacher_file}"])
    assert rc == 0
    client, parents, children = _children(uri)
    by_lr = {c.data.params["lr"]: c for c in children}
    assert set(by_lr) == {"0.05", "0.1", "1000000.0"}
    # lr 1e6: the loss is not finite in epoch 1; the trial stops at once, says why, and never wins.
    diverged = by_lr["1000000.0"]
    assert diverged.data.tags["sfkd.status"] == "diverged" and "loss became" in diverged.data.tags["sfkd.reason"]
    assert "val_acc" not in diverged.data.metrics
    # lr 0.1 raises in epoch 2 every time: retried once from its epoch-1 checkpoint, then failed.
    failed = by_lr["0.1"]
    assert failed.data.tags["sfkd.status"] == "error" and failed.info.status == "FAILED"
    error_file = Path(failed.data.tags["sfkd.error_file"])
    assert error_file.is_file() and "simulated fault in epoch 2" in error_file.read_text()
    assert str(tmp_path / "runs" / "faults") in str(error_file)
    assert "restored lr=0.1 at epoch 1" in (tmp_path / "restores.log").read_text()
    # The healthy trial finished and is the best.
    ok = by_lr["0.05"]
    assert ok.data.tags["sfkd.status"] == "completed"
    assert parents[0].data.tags["sfkd.best_trial"] == ok.data.tags["sfkd.trial_id"]


GATED_SEARCH = """
import sys
from ray import cloudpickle
import faults
cloudpickle.register_pickle_by_value(faults)
faults.GatedTrainable.GATE = sys.argv[1]
from tuner import driver, search
from tuner.cli import run_cli
driver.SFKDTrainable = faults.GatedTrainable
sys.exit(run_cli(search.main, sys.argv[2:]))
"""


def _start_gated_search(tmp_path, uri, address, *extra):
    """The real search command, except that trials after the third park before their first epoch."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-c", GATED_SEARCH, str(tmp_path / "gate"), "--space", "smoke", "--storage-path",
         str(tmp_path / "runs"), "--tracking-uri", uri, "--address", address, "--quiet", *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_search_killed_with_sigkill_resumes_without_rerunning_or_duplicating(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    address = ray_session.get_runtime_context().gcs_address
    # 6 trials, 2 at a time: trials 1-3 run, and the next two park in both slots. The kill comes once
    # that state is observed: 3 trials have ended, 2 are parked, the 6th has not started.
    proc = _start_gated_search(tmp_path, uri, address, "--name", "killed", "--set", "synthetic_size=600",
                               "--set", "search.num_samples=6", "--set", "search.max_concurrent=2")
    deadline = time.monotonic() + 400
    ended = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        parked = list((tmp_path / "gate").glob("parked*"))
        if len(parked) < 2:
            continue
        try:
            _, _, children = _children(uri)
        except Exception:  # noqa: BLE001 - the experiment may not exist yet
            continue
        ended = [c for c in children if c.data.tags.get("sfkd.status") in ("completed", "stopped_early")]
        if len(ended) == 3:  # the MLflow record of every ended trial has been written
            break
    assert proc.poll() is None, proc.stdout.read()
    assert len(ended) == 3, "the search did not reach the parked state in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    client, _, before = _children(uri)
    history_before = {c.info.run_id: [(m.step, m.value) for m in client.get_metric_history(c.info.run_id, "val_acc")]
                      for c in ended}
    assert len(before) <= 5 and not (tmp_path / "gate" / "start6").exists()

    r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--storage-path",
                        str(tmp_path / "runs"), "--address", address, "--resume", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming MLflow run" in r.stdout
    client, parents, children = _children(uri)
    assert len(parents) == 1  # the same parent run, continued
    trial_ids = [c.data.tags["sfkd.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 6  # exactly one child per trial
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "lr")]
        assert steps == sorted(set(steps)), (c.data.tags["sfkd.trial_id"], steps)  # no duplicated steps
        assert "sfkd.status" in c.data.tags
    for run_id, hist in history_before.items():  # finished trials did not run again
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == hist
    assert (tmp_path / "runs" / "killed" / "best_config.yaml").is_file()
    assert parents[0].info.status == "FINISHED"


# The two-arm study of test_study, one trial at a time and 2 epochs.
ARMS_STUDY = STUDY.replace("epochs: 4", "epochs: 2").replace("max_concurrent: 2", "max_concurrent: 1")


@pytest.mark.slow
def test_a_study_killed_then_interrupted_resumes_with_every_arms_recipe_and_keeps_finished_trials(
        ray_session, tmp_path, trained_teacher_file):
    """An arm's values reach each trial through Ray's sample_from, which Ray saves as placeholders. Trials
    that the grid creates only after a resume must still get their arm's values, not the placeholders.
    And interrupting a resumed search must not relabel the trials an earlier process finished."""
    space_file = tmp_path / "arms.yaml"
    space_file.write_text(ARMS_STUDY.format(teacher=trained_teacher_file))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    address = ray_session.get_runtime_context().gcs_address
    # 6 trials, one at a time: trials 1-3 run, the 4th parks, the 5th and 6th do not exist yet when the
    # driver is killed, so the resumed search creates them.
    proc = _start_gated_search(tmp_path, uri, address, "--space", str(space_file), "--name", "arms")
    deadline = time.monotonic() + 400
    ended = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        if not list((tmp_path / "gate").glob("parked*")):
            continue
        try:
            _, _, ended = _children(uri, "arms")
        except Exception:  # noqa: BLE001 - the experiment may not exist yet
            continue
        ended = [c for c in ended if c.data.tags.get("sfkd.status") == "completed"]
        if len(ended) == 3:
            break
    assert proc.poll() is None, proc.stdout.read()
    assert len(ended) == 3, "the study did not reach the parked state in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    finished = {c.data.tags["sfkd.trial_id"] for c in ended}

    # Resumed, its 4th trial parks again, and this time the search is interrupted (SIGINT): the trials the
    # killed process finished keep their endings; only what was running is marked interrupted.
    for parked in (tmp_path / "gate").glob("parked*"):
        parked.unlink()
    proc = _start_gated_search(tmp_path, uri, address, "--space", str(space_file), "--name", "arms", "--resume")
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None and not list((tmp_path / "gate").glob("parked*")):
        time.sleep(1)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    _, _, children = _children(uri, "arms")
    for c in children:
        if c.data.tags["sfkd.trial_id"] in finished:
            assert (c.data.tags["sfkd.status"], c.info.status) == ("completed", "FINISHED")
        else:
            assert c.data.tags["sfkd.status"] == "interrupted"

    r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", str(space_file), "--storage-path",
                        str(tmp_path / "runs"), "--address", address, "--resume", "--name", "arms", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "__fn_ph" not in r.stdout + r.stderr
    client, (parent,), children = _children(uri, "arms")
    assert sorted((c.data.params["arm"], c.data.params["seed"]) for c in children) == [
        (a, str(s)) for a in ("ft", "kd") for s in range(3)]
    for c in children:
        assert c.data.tags["sfkd.status"] == "completed", (c.data.params["arm"], c.data.tags)
        assert c.data.params["method"] == c.data.params["arm"]  # each arm's own method, not a placeholder
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize("args,expect", [
    (["--resume"], "no previous search of space 'smoke'"),
    (["--resume", "--name", "not-a-search"], "is not a search folder"),
])
def test_resume_without_a_previous_search_exits_2_with_one_line(tmp_path, args, expect):
    (tmp_path / "runs" / "not-a-search").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "tuner.search", "--space", "smoke", "--storage-path",
                        str(tmp_path / "runs"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in r.stderr


def test_a_snapshot_naming_a_deleted_checkpoint_resumes_from_the_newest_one_that_loads(tmp_path):
    """Ray's snapshot can name checkpoint_000004 after the killed driver deleted it (num_to_keep ranks by the
    metric, so a newer checkpoint evicts the previous latest at once). The trial resumes from the newest
    checkpoint of its own folder that loads: checkpoint_000006 was cut off by the kill, so 000005."""
    from ray import tune

    from trainables.models import create_model
    from trainables.ray_trainable import CHECKPOINT_FILE, newest_loadable_checkpoint
    from trainables.sparsity import apply_masks, init_masks, save_sparse

    trial = tmp_path / "trial"
    model = create_model("resnet8", 10)
    masks = init_masks(model, 0.5, "uniform", seed=0)
    apply_masks(model, masks)
    for i in (3, 5, 6):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        save_sparse(trial / f"checkpoint_00000{i}" / CHECKPOINT_FILE, model.state_dict(), masks, 0.5,
                    extra={"epoch": i + 1})
    cut = trial / "checkpoint_000006" / CHECKPOINT_FILE
    cut.write_bytes(cut.read_bytes()[:-100])  # the copy the kill interrupted
    gone = tune.Checkpoint.from_directory(str(trial / "checkpoint_000004"))

    found = newest_loadable_checkpoint(gone)
    assert found is not None and Path(found.path).name == "checkpoint_000005"
    (trial / "checkpoint_000005" / CHECKPOINT_FILE).unlink()
    assert Path(newest_loadable_checkpoint(gone).path).name == "checkpoint_000003"
    for i in (3, 6):
        (trial / f"checkpoint_00000{i}" / CHECKPOINT_FILE).unlink()
    assert newest_loadable_checkpoint(gone) is None  # nothing to resume from: Ray's own error stands


def test_a_trial_whose_ending_a_killed_driver_tagged_but_never_closed_is_closed_on_resume(tmp_path):
    """The ending of a trial is its tag first, then (after its figures, on a thread) the run's end. A driver
    killed between the two leaves a run tagged completed but RUNNING; the resume closes it at once, so an
    interruption of the resumed search (which leaves earlier endings alone) cannot leave it RUNNING."""
    from tuner.tracking import SearchTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("killed")
    parent = client.create_run(exp, tags={"sfkd.kind": "search"})
    ended = {}
    for trial_id, status in (("t1", "completed"), ("t2", "diverged"), ("t3", None)):
        run = client.create_run(exp, tags={PARENT_TAG: parent.info.run_id, "sfkd.trial_id": trial_id,
                                           **({"sfkd.status": status} if status else {})})
        ended[trial_id] = run.info.run_id
    tracker = SearchTracker(uri, experiment="killed", run_dir=tmp_path)
    tracker.resume_parent(parent.info.run_id)
    assert client.get_run(ended["t1"]).info.status == "FINISHED"
    assert client.get_run(ended["t2"]).info.status == "FAILED"
    assert client.get_run(ended["t3"]).info.status == "RUNNING"  # no ending recorded: the resume runs it on
    assert tracker.ended_before == {"t1", "t2"}
