"""Studies: fixed arms x seeds, paired differences with t intervals, test read once per finished run."""
import json
import math
import re
import statistics
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuner import report as report_cli
from tuner import search
from tuner.spaces import SpaceError, parse_space
from tuner.study import TABLE_MD, StudyError, adjust, comparison, load_runs, markdown, paired_p, study_table, t_interval
from tuner.tracking import PARENT_TAG

T_975_2DF = 4.30265273  # Student's t, 97.5th percentile, 2 degrees of freedom (printed tables give 4.303)


def _run(arm, seed, val, test=None, fg=0.5, stratum=(), status="completed"):
    return {"arm": arm, "seed": seed, "status": status, "val_acc": val, "fg_share": fg, "fg_enrichment": 2 * fg,
            "teacher_fg_share": 0.6, "test_acc": test, "stratum": stratum, "precision": "fp32", "method": arm,
            "taps": "2"}


def test_the_t_interval_of_three_paired_differences_matches_the_hand_computation():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sample sd 1, n 3
    half = T_975_2DF * 1.0 / math.sqrt(3)  # 2.4841...
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), abs=1e-8)
    assert math.isnan(t_interval([5.0])[1]) and t_interval([5.0])[0] == 5.0  # n = 1: no interval


def test_the_table_pairs_each_arm_with_the_reference_by_seed_and_says_when_a_difference_is_resolved():
    runs = [_run("kd", s, v, test=60 + s) for s, v in enumerate([70.0, 71.0, 72.0])]
    runs += [_run("sfkd", s, v, test=61 + s) for s, v in enumerate([71.0, 73.0, 75.0])]  # diffs 1, 2, 3
    runs += [_run("ft", s, v, test=50 + s) for s, v in enumerate([60.0, 60.5, 61.5])]  # diffs -10, -10.5, -10.5
    table = comparison(runs, "kd", 3, ["ft", "kd", "sfkd"])
    rows = {r["arm"]: r for r in table["rows"]}
    assert [r["arm"] for r in table["rows"]] == ["kd", "ft", "sfkd"]  # the reference first
    assert rows["kd"]["n"] == rows["sfkd"]["n"] == 3
    assert rows["kd"]["val"] == pytest.approx((71.0, 1.0))
    half = T_975_2DF / math.sqrt(3)
    assert rows["sfkd"]["diff"] == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    text = markdown(table, "fp32")
    # sfkd: t = 2 / (1 / sqrt 3) = 3.46 on 2 df, p = 0.074; ft: -10.33 with sd 0.29, p = 0.0003. Holm over
    # the 2 comparisons: ft 2 x 0.0003 (resolved), sfkd max(that, 0.074) (not).
    assert f"| +2.00 [{2.0 - half:+.2f}, {2.0 + half:+.2f}] | 0.074 | not resolved |" in text
    assert "| 0.000 | resolved, lower |" in text
    assert "resolved (Holm, 2 comparisons)" in text
    assert table["complete"] and rows["sfkd"]["test"] == pytest.approx((62.0, 1.0))
    assert "test_acc (last epoch)" in text and "All arms ran at precision fp32." in text


def test_contrasts_compare_the_named_pairs_within_each_stratum_under_one_holm_family():
    s1, s2 = (("shift", "None"),), (("shift", "48"),)
    runs = []
    for stratum, base in ((s1, 70.0), (s2, 60.0)):
        runs += [_run("kd", s, base + s, stratum=stratum) for s in range(3)]
        runs += [_run("sfkd", s, base + 1 + s, stratum=stratum) for s in range(3)]  # +1 on every seed
        runs += [_run("sfkd_teacher", s, base + [2, 4, 6][s], stratum=stratum) for s in range(3)]
    table = comparison(runs, "kd", 3, ["kd", "sfkd", "sfkd_teacher"],
                       contrasts=[("sfkd_teacher", "sfkd"), ("sfkd_teacher", "kd")])
    assert table["family"] == 4  # 2 contrasts x 2 strata
    got = {row["label"]: row for row in table["contrasts"]}
    assert list(got) == ["sfkd_teacher - sfkd, shift=48", "sfkd_teacher - kd, shift=48",
                         "sfkd_teacher - sfkd, shift=None", "sfkd_teacher - kd, shift=None"]
    # sfkd_teacher - sfkd per seed: 2 - 1, 4 - 2, 6 - 3 = 1, 2, 3 (mean 2, sd 1); - kd: 2, 3, 4 (mean 3, sd 1).
    half = T_975_2DF / math.sqrt(3)
    assert got["sfkd_teacher - sfkd, shift=None"]["diff"] == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert got["sfkd_teacher - kd, shift=48"]["diff"] == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    # p: t = 2 sqrt(3) = 3.46 -> 0.0742; t = 3 sqrt(3) = 5.20 -> 0.0351. Holm over 4: 0.0351 x 4 = 0.140, so
    # nothing is resolved, though two per-comparison intervals exclude 0.
    assert got["sfkd_teacher - kd, shift=None"]["p"] == pytest.approx(0.0351, abs=5e-4)
    assert got["sfkd_teacher - kd, shift=None"]["p_adj"] == pytest.approx(4 * 0.0351, abs=2e-3)
    assert not any(row["resolved"] for row in table["contrasts"])
    text = markdown(table)
    assert "| comparison | val_acc difference (95% CI) | p (paired t) | resolved (Holm, 4 comparisons) |" in text
    assert f"| sfkd_teacher - sfkd, shift=None | +2.00 [{2 - half:+.2f}, {2 + half:+.2f}] | 0.074 | not resolved |" in text
    assert "val_acc - kd" not in text  # the arm rows carry no comparison of their own


