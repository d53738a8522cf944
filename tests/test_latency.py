"""Measured latency (docs/sparsity.md, "Latency"): the same timer for eager PyTorch and ONNX Runtime at
batch 1 and 64, the student and its teacher architecture side by side, logged by the final run. What is
checked is what was measured and how it is reported, never how fast anything is."""
import subprocess
import sys

import torch

from trainables.latency import Timing, as_metrics, measure_latency, measure_with_onnx
from trainables.models import create_model


def test_both_engines_are_timed_at_batch_1_and_64_and_the_callers_model_is_left_as_it_was():
    model = create_model("resnet8", 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timings = measure_with_onnx(model, 32, min_time=0.05, warmup=1)
    assert [(t.engine, t.batch) for t in timings] == [("torch", 1), ("onnx", 1), ("torch", 64), ("onnx", 64)]
    assert all(t.median_ms > 0 and t.iqr_ms >= 0 and t.blocks >= 1 for t in timings)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    only_torch = measure_latency(model, 32, None, batches=(2,), min_time=0.05, warmup=1)
    assert [(t.engine, t.batch) for t in only_torch] == [("torch", 2)]


def test_timings_become_the_metric_names_a_final_run_logs():
    timings = [Timing("torch", 1, 2.0, 0.1, 5), Timing("onnx", 64, 64.0, 1.0, 3)]
    assert timings[1].per_image_ms == 1.0
    assert as_metrics(timings) == {"latency_ms_b1_torch": 2.0, "latency_ms_b64_onnx": 64.0}
    assert as_metrics(timings, prefix="teacher_") == {"teacher_latency_ms_b1_torch": 2.0,
                                                       "teacher_latency_ms_b64_onnx": 64.0}


def test_tuner_checkpoint_latency_prints_the_student_and_its_teacher_for_both_batches_and_engines(
        tmp_path, tiny_teacher_file):
    from trainables import DistillRun
    from trainables.cost import format_macs
    from trainables.sparsity import save_sparse

    run = DistillRun({"dataset": "synthetic", "synthetic_size": 200, "teacher": str(tiny_teacher_file),
                      "teacher_arch": "resnet8", "student": "resnet8", "method": "kd", "density": 0.3,
                      "epochs": 1, "batch_size": 50}, device="cpu")
    state = run.state_dict()
    ckpt = tmp_path / "student.sfkd"
    save_sparse(ckpt, state["student"], state["masks"], run.scheduled_density, config=run.cfg.to_dict(),
                extra={"preprocessing": run.preprocessing, "cost": run.cost})
    r = subprocess.run([sys.executable, "-m", "tuner.checkpoint", str(ckpt), "--latency", "--min-time", "0.05"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| student") or line.startswith("| teacher")]
    assert [row.split(" | ")[2] for row in rows] == ["1", "64", "1", "64"]
    macs = format_macs(run.cost["macs_effective"], run.cost["macs_dense"])  # the checkpoint's own cost record
    assert rows[0].startswith(f"| student resnet8 (density 0.3000) | {macs} |") and macs.endswith(" / 12.5")
    assert rows[2].startswith("| teacher resnet8 (dense) | 12.5 / 12.5 |")
    assert "threads of" in r.stdout and "No CUDA runtime" not in r.stderr
    bad = subprocess.run([sys.executable, "-m", "tuner.checkpoint", str(ckpt), "--latency", "--min-time", "0"],
                         capture_output=True, text=True, timeout=300)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "--min-time must be > 0 seconds, got 0.0" in lines[0]
