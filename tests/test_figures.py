"""Attention probe and figures: hand-computed shares, a real teacher's foreground bias, valid PNGs."""
from pathlib import Path

import pytest
import torch

from trainables.probe import attention_probe, foreground_share, mean_square_map, probe_square
from trainables.run import DistillRun
from tuner.figures import DENSITY_CURVE_FILE, HEATMAP_FILE, LAYER_DENSITY_FILE, draw_run_figures, load_probe
from tuner.optuna_study import load_study, study_importances
from tuner.search_report import searched_keys

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_teacher(trained_teacher_file) -> Path:
    return trained_teacher_file


def test_attention_map_is_the_channel_mean_of_squared_activations():
    f = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    assert torch.allclose(mean_square_map(f), torch.full((1, 3, 3), 2.5))  # (1 + 4) / 2


def test_foreground_share_is_the_attention_mass_inside_the_central_square():
    flat = torch.ones(1, 4, 4)
    assert foreground_share(flat, 2).item() == pytest.approx(4 / 16)  # area alone
    centred = torch.zeros(1, 4, 4)
    centred[0, 1:3, 1:3] = 5.0
    assert foreground_share(centred, 2).item() == pytest.approx(1.0)
    mixed = torch.ones(1, 4, 4)
    mixed[0, 1:3, 1:3] = 3.0  # 4 * 3 = 12 inside, 12 * 1 = 12 outside
    assert foreground_share(mixed, 2).item() == pytest.approx(0.5)


def test_the_share_is_measured_on_the_configured_square_or_half_the_map_for_fitnet():
    assert probe_square(4, 8, 8) == 4
    assert probe_square(0, 8, 8) == 4
    assert probe_square(6, 4, 4) == 4  # a teacher with a smaller map: clamped


def test_a_teacher_of_centred_objects_puts_more_attention_in_the_foreground_than_area_alone(trained_teacher):
    run = DistillRun({"dataset": "synthetic", "synthetic_size": 1200, "student": "resnet8", "teacher_arch": "resnet8",
                      "teacher": str(trained_teacher), "method": "sfkd", "fg_size": 4, "epochs": 1}, device="cpu")
    probe, _ = attention_probe(run.student, run.teacher, run.data.val_x, run.data.mean, run.data.std, 4, (-1, -1), run.device)
    assert probe["area_share"] == pytest.approx(16 / 64)
    # The synthetic class object fills the central half of the image (the 4x4 square of the 8x8 map).
    assert probe["teacher_fg_share"] > probe["area_share"] + 0.15


@pytest.mark.parametrize("schedule", ["one-shot", "iterative"])
def test_a_run_draws_valid_heatmap_and_density_pngs_and_the_curve_only_when_pruning(trained_teacher, tmp_path, schedule):
    cfg = {"dataset": "synthetic", "synthetic_size": 400, "student": "resnet8", "teacher_arch": "resnet8",
           "teacher": str(trained_teacher), "method": "sfkd", "epochs": 2, "density": 0.3, "prune_schedule": schedule,
           "prune_steps": 2, "sparse_init": "magnitude" if schedule == "iterative" else "ERK"}
    run = DistillRun(cfg, device="cpu")
    for _ in range(2):
        metrics = run.step()
    assert 0 < metrics["student_fg_share"] <= 1 and 0 < metrics["teacher_fg_share"] <= 1
    torch.save(run.last_probe, tmp_path / "probe.pt")
    probe = load_probe(tmp_path / "probe.pt")  # weights_only=True
    assert probe["images"].shape == (8, 3, 32, 32) and probe["student"].shape == (8, 8, 8)
    assert probe["density_history"][-1, 1].item() == pytest.approx(0.3, abs=1e-3)
    files = {f.name: f for f in draw_run_figures(tmp_path / "probe.pt", tmp_path / "figs")}
    assert (DENSITY_CURVE_FILE in files) == (schedule == "iterative")
    for name in (HEATMAP_FILE, LAYER_DENSITY_FILE) + ((DENSITY_CURVE_FILE,) if schedule == "iterative" else ()):
        data = files[name].read_bytes()
        assert data[:8] == PNG and len(data) > 5000


def _study_file(path, values, epochs):
    """A real Optuna study in RDB storage, as a search records it: a log-scale gamma and each trial's
    Ray id and epochs run."""
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s", direction="maximize")
    dist = {"gamma": FloatDistribution(1e-3, 1.0, log=True)}
    for i, (value, n) in enumerate(zip(values, epochs)):
        study.add_trial(optuna.trial.create_trial(params={"gamma": 10 ** -(i % 3) / 2}, distributions=dist, value=value,
                                                  user_attrs={"ray_trial_id": f"t{i}", "epochs": n}))
    return path


def test_report_searches_only_differing_keys():
    trials = [{"trial_id": f"t{i}", "status": "completed", "best": 50.0 + i, "curve": [(1, 50.0 + i)],
               "params": {"gamma": str(0.1 * (i + 1)), "density": "0.5", "teacher": f"/x/{i}"}} for i in range(3)]
    assert searched_keys(trials) == ["gamma"]


def test_importances_come_from_the_real_study_at_one_budget_or_say_that_they_mix_budgets(tmp_path):
    study = load_study(_study_file(tmp_path / "a.db", [50, 60, 70, 40, 65], [4, 4, 4, 4, 2]))
    assert study.best_trial.distributions["gamma"].log  # the space's log scale, kept
    imp, note = study_importances(study, max_t=4)
    assert set(imp) == {"gamma"} and "the 4 trials that ran the full budget of 4 epochs" in note
    imp, note = study_importances(load_study(_study_file(tmp_path / "b.db", [50, 60, 70, 40, 65], [4, 2, 2, 2, 4])), 4)
    assert set(imp) == {"gamma"} and "all 5 finished trials, which mix budgets (2 ran the full 4 epochs" in note
    imp, note = study_importances(load_study(_study_file(tmp_path / "c.db", [50, 60, 70], [4, 4, 4])), 4)
    assert imp is None and "at least 4 finished trials (3 finished)" in note


def test_a_report_over_tied_trials_is_built_with_its_importances_skipped_and_said_so(tmp_path):
    # Every trial reaches the same val_acc: fANOVA finds no variance and Optuna raises. The report
    # command the search recommends must still build everything else and exit 0.
    import mlflow
    from mlflow.tracking import MlflowClient

    from tuner import report as report_cli
    from tuner.tracking import PARENT_TAG

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("tied", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp, tags={"sfkd.kind": "search", mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME: "tied"})
    client.log_param(parent.info.run_id, "search.searcher", "optuna")
    client.log_param(parent.info.run_id, "scheduler.max_t", "2")
    for i in range(5):
        child = client.create_run(exp, tags={PARENT_TAG: parent.info.run_id, "sfkd.trial_id": f"t{i}",
                                             "sfkd.status": "completed"})
        client.log_param(child.info.run_id, "gamma", str(0.1 * (i + 1)))
        for step in (1, 2):
            client.log_metric(child.info.run_id, "val_acc", 10.0, step=step)
        client.log_metric(child.info.run_id, "best_val_acc", 10.0)
    client.log_artifact(parent.info.run_id, str(_study_file(tmp_path / "optuna.db", [10.0] * 5, [2] * 5)), "optuna")
    rc = report_cli.main(["--experiment", "tied", "--tracking-uri", uri, "--out", str(tmp_path / "report")])
    assert rc == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Importances skipped: Optuna could not compute them" in page
    assert (tmp_path / "report" / "learning_curves.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "report" / "param_importances.png").exists()
