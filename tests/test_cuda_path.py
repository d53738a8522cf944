"""The CUDA path made right before it runs (docs/development.md, "On a GPU"): what a CPU can show of it.
No training batch waits for a device-to-host copy, data too large for a GPU stays on the host, `auto`
precision asks the device, `fp32` means fp32, and a reused trial process lets go of the last trial."""
import weakref

import pytest
import torch

from trainables import DistillRun
from trainables.data.loader import DEVICE_DATA_MAX_BYTES, DeviceLoader, keeps_on_device
from trainables.precision import resolve_precision, set_cuda_fp32_math
from trainables.ray_trainable import SFKDTrainable

BASE = dict(dataset="synthetic", synthetic_size=400, student="resnet8", teacher_arch="resnet8", epochs=2,
            batch_size=32, lr=0.05, density=0.3, sparse_init="ERK", fg_size=4, seed=1, method="sfkd", beta=0.5)


class CountCpuCalls:
    """Counts Tensor.cpu() calls while active: each is a device-to-host copy the GPU must finish first."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = torch.Tensor.cpu

        def counted(t, *a, **kw):
            self.calls += 1
            return original(t, *a, **kw)

        monkeypatch.setattr(torch.Tensor, "cpu", counted)


@pytest.mark.parametrize("cache", [True, False])
def test_no_training_batch_copies_anything_back_to_the_host(tiny_teacher_file, tmp_path, monkeypatch, cache):
    cfg = {**BASE, "teacher": str(tiny_teacher_file), "teacher_cache": cache, "cache_dir": str(tmp_path / "c")}
    DistillRun(cfg, device="cpu").train_epoch()  # fills the cache's first view, when it is on
    run = DistillRun(cfg, device="cpu")
    counter = CountCpuCalls(monkeypatch)
    metrics = run.train_epoch()
    assert counter.calls == 0
    assert metrics.get("teacher_cache_hit", 0.0) == float(cache)  # the cached path really was the one taken


def test_data_too_large_for_a_gpu_stays_on_the_host_and_gives_the_same_batches():
    assert keeps_on_device(10 ** 9, torch.device("cpu"))
    gpu = torch.device("cuda")  # the decision only: no device is touched when its memory is given
    assert keeps_on_device(154 * 10 ** 6, gpu, total_memory=80 * 1024 ** 3)  # CIFAR's training set
    assert not keeps_on_device(DEVICE_DATA_MAX_BYTES + 1, gpu, total_memory=80 * 1024 ** 3)
    assert not keeps_on_device(1024 ** 3, gpu, total_memory=8 * 1024 ** 3)  # over a tenth of a small card
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(100) % 10
    batches = {}
    for where in (True, False):
        loader = DeviceLoader(images, labels, 16, [120.0] * 3, [60.0] * 3, torch.device("cpu"), train=True,
                              generator=torch.Generator().manual_seed(0), on_device=where)
        batches[where] = [(x, y, idx) for view in (0, 1) for x, y, idx in loader.batches(view, 3)]
    for (xa, ya, ia), (xb, yb, ib) in zip(batches[True], batches[False]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_auto_precision_on_cuda_asks_the_device_for_bf16_and_fp32_turns_tf32_off():
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda, cuda_bf16=True) == "bf16"
    assert resolve_precision("auto", cuda, cuda_bf16=False) == "fp32"  # a pre-Ampere card: no bf16 autocast
    assert resolve_precision("fp32", cuda, cuda_bf16=True) == "fp32"
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
        set_cuda_fp32_math("fp32")
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        set_cuda_fp32_math("bf16")
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_a_reused_trial_process_lets_go_of_the_last_run_before_it_builds_the_next(tiny_teacher_file):
    trainable = SFKDTrainable.__new__(SFKDTrainable)  # the method alone; Ray calls it between trials
    trainable.run = DistillRun({**BASE, "teacher": str(tiny_teacher_file)}, device="cpu")
    last = weakref.ref(trainable.run)
    trainable.release()
    assert trainable.run is None and last() is None
