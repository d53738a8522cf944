"""`precision: auto | fp32 | bf16`: fp32 is the reference arithmetic, bf16 autocast stays close to it,
auto follows PyTorch's hardware check, and every run records what it used."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables import DistillRun
from trainables.precision import cpu_has_fast_bf16, resolve_memory_format, resolve_precision
from trainables.sparsity import load_sparse

REPO = Path(__file__).resolve().parents[1]

TINY = dict(dataset="synthetic", synthetic_size=400, student="resnet8", teacher_arch="resnet8", epochs=2,
            batch_size=32, lr=0.05, density=0.3, sparse_init="ERK", fg_size=4, seed=1, method="sfkd",
            teacher_cache=False)

# The training loop as it was before the precision key existed, kept in git; the test runs it beside
# today's on this machine, so "the same numbers" means bit for bit here, whatever the CPU's kernels.
BEFORE_PRECISION = "adbaeb4"
TWO_EPOCHS = """
import json, sys
from trainables import DistillRun
run = DistillRun(json.loads(sys.argv[1]), device="cpu")
print(json.dumps([[m[k] for k in ("loss", "loss_ce", "loss_kd", "loss_fg", "val_acc")] for m in (run.step(), run.step())]))
"""
BF16_REL_TOLERANCE = 1e-2  # bf16 keeps 8 significant bits; losses are reduced in fp32


def _steps(cfg: dict, steps: int) -> list[float]:
    run = DistillRun(cfg, device="cpu")
    losses = []
    for (x, y, idx), _ in zip(run.train_loader.batches(run.view_of(0), run.cfg.seed), range(steps)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            loss, _, _ = run._losses(x, y, *run._teacher_outputs(x, None, idx))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        losses.append(loss.item())
    return losses


def _numbers_before_precision(cfg: dict, tmp_path: Path) -> list[list[float]]:
    old = tmp_path / "before"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_PRECISION, "trainables"], capture_output=True)
    assert archive.returncode == 0, f"git archive {BEFORE_PRECISION}: {archive.stderr.decode()}"
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    r = subprocess.run([sys.executable, "-c", TWO_EPOCHS, json.dumps(cfg)], cwd=old, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(old)}, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_fp32_reproduces_the_numbers_of_the_loop_before_precision_existed(tiny_teacher_file, tmp_path):
    cfg = {**TINY, "teacher": str(tiny_teacher_file)}
    run = DistillRun({**cfg, "precision": "fp32"}, device="cpu")
    assert run.precision == "fp32" and not run.channels_last
    assert run.student.conv1.weight.is_contiguous()
    got = [[m[k] for k in ("loss", "loss_ce", "loss_kd", "loss_fg", "val_acc")] for m in (run.step(), run.step())]
    assert got == _numbers_before_precision(cfg, tmp_path)  # exactly: same code path, same machine


def test_bf16_losses_stay_within_the_stated_tolerance_of_fp32_over_5_steps(tiny_teacher_file):
    cfg = {**TINY, "teacher": str(tiny_teacher_file)}
    fp32 = _steps({**cfg, "precision": "fp32"}, 5)
    bf16 = _steps({**cfg, "precision": "bf16"}, 5)
    assert bf16 == pytest.approx(fp32, rel=BF16_REL_TOLERANCE)
    assert bf16 != fp32  # bf16 really ran: its arithmetic differs


def test_auto_picks_what_pytorchs_hardware_check_says(tiny_teacher_file):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("auto", cuda, cuda_bf16=True) == "bf16"  # a card without bf16: tests/test_cuda_path.py
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    run = DistillRun({**TINY, "teacher": str(tiny_teacher_file)}, device="cpu")
    assert run.precision == resolve_precision("auto", cpu)
    # channels_last where it measured faster: CUDA, and the CPU with bf16; CPU fp32 stays contiguous.
    assert resolve_memory_format("auto", cpu, "bf16") and not resolve_memory_format("auto", cpu, "fp32")
    assert resolve_memory_format("auto", cuda, "fp32") and not resolve_memory_format("contiguous", cuda, "bf16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_precision_a_run_used_is_in_its_results_and_checkpoint(tiny_teacher_file, tmp_path, precision):
    from trainables.ray_trainable import CHECKPOINT_FILE, SFKDTrainable

    run = DistillRun({**TINY, "teacher": str(tiny_teacher_file), "precision": precision}, device="cpu")
    assert run.step()["precision"] == precision
    assert run.state_dict()["precision"] == precision
    # The trial checkpoint carries it (SFKDTrainable.save_checkpoint without Ray's actor around it).
    trainable = SFKDTrainable.__new__(SFKDTrainable)
    trainable.run, trainable.diverged = run, False
    trainable.save_checkpoint(str(tmp_path))
    _, _, meta = load_sparse(tmp_path / CHECKPOINT_FILE)
    assert meta["extra"]["precision"] == precision


def test_deterministic_sets_cudnns_deterministic_kernels_and_no_autotuning_and_a_study_asks_for_it():
    from trainables.precision import set_cuda_determinism
    from tuner.spaces import parse_space

    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled())
    try:
        torch.backends.cudnn.benchmark = True
        set_cuda_determinism(True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        set_cuda_determinism(False)
        assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
        torch.use_deterministic_algorithms(before[2])
    assert parse_space("study_methods").config["deterministic"] is True  # a study's default
    assert "deterministic" not in parse_space("smoke").config  # a search's: off (DistillConfig's default)
    assert parse_space("study_methods", {"deterministic": False}).config["deterministic"] is False