def test_study_contrasts_must_name_compared_values():
    base = STUDY.format(teacher="auto")
    for contrasts, message in (("[[kd, kd]]", "compares a value with itself"), ("[[sfkd, kd]]", "'sfkd' is not one of"),
                               ("[[ft, kd], [ft, kd]]", "is given twice"), ("[ft, kd]", "expected a list of")):
        with pytest.raises(SpaceError, match=r"study.contrasts: .*" + message.replace("[", r"\[")):
            parse_space(str(_write(base.replace("  reference: kd", f"  reference: kd\n  contrasts: {contrasts}"),
                                   "s.yaml")))


def test_holms_procedure_matches_the_hand_computation_on_known_p_values():
    # The audit's p-values of study_methods (FT, FitNet, AT, SP, SF-KD against KD). Holm: sorted 0.005,
    # 0.019, 0.036, 0.037, 0.093 times 5, 4, 3, 2, 1 = 0.025, 0.076, 0.108, 0.074, 0.093, each raised to the
    # largest before it: 0.025, 0.076, 0.108, 0.108, 0.108. Only AT stays under 0.05.
    p = [0.036, 0.093, 0.005, 0.019, 0.037]
    assert adjust(p, "holm") == pytest.approx([0.108, 0.108, 0.025, 0.076, 0.108])
    assert adjust(p, "bonferroni") == pytest.approx([0.180, 0.465, 0.025, 0.095, 0.185])
    assert adjust(p, "none") == p
    assert adjust([0.01, float("nan")], "holm") == pytest.approx([0.02, 1.0])  # untestable: in the family, p = 1


def test_results_md_study_methods_resolves_only_at_against_kd_after_holms_correction():
    """RESULTS.md's per-seed validation accuracies of study_methods (2026-12-01): the paired p-values are
    the audit's, and under Holm only AT - KD is resolved, not SF-KD - KD."""
    kd = [66.90, 65.94, 67.76]
    arms = {"ft": [61.34, 63.20, 63.44], "fitnet": [68.94, 68.68, 68.46], "at": [69.76, 69.28, 70.42],
            "sp": [70.22, 70.62, 70.76], "sfkd": [68.10, 67.68, 68.64]}
    runs = [_run("kd", s, v) for s, v in enumerate(kd)]
    runs += [_run(a, s, v) for a, vals in arms.items() for s, v in enumerate(vals)]
    rows = {r["arm"]: r for r in comparison(runs, "kd", 3, ["kd", *arms])["rows"]}
    assert {a: round(rows[a]["p"], 3) for a in arms} == {"ft": 0.036, "fitnet": 0.093, "at": 0.005, "sp": 0.019,
                                                          "sfkd": 0.037}
    assert [a for a in arms if rows[a]["resolved"]] == ["at"]
    uncorrected = {r["arm"]: r for r in comparison(runs, "kd", 3, correction="none")["rows"]}
    assert [a for a in arms if uncorrected[a]["resolved"]] == ["ft", "at", "sp", "sfkd"]  # what RESULTS.md said
    text = markdown(comparison(runs, "kd", 3))
    assert "after Holm's correction over the 5 comparisons of this table" in text


def test_identical_pairs_are_no_spread_not_a_zero_width_interval():
    runs = [_run("kd", s, 70.0 + s) for s in range(3)] + [_run("sfkd", s, 71.0 + s) for s in range(3)]
    table = comparison(runs, "kd", 3)
    row = table["rows"][1]
    assert not row["resolved"] and math.isnan(row["p"])
    assert "| +1.00 (no spread: 3 identical pairs) | - | not resolved |" in markdown(table)


def test_an_arm_with_fewer_finished_runs_than_seeds_says_which_seeds_and_why():
    runs = [_run("kd", s, 70.0 + s) for s in range(3)]
    runs += [_run("sfkd", 0, 71.0), _run("sfkd", 1, None, status="diverged")]  # seed 2 never ran
    text = markdown(comparison(runs, "kd", 3))
    assert "| sfkd | 1 (seed 1 diverged; seed 2 not run) |" in text


def test_a_run_without_a_seed_is_an_error_not_seed_zero(tmp_path):
    from tuner.tracking import PARENT_TAG as TAG

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("s", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp)
    for k, v in {"study.compare_by": "arm", "study.reference": "kd", "study.seeds": "2", "study.strata": ""}.items():
        client.log_param(parent.info.run_id, k, v)
    child = client.create_run(exp, tags={TAG: parent.info.run_id}, run_name="kd-noseed")
    client.log_param(child.info.run_id, "arm", "kd")
    with pytest.raises(StudyError, match=r"run .* \(kd-noseed\) of study .* records no seed; a study pairs its runs"):
        load_runs(client, client.get_run(parent.info.run_id))


def test_one_seed_gives_no_interval_and_the_table_says_so():
    table = comparison([_run("kd", 0, 70.0, test=60.0), _run("sfkd", 0, 71.5, test=61.0)], "kd", 1)
    assert "+1.50 (n = 1: no interval)" in markdown(table)


