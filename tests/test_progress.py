"""What a person sees during a search: one line per trial result, a status line when a trial ends."""
from tuner.progress import TrialPrinter


def _result(epoch, acc, best=None):
    return {"epoch": epoch, "val_acc": acc, "best_val_acc": acc if best is None else best, "loss": 1.0, "density": 0.5,
            "img_per_s": 100.0}


def test_one_line_per_result_and_a_status_line_with_counts_and_the_best_so_far(capsys):
    p = TrialPrinter(max_t=3)
    p.result("bbbb", _result(1, 40.0))
    p.result("aaaa", _result(1, 55.0))
    p.ended("bbbb", "stopped")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "trial bbbb" in lines[0] and "epoch   1/3" in lines[0] and "val_acc  40.00" in lines[0]
    assert lines[2] == "status: 1 running, 1 stopped early, 0 done, 0 failed; best val_acc 55.00 (trial aaaa)"


def test_a_tie_in_the_best_value_goes_to_the_smaller_trial_id_like_the_final_pick(capsys):
    p = TrialPrinter(max_t=3)
    p.result("cccc", _result(3, 83.33))
    p.result("aaaa", _result(3, 83.33))
    p.result("bbbb", _result(3, 83.33))
    assert p.best == (83.33, "aaaa")


def test_the_best_so_far_is_a_trials_best_epoch_not_its_latest(capsys):
    p = TrialPrinter(max_t=3)
    p.result("aaaa", _result(2, 30.0, best=60.0))  # fell back from 60 at epoch 1
    p.result("bbbb", _result(2, 50.0))
    assert p.best == (60.0, "aaaa")


def test_with_mode_min_the_smallest_val_loss_leads():
    p = TrialPrinter(max_t=3, metric="val_loss", mode="min")
    p.result("aaaa", {"epoch": 1, "val_loss": 0.9, "best_val_loss": 0.9})
    p.result("bbbb", {"epoch": 1, "val_loss": 0.4, "best_val_loss": 0.4})
    p.result("cccc", {"epoch": 1, "val_loss": float("inf"), "best_val_loss": float("inf"), "status": "diverged"})
    assert p.best == (0.4, "bbbb")


def test_teacher_training_bar_moves_every_batch_and_names_the_epoch(tmp_path, capsys):
    from trainables.run import DistillRun
    from tuner.teacher_training import teacher_config, train_teacher

    cfg = teacher_config("resnet8", "synthetic", 2, synthetic_size=300, batch_size=32)
    batches = len(DistillRun(cfg).train_loader)  # a teacher trains on the training split by default
    assert batches > 2  # else "moves every batch" would not differ from "moves every epoch"
    train_teacher(cfg, tmp_path / "t.pt")
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    ticks = [(int(line.split("|")[-1].split("/")[0]), line) for line in bar if "teacher resnet8" in line and "|" in line]
    assert max(n for n, _ in ticks) == 2 * batches and f"{2 * batches}/{2 * batches}" in ticks[-1][1]
    # tqdm redraws at most every 0.1 s, so which ticks show depends on speed; those shown must name
    # the epoch that is running
    assert all("epoch=1/2" in line for n, line in ticks if 0 < n < batches)
    assert all("epoch=2/2" in line for n, line in ticks if batches < n < 2 * batches)


def test_train_epoch_calls_on_batch_once_per_optimizer_step():
    from trainables.run import DistillRun
    from tuner.teacher_training import teacher_config

    run = DistillRun(teacher_config("resnet8", "synthetic", 1, synthetic_size=300, batch_size=32))
    calls = []
    run.train_epoch(on_batch=lambda: calls.append(run.optimizer.state_dict()["state"] != {}))
    assert len(calls) == len(run.train_loader) > 2
    assert all(calls)  # each call comes after a step: the optimizer already holds momentum