def test_test_accuracy_is_shown_only_once_every_run_of_every_arm_has_finished():
    runs = [_run("kd", s, 70.0 + s, test=60.0) for s in range(3)] + [_run("sfkd", s, 71.0, test=61.0) for s in range(2)]
    runs.append({**_run("sfkd", 2, 71.0), "status": "running", "val_acc": None})
    table = comparison(runs, "kd", 3)
    assert not table["complete"] and "test_acc (last epoch)" not in markdown(table)
    assert "test_acc is shown once every run of every arm has finished." in markdown(table)


def test_other_grid_keys_are_strata_and_pairs_never_cross_them():
    runs = [_run("kd", s, 70.0, stratum=(("density", "0.1"),)) for s in range(2)]
    runs += [_run("sfkd", s, 72.0, stratum=(("density", "0.1"),)) for s in range(2)]
    runs += [_run("kd", s, 80.0, stratum=(("density", "0.5"),)) for s in range(2)]
    runs += [_run("sfkd", s, 79.0, stratum=(("density", "0.5"),)) for s in range(2)]
    rows = {r["label"]: r for r in comparison(runs, "kd", 2)["rows"]}
    assert rows["sfkd, density=0.1"]["diff"][0] == pytest.approx(2.0)
    assert rows["sfkd, density=0.5"]["diff"][0] == pytest.approx(-1.0)


STUDY = """
description: two arms, three seeds, synthetic data (a test study)
config:
  dataset: synthetic
  synthetic_size: 400
  teacher: {teacher}
  teacher_arch: resnet8
  student: resnet8
  density: 0.5
  sparse_init: ERK
  epochs: 4
  batch_size: 16
  fg_size: 4
arms:
  ft: {{method: ft}}
  kd: {{method: kd, alpha: 0.5, beta: 0.5}}
study:
  seeds: 3
  by: arm
  reference: kd
search:
  searcher: grid
  max_concurrent: 2
resources:
  cpu: 1
"""


def test_a_study_is_a_fifo_grid_of_arms_times_seeds_that_reads_test_only_after_training():
    space = parse_space(str(_write(STUDY.format(teacher="auto"), "s.yaml")))
    assert space.scheduler["type"] == "fifo" and space.study["seeds"] == 3 and space.config["test_at_end"]
    with pytest.raises(SpaceError, match="only a study reads the test split"):
        parse_space("smoke", {"test_at_end": True})
    with pytest.raises(SpaceError, match="with optuna"):
        parse_space("sfkd_gamma", {"study.seeds": 3})
    assert space.study["correction"] == "holm"  # the default
    with pytest.raises(SpaceError, match=r"study.correction: 'holmes'; expected one of holm, bonferroni, none"):
        parse_space(str(_write(STUDY.format(teacher="auto"), "s.yaml")), {"study.correction": "holmes"})


def _write(text: str, name: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / name
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_two_arm_three_seed_study_runs_end_to_end_and_report_rebuilds_its_table(ray_session, tmp_path,
                                                                                   trained_teacher_file):
    space_file = tmp_path / "tiny_study.yaml"
    space_file.write_text(STUDY.format(teacher=trained_teacher_file))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", str(space_file), "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
                      "--name", "study", "--quiet"])
    assert rc == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_study")
    parent = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert sorted((c.data.params["arm"], c.data.params["seed"]) for c in children) == [
        (a, str(s)) for a in ("ft", "kd") for s in range(3)]
    assert parent.data.params["study.cells"] == "null"  # arms alone: every arm in the one group
    for child in children:
        assert child.data.tags["sfkd.status"] == "completed"  # FIFO: nothing stopped early
        # The test split was read once, after the last epoch; every epoch read the validation split.
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == [4]
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2, 3, 4]
    table = Path(client.download_artifacts(parent.info.run_id, f"report/{TABLE_MD}", str(tmp_path / "a"))).read_text()
    assert "| kd | 3 |" in table and "| ft | 3 |" in table and "test_acc (last epoch)" in table
    # The headline numbers, recomputed from each run's full metric history: the last epoch's val_acc
    # (not the best epoch's), the test accuracy read once, the paired differences and their p-values.
    last, best, test = {}, {}, {}
    for child in children:
        history = sorted(client.get_metric_history(child.info.run_id, "val_acc"), key=lambda m: m.step)
        key = (child.data.params["arm"], int(child.data.params["seed"]))
        last[key], best[key] = history[-1].value, max(m.value for m in history)
        (test[key],) = [m.value for m in client.get_metric_history(child.info.run_id, "test_acc")]
    # Some run peaked before its last epoch (ft seed 0 here: 87.5 at epoch 3, 85.0 at 4), so a table that
    # read best_val_acc would differ from this one.
    assert any(last[k] != best[k] for k in last)
    cells = {row.split(" | ")[0].strip("| "): row.split(" | ") for row in table.splitlines() if row.startswith("| ")}
    for arm in ("ft", "kd"):
        vals, tests = [last[(arm, s)] for s in range(3)], [test[(arm, s)] for s in range(3)]
        assert cells[arm][2] == f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
        assert cells[arm][-1].rstrip(" |") == f"{statistics.mean(tests):.2f} ± {statistics.stdev(tests):.2f}"
    diffs = [last[("ft", s)] - last[("kd", s)] for s in range(3)]
    mean, lo, hi = t_interval(diffs)
    assert cells["ft"][5] == f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" and cells["ft"][6] == f"{paired_p(diffs):.3f}"
    arts = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/study_table.html", "report/study_comparison.png", "report/report.html"} <= arts
    assert not (tmp_path / "runs" / "study" / "best_config.yaml").exists()  # a study selects nothing

    assert report_cli.main(["--run", parent.info.run_id, "--tracking-uri", uri, "--no-log",
                            "--out", str(tmp_path / "rebuilt")]) == 0
    assert (tmp_path / "rebuilt" / TABLE_MD).read_text() == table  # the same table, from MLflow alone


FOREGROUND_STUDY = """
description: a teacher-chosen foreground on centred and shifted synthetic data (a test study)
config:
  dataset: synthetic
  synthetic_size: 1200
  teacher: auto
  teacher_arch: resnet8
  student: resnet8
  density: 0.5
  sparse_init: ERK
  epochs: 1
  batch_size: 32
  shift: {grid: [32, 40]}
  shift_object: 24
arms:
  kd: {method: kd, alpha: 0.5, beta: 0.5}
  sfkd: {method: sfkd, alpha: 0.5, beta: 0.5, gamma: 0.5, fg_source: center}
  sfkd_teacher: {method: sfkd, alpha: 0.5, beta: 0.5, gamma: 0.5, fg_source: teacher}
study:
  seeds: 2
  by: arm
  reference: kd
  contrasts: [[sfkd_teacher, sfkd], [sfkd_teacher, kd]]
search:
  searcher: grid
  max_concurrent: 2
resources:
  cpu: 1
"""


@pytest.mark.slow
def test_a_study_over_shifted_data_gives_each_data_its_own_teacher_and_reports_its_contrasts(ray_session, tmp_path,
                                                                                            capsys):
    """shift is a grid key: each value gets an auto teacher trained on that data (with the explicit
    teacher_epochs, which --epochs no longer caps, and its own lr schedule), every trial distils from its
    own data's teacher, and
    the table reports the named contrasts within each shift under one Holm family."""
    from trainables.teacher_file import read_teacher_file

    space_file = tmp_path / "fg_study.yaml"
    space_file.write_text(FOREGROUND_STUDY)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", str(space_file), "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
                      "--name", "fg", "--quiet", "--epochs", "1", "--set", "teacher_epochs=3",
                      "--set", "teacher_lr_schedule=cosine"])
    assert rc == 0
    out = capsys.readouterr().out
    for shift in (32, 40):  # each teacher says where it looks on its own shifted test images
        assert f"teacher resnet8 (shift {shift}, shift_object 24): off-centre objects (test images): " in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fg_study")
    parent = client.search_runs([exp.experiment_id], "tags.`sfkd.kind` = 'search'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(parent.data.tags["sfkd.teacher"].split(",")) == 2
    assert sorted((c.data.params["arm"], c.data.params["shift"], c.data.params["seed"]) for c in children) == [
        (a, sh, str(s)) for a in ("kd", "sfkd", "sfkd_teacher") for sh in ("32", "40") for s in range(2)]
    for c in children:
        info = read_teacher_file(c.data.params["teacher"])
        assert (info["shift"], info["shift_object"], info["epochs"], info["lr_schedule"]) == (
            int(c.data.params["shift"]), 24, 3, "cosine")  # the teacher's own schedule, not the students' multistep
        assert c.data.tags["sfkd.status"] == "completed"
    last = {(c.data.params["arm"], c.data.params["shift"], int(c.data.params["seed"])): c.data.metrics["val_acc"]
            for c in children}
    table = Path(client.download_artifacts(parent.info.run_id, f"report/{TABLE_MD}", str(tmp_path / "a"))).read_text()
    assert "resolved (Holm, 4 comparisons)" in table
    diffs = [last[("sfkd_teacher", "40", s)] - last[("sfkd", "40", s)] for s in range(2)]
    mean, lo, hi = t_interval(diffs)
    row = next(x for x in table.splitlines() if x.startswith("| sfkd_teacher - sfkd, shift=40 |"))
    assert row.split(" | ")[1] == (f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if diffs[0] != diffs[1]
                                   else f"{mean:+.2f} (no spread: 2 identical pairs)")
    assert report_cli.main(["--run", parent.info.run_id, "--tracking-uri", uri, "--no-log",
                            "--out", str(tmp_path / "rebuilt")]) == 0
    assert (tmp_path / "rebuilt" / TABLE_MD).read_text() == table


STUDIES = ["study_methods", "study_density", "study_fg_bg", "study_sparse_init", "study_prune_kd", "study_prune_channel"]


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_is_paper_scale_with_three_seeds_its_losses_and_the_papers_numbers(name):
    space = parse_space(name)
    assert space.config["dataset"] == "cifar100" and space.study["seeds"] == 3
    assert space.config["epochs"] == (120 if name in ("study_prune_kd", "study_prune_channel") else 240)
    assert ("Loss:" in space.text or "Losses:" in space.text) and ("Paper" in space.text or "Table 2" in space.text)
    assert space.warnings == [] and space.scheduler["type"] == "fifo"
    assert space.study["reference"] in space.study["arms"]
    # Run small (the README's CPU-scale data and budget) it is the same study.
    small = parse_space(name, {"dataset": "cifar10", "train_subset": 10000, "epochs": 8})
    assert small.study == space.study


def test_study_foreground_compares_where_the_foreground_is_on_centred_and_shifted_cifar10():
    space = parse_space("study_foreground")
    assert space.config["dataset"] == "cifar10" and space.study["seeds"] == 3 and space.config["epochs"] == 240
    assert space.params == {"density": {"grid": [0.1, 0.9]}, "shift": {"grid": [None, 48]}}
    assert space.study["arms"] == ["kd", "fitnet", "sfkd", "sfkd_teacher", "sfkd_soft"]
    assert space.study["strata"] == ["density", "shift"]
    assert space.study["contrasts"] == [["sfkd_teacher", "sfkd"], ["sfkd_teacher", "fitnet"], ["sfkd_teacher", "kd"],
                                        ["sfkd_soft", "sfkd"]]
    # The sfkd arms differ in where the foreground is, nothing else; fitnet is the same losses without the split.
    arms = space.arm_configs()
    strip = lambda a: {k: v for k, v in arms[a].items() if k not in ("arm", "fg_source", "method", "bg_weight")}  # noqa: E731
    assert strip("sfkd") == strip("sfkd_teacher") == strip("sfkd_soft") == strip("fitnet")
    assert [arms[a]["fg_source"] for a in ("sfkd", "sfkd_teacher", "sfkd_soft")] == ["center", "teacher", "teacher_soft"]
    assert space.config["fg_size"] == 4 and space.warnings == []
    small = parse_space("study_foreground", {"train_subset": 10000, "epochs": 8, "teacher_arch": "resnet56"})
    assert small.study == space.study


def test_study_methods_has_the_six_arms_and_the_controls_and_study_density_at_least_three_densities():
    methods = parse_space("study_methods")
    assert methods.study["arms"] == ["ft", "kd", "fitnet", "at", "sp", "sfkd", "kd_ce1", "at_last"]
    # kd_ce1 trains CE at AT's and SP's weight; at_last is AT at the last map only; at is at every group.
    assert methods.arms["kd_ce1"]["alpha"] == methods.arms["at"]["alpha"] == methods.arms["sp"]["alpha"] == 1.0
    assert methods.arms["at_last"]["feature_stages"] == [-1] and "feature_stages" not in methods.arms["at"]
    from trainables.config import DistillConfig

    assert DistillConfig.from_dict(methods.arm_configs()["at"]).feature_stages == ["groups"]
    prune = parse_space("study_prune_kd")
    control, iterative = prune.arm_configs()["oneshot_kd_270"], prune.arm_configs()["iterative_kd"]
    assert control["epochs"] == iterative["epochs"] == 270 and control["lr_milestones"] == iterative["lr_milestones"]
    assert control["prune_schedule"] == "one-shot" and "isolat" in methods.description + prune.description
    density = parse_space("study_density")
    assert len(density.params["density"]["grid"]) >= 3 and density.study["strata"] == ["density"]


def _mini_imagenet_shaped(root: Path, classes: int = 10, train: int = 16, test: int = 6) -> Path:
    """An ImageFolder shaped like Mini-ImageNet's release (84 x 84 JPEG-free PNGs, one folder per class),
    generated: the class glyph sits in the centre. Every fourth training image is stored 96 x 84, as
    a tree gathered from several sources would be; image_size: 84 fits it back."""
    from PIL import Image

    from trainables.data.sources import make_synthetic

    for split, n, seed in (("train", classes * train, 7), ("test", classes * test, 8)):
        x, y = make_synthetic(n, classes, 84, seed=seed)
        for i, (img, label) in enumerate(zip(x, y.tolist())):
            folder = root / split / f"n{label:08d}"  # WordNet-style class folders
            folder.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(img.permute(1, 2, 0).numpy())
            if split == "train" and i % 4 == 0:
                im = im.resize((96, 84))
            im.save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_study_miniimagenet_runs_end_to_end_on_mini_imagenet_shaped_data_pairing_within_each_teacher_student_pair(
        ray_session, tmp_path):
    import yaml

    from tuner.spaces import SPACES_DIR

    tree = _mini_imagenet_shaped(tmp_path / "mini", classes=4, train=16, test=6)
    # The shipped study, short: its WRN and VGG pairs. A ResNet110 teacher does not leave chance in
    # the few steps a test affords at 84 px (measured: 25.0% on 4 classes after 24 steps, where WRN-40-2
    # reached 91.7% and VGG13 100%), and the search rightly refuses a teacher at chance.
    raw = yaml.safe_load((SPACES_DIR / "study_miniimagenet.yaml").read_text())
    raw["arms"] = {k: v for k, v in raw["arms"].items() if not k.startswith("resnet")}
    raw["config"]["bn_recalibrate"] = True  # 7 steps an epoch leave BatchNorm's running statistics unsettled
    space_file = tmp_path / "study_miniimagenet.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = search.main(["--space", str(space_file), "--data-dir", str(tree), "--storage-path", str(tmp_path / "runs"),
                      "--tracking-uri", uri, "--name", "mini", "--quiet", "--epochs", "4", "--seeds", "1",
                      "--set", "sparse_init=ERK", "--set", "batch_size=8", "--set", "resources.cpu=1",
                      "--set", "resources.gpu=0", "--set", "search.max_concurrent=2"])
    assert rc == 0
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("study_miniimagenet").experiment_id],
                                "tags.`sfkd.kind` = 'search'")[0]
    # One dense teacher per pair, each trained once and recorded with its test accuracy.
    teachers = parent.data.tags["sfkd.teacher"].split(",")
    assert sorted(t.split("-")[0] for t in teachers) == ["vgg13", "wrn_40_2"]
    assert len([k for k in parent.data.metrics if k.startswith("teacher_test_acc.")]) == 2
    children = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    pairs = {("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")}
    assert sorted((c.data.params["teacher_arch"], c.data.params["student"], c.data.params["method"])
                  for c in children) == sorted((t, s, m) for t, s in pairs for m in ("kd", "sfkd"))
    for child in children:
        assert child.data.tags["sfkd.status"] == "completed"
        assert child.data.params["image_size"] == "84"
        # Each arm distilled from its own pair's teacher.
        assert Path(child.data.params["teacher"]).name.startswith(child.data.params["teacher_arch"] + "-")
    table = Path(client.download_artifacts(parent.info.run_id, f"report/{TABLE_MD}", str(tmp_path / "a"))).read_text()
    # Each SF-KD row is paired with the KD row of its own pair (n = 1 seed: no interval yet).
    for teacher, student in pairs:
        assert f"| kd, teacher_arch={teacher}, student={student} | 1 |" in table
        assert f"| sfkd, teacher_arch={teacher}, student={student} | 1 |" in table
    assert table.count("(reference)") == 2 and table.count("(n = 1: no interval)") == 2
    assert sorted(map(tuple, ((v, tuple(s)) for v, s in json.loads(parent.data.params["study.cells"])))) == sorted(
        (m, (t, s)) for t, s in pairs for m in ("kd", "sfkd"))


PAIRS = """
config: {{dataset: synthetic, teacher: auto, epochs: 2}}
arms:
  r_kd: {{teacher_arch: resnet14, student: resnet8, method: kd}}
  r_sfkd: {{teacher_arch: resnet14, student: resnet8, method: sfkd}}
  v_kd: {{teacher_arch: vgg11, student: vgg8, method: {v_kd}}}
  v_sfkd: {{teacher_arch: vgg11, student: vgg8, method: sfkd}}
study: {{seeds: 2, by: method, reference: kd{strata}}}
search: {{searcher: grid}}
"""


def test_arms_of_several_pairs_are_compared_by_a_key_they_set_within_the_groups_strata_names():
    space = parse_space(str(_write(PAIRS.format(v_kd="kd", strata=", strata: [teacher_arch, student]"), "p.yaml")))
    assert space.study["arms"] == ["kd", "sfkd"] and space.study["strata"] == ["teacher_arch", "student"]
    with pytest.raises(SpaceError, match=r"study.by: method is set by the arms; name the keys that group them "
                                         r"with study.strata"):
        parse_space(str(_write(PAIRS.format(v_kd="kd", strata=""), "p.yaml")))
    with pytest.raises(SpaceError, match=r"arms.v_sfkd: a second arm with method=sfkd for teacher_arch=vgg11, "
                                         r"student=vgg8"):
        parse_space(str(_write(PAIRS.format(v_kd="sfkd", strata=", strata: [teacher_arch, student]"), "p.yaml")))
    with pytest.raises(SpaceError, match=r"study.reference: no arm with method=kd for teacher_arch=vgg11, "
                                         r"student=vgg8"):
        parse_space(str(_write(PAIRS.format(v_kd="ft", strata=", strata: [teacher_arch, student]"), "p.yaml")))
    with pytest.raises(SpaceError, match=r"study.strata: 'teacher_archh' is not a config key .*did you mean"):
        parse_space(str(_write(PAIRS.format(v_kd="kd", strata=", strata: [teacher_archh]"), "p.yaml")))


def test_study_miniimagenet_is_sf_kd_table_2_three_pairs_two_inits_kd_against_sfkd_at_84_px():
    space = parse_space("study_miniimagenet")
    assert space.config["image_size"] == 84 and space.config["density"] == 0.65 and space.study["seeds"] == 3
    assert space.study["arms"] == ["kd", "sfkd"] and space.study["reference"] == "kd"
    assert space.study["strata"] == ["teacher_arch", "student", "sparse_init"]
    assert {(r["teacher_arch"], r["student"]) for r in space.arms.values()} == {
        ("resnet110", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")}
    assert space.params["sparse_init"] == {"grid": ["ERK", "SNIP"]}
    text = " ".join(space.description.split())
    for number in ("61.48", "62.18", "58.98", "61.10", "68.63", "70.90", "70.18", "70.40", "70.26", "70.19",
                   "69.83", "70.12"):
        assert number in text  # the paper's top-1 of every cell
    assert space.warnings == [] and space.scheduler["type"] == "fifo"


def test_a_table_says_when_an_at_arm_distilled_one_tap_only():
    runs = [_run("kd", s, 70.0) for s in range(2)] + [{**_run("at", s, 71.0), "taps": "3"} for s in range(2)]
    assert "Arm at distilled attention transfer at one tap only" in markdown(comparison(runs, "kd", 2))
    runs = [_run("kd", s, 70.0) for s in range(2)] + [{**_run("at", s, 71.0), "taps": "1,2,3"} for s in range(2)]
    assert "one tap only" not in markdown(comparison(runs, "kd", 2))  # every stage group, as the literature


def test_the_foreground_enrichment_is_the_share_over_the_squares_area():
    import torch

    from trainables.probe import attention_probe

    # A 1x1 identity "network" on 4x4 inputs: attention = mean_c x^2. All mass in the central 2x2: share 1,
    # area 4/16, enrichment 4. A uniform map: share 0.25, enrichment 1.
    class Identity(torch.nn.Module):
        arch = "id"

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Identity()

        def forward(self, x):
            return self.body(x).mean((2, 3))

    centre = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    centre[:, :, 1:3, 1:3] = 200
    probe, _ = attention_probe(Identity(), None, centre, (0, 0, 0), (1, 1, 1), 2, ("body", None), torch.device("cpu"))
    assert probe["student_fg_share"] == pytest.approx(1.0) and probe["student_fg_enrichment"] == pytest.approx(4.0)
    flat = torch.full((4, 3, 4, 4), 100, dtype=torch.uint8)
    probe, _ = attention_probe(Identity(), None, flat, (0, 0, 0), (1, 1, 1), 2, ("body", None), torch.device("cpu"))
    assert probe["student_fg_share"] == pytest.approx(0.25) and probe["student_fg_enrichment"] == pytest.approx(1.0)


def test_a_stratum_lists_only_the_values_its_arms_hold_so_holm_covers_the_comparisons_the_design_has():
    # study_patterns' shape: a dense arm (density 1, unstructured) has no channel twin. Its stratum holds
    # no channel row ("not run" would be false), and Holm covers the 2 channel - unstructured pairs, not 3.
    def at(d):
        return (("student", "resnet20"), ("density", d))
    runs = [_run("unstructured", s, 70.0 + s, stratum=at("1.0")) for s in range(3)]
    runs += [_run(p, s, v + s, stratum=at(d)) for d in ("0.5", "0.25") for p, v in (("unstructured", 66.0),
                                                                                  ("channel", 64.0)) for s in range(3)]
    runs[-1]["val_acc"] += 0.5  # a spread, so the 0.25 pair has an interval
    cells = [["unstructured", ["resnet20", "1.0"]], ["unstructured", ["resnet20", "0.5"]],
             ["channel", ["resnet20", "0.5"]], ["unstructured", ["resnet20", "0.25"]], ["channel", ["resnet20", "0.25"]]]
    table = comparison(runs, "unstructured", 3, ["unstructured", "channel"], cells=cells)
    assert [r["label"] for r in table["rows"]] == [
        "unstructured, student=resnet20, density=0.25", "channel, student=resnet20, density=0.25",
        "unstructured, student=resnet20, density=0.5", "channel, student=resnet20, density=0.5",
        "unstructured, student=resnet20, density=1.0"]
    assert table["family"] == 2
    # Without the design every value shows in every stratum: a channel row at density 1.0 "not run".
    assert comparison(runs, "unstructured", 3, ["unstructured", "channel"])["family"] == 3
    # A run the design does not name still shows: the design can add a row, never hide a run.
    table = comparison(runs, "unstructured", 3, ["unstructured", "channel"], cells=cells[1:])
    assert "unstructured, student=resnet20, density=1.0" in [r["label"] for r in table["rows"]]


def test_study_patterns_records_which_pattern_each_student_and_density_holds():
    space = parse_space("study_patterns")
    assert space.study["strata"] == ["student", "density"]
    cells = {(v, tuple(s)) for v, s in space.study["cells"]}
    for student in ("resnet20", "torchvision:resnet18"):
        assert ("unstructured", (student, "1.0")) in cells and ("channel", (student, "1.0")) not in cells
        for d in ("0.5", "0.25"):
            assert {("unstructured", (student, d)), ("channel", (student, d))} <= cells
    assert len(cells) == 10
    assert parse_space("study_methods").study["cells"] is None  # arms x grid: every value in every stratum


def test_arms_runs_only_the_named_arms_of_a_study_and_its_design_lists_only_them():
    # --arms resnet20_unstructured_50,resnet20_channel_50 is study.only: two of study_patterns' ten arms.
    only = ["resnet20_unstructured_50", "resnet20_channel_50"]
    space = parse_space("study_patterns", {"study.only": only})
    assert list(space.arm_configs()) == only
    assert {(v, tuple(c)) for v, c in space.study["cells"]} == {("unstructured", ("resnet20", "0.5")),
                                                                 ("channel", ("resnet20", "0.5"))}
    assert space.study["only"] == only and space.study["arms"] == ["unstructured", "channel"]
    assert space.arm_configs()["resnet20_channel_50"]["channel_multiple"] == 16  # the arm's own recipe


@pytest.mark.parametrize("only, message", [
    (["resnet20_channel_50", "resnet18_unstructured_50"],
     "study.reference: no arm with sparsity_pattern=unstructured for student=resnet20, density=0.5, so its arms "
     "have nothing to be paired with; --arms (study.only) left its arms out"),
    (["resnet20_channel_50"], "study.reference: 'unstructured' is not one of the compared values (channel); "
                              "--arms (study.only) left its arms out"),
    (["resnet20_chanel_50"], "study.only: no arm 'resnet20_chanel_50'; did you mean 'resnet20_channel_50'?"),
    (["resnet20_dense", "resnet20_dense"], "study.only: an arm is named twice"),
    ([], "study.only: expected arm names"),
])
def test_arms_that_cannot_run_as_a_study_are_one_line_errors(only, message):
    with pytest.raises(SpaceError, match=re.escape(message)):
        parse_space("study_patterns", {"study.only": only})


def test_a_study_of_some_arms_reads_its_design_from_the_space_file_with_those_arms_only(tmp_path):
    # The design too long for a param comes from the logged space file, read with the arms that ran: a
    # table of two arms must not list the other eight as not run.
    from tuner.spaces import SPACES_DIR
    from tuner.study import IN_SPACE_FILE

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("study_patterns", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp).info.run_id
    for k, v in {"study.compare_by": "sparsity_pattern", "study.reference": "unstructured", "study.seeds": "1",
                 "study.strata": "student,density", "study.arms": "unstructured,channel", "study.cells": IN_SPACE_FILE,
                 "study.only": "resnet18_unstructured_50,resnet18_channel_50"}.items():
        client.log_param(parent, k, v)
    client.log_artifact(parent, str(SPACES_DIR / "study_patterns.yaml"), "space")
    for pattern, val in (("unstructured", 60.0), ("channel", 58.0)):
        child = client.create_run(exp, tags={PARENT_TAG: parent, "sfkd.status": "completed"}).info.run_id
        for k, v in {"sparsity_pattern": pattern, "student": "torchvision:resnet18", "density": "0.5",
                     "seed": "0"}.items():
            client.log_param(child, k, v)
        client.log_metric(child, "val_acc", val, step=1)
    table = study_table(client, client.get_run(parent))
    assert [r["label"] for r in table["rows"]] == ["unstructured, student=torchvision:resnet18, density=0.5",
                                                   "channel, student=torchvision:resnet18, density=0.5"]
    assert table["family"] == 1 and not [r for r in table["rows"] if r["missing"]]


def test_a_study_recorded_before_the_design_param_reads_its_design_from_the_space_file_it_logged(tmp_path):
    from tuner.spaces import SPACES_DIR

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("study_patterns", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp).info.run_id
    for k, v in {"study.compare_by": "sparsity_pattern", "study.reference": "unstructured", "study.seeds": "1",
                 "study.strata": "student,density", "study.arms": "unstructured,channel"}.items():
        client.log_param(parent, k, v)  # what the driver recorded before study.cells
    client.log_artifact(parent, str(SPACES_DIR / "study_patterns.yaml"), "space")
    for student in ("resnet20", "torchvision:resnet18"):
        for pattern, density in [("unstructured", "1.0"), ("unstructured", "0.5"), ("channel", "0.5"),
                                 ("unstructured", "0.25"), ("channel", "0.25")]:
            child = client.create_run(exp, tags={PARENT_TAG: parent, "sfkd.status": "completed"}).info.run_id
            for k, v in {"sparsity_pattern": pattern, "student": student, "density": density, "seed": "0"}.items():
                client.log_param(child, k, v)
            client.log_metric(child, "val_acc", 60.0, step=1)
    table = study_table(client, client.get_run(parent))
    assert table["family"] == 4  # channel - unstructured at 0.5 and 0.25, for each student
    assert not [r for r in table["rows"] if r["arm"] == "channel" and "density=1.0" in r["label"]]
    # A recorded design wins over the file: one that names a channel twin of the dense resnet20 lists it.
    client.log_param(parent, "study.cells", '[["channel", ["resnet20", "1.0"]]]')
    table = study_table(client, client.get_run(parent))
    assert table["family"] == 5
    row = next(r for r in table["rows"] if r["label"] == "channel, student=resnet20, density=1.0")
    assert row["n"] == 0 and row["missing"] == ["seed 0 not run"]


def test_contrasts_too_long_for_a_param_are_read_from_the_space_file_the_parent_logged(tmp_path):
    # A confirmation of 6 configs compares 15 pairs: more JSON than the 500 characters a param keeps.
    from tuner.study import IN_SPACE_FILE

    space_file = _write(STUDY.format(teacher="auto").replace("study:\n", "study:\n  contrasts: [[ft, kd]]\n"),
                        "tiny.yaml")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("tiny", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp).info.run_id
    for k, v in {"study.compare_by": "arm", "study.reference": "kd", "study.seeds": "3", "study.strata": "",
                 "study.contrasts": IN_SPACE_FILE, "study.cells": "null"}.items():
        client.log_param(parent, k, v)
    client.log_artifact(parent, str(space_file), "space")
    for arm, vals in (("kd", [70.0, 71.0, 72.5]), ("ft", [68.0, 70.0, 70.0])):
        for seed, val in enumerate(vals):
            child = client.create_run(exp, tags={PARENT_TAG: parent, "sfkd.status": "completed"}).info.run_id
            client.log_param(child, "arm", arm)
            client.log_param(child, "seed", str(seed))
            client.log_metric(child, "val_acc", val, step=1)
    table = study_table(client, client.get_run(parent))
    (row,) = table["contrasts"]
    assert (row["arm"], row["against"], row["pairs"]) == ("ft", "kd", 3)
    assert row["diff"][0] == pytest.approx((-2.0 - 1.0 - 2.5) / 3)
