"""The shared teacher-output cache is a speed lever, never a change of data: the same inputs and the
same numbers as running the teacher on the fly, computed once per epoch view and shared."""
import pytest
import torch

from trainables import DistillRun
from trainables.data import load_splits
from trainables.data.augment import normalize, view_batch, view_params
from trainables.precision import autocast
from trainables.teacher_cache import file_digest, open_teacher_cache

BASE = dict(dataset="synthetic", synthetic_size=400, student="resnet8", teacher_arch="resnet8", epochs=3,
            batch_size=32, lr=0.05, density=0.3, sparse_init="ERK", fg_size=4, seed=1, method="sfkd", beta=0.5,
            teacher_cache=True)


def _cfg(teacher, tmp_path, **kw):
    return {**BASE, "teacher": str(teacher), "cache_dir": str(tmp_path / "cache"), **kw}


class InputRecorder(torch.nn.Module):
    """Stands in for the student's training forward and keeps every batch it is given."""

    def __init__(self, student):
        super().__init__()
        self.student, self.seen = student, []

    def forward(self, x, **kw):
        self.seen.append(x.detach().clone())
        return self.student(x, **kw)


def _train(cfg, epochs=3):
    run = DistillRun(cfg, device="cpu")
    run.student_forward = recorder = InputRecorder(run.student)
    metrics = [run.train_epoch() for _ in range(epochs)]
    return run, recorder.seen, metrics


def test_a_view_is_a_fixed_function_of_seed_view_and_image():
    a, b = view_params(100, 1, 3), view_params(100, 1, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(view_params(100, 1, 4)[0], a[0])
    assert not torch.equal(view_params(100, 2, 3)[0], a[0])


def test_cache_on_and_off_give_identical_training_inputs_and_losses_for_3_epochs(tiny_teacher_file, tmp_path):
    on, seen_on, m_on = _train(_cfg(tiny_teacher_file, tmp_path))
    off, seen_off, m_off = _train(_cfg(tiny_teacher_file, tmp_path, teacher_cache=False))
    assert on.cache is not None and on.cache.filled == 3 and off.cache is None
    assert all(m["teacher_cache_hit"] == 1.0 for m in m_on)
    # The exact crops and flips, batch by batch, in every epoch.
    assert len(seen_on) == len(seen_off) == 3 * len(on.train_loader)
    assert all(torch.equal(a, b) for a, b in zip(seen_on, seen_off))
    for a, b in zip(m_on, m_off):
        for k in ("loss", "loss_ce", "loss_kd", "loss_fg", "loss_bg", "train_acc"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


def test_every_epoch_is_a_fresh_augmentation_draw_by_default(tiny_teacher_file, tmp_path):
    run, seen, _ = _train(_cfg(tiny_teacher_file, tmp_path, teacher_cache=False), epochs=3)
    assert [run.view_of(e) for e in range(3)] == [0, 1, 2]
    n = len(run.data.train_x)
    crops = [torch.stack(view_params(n, 1, e)[:2]) for e in range(3)]
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])
    # Reusing views is an explicit opt-in: epoch e sees view e mod V.
    reuse = DistillRun(_cfg(tiny_teacher_file, tmp_path, cache_views=2), device="cpu")
    assert [reuse.view_of(e) for e in range(5)] == [0, 1, 0, 1, 0]


def test_epochs_beyond_the_size_cap_run_the_teacher_on_the_fly_on_the_same_draw(tiny_teacher_file, tmp_path):
    probe = DistillRun(_cfg(tiny_teacher_file, tmp_path / "probe"), device="cpu")
    cap_gb = 1.5 * probe.cache.view_bytes / 1e9  # room for one epoch's view
    capped, seen_capped, m_capped = _train(_cfg(tiny_teacher_file, tmp_path, cache_max_gb=cap_gb))
    _, seen_off, m_off = _train(_cfg(tiny_teacher_file, tmp_path, teacher_cache=False))
    assert capped.cache.cached_views == 1 and capped.cache.filled == 1
    assert [m["teacher_cache_hit"] for m in m_capped] == [1.0, 0.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(seen_capped, seen_off))
    assert [m["loss"] for m in m_capped] == pytest.approx([m["loss"] for m in m_off], rel=1e-5)


def test_cached_teacher_outputs_equal_a_fresh_teacher_forward_on_the_same_view(tiny_teacher_file, tmp_path):
    run = DistillRun(_cfg(tiny_teacher_file, tmp_path), device="cpu")
    cached = run._cached_teacher_view(1)
    idx = torch.tensor([0, 5, 17, 42, len(run.data.train_x) - 1])
    x = normalize(view_batch(run.train_loader.images, idx, view_params(len(run.data.train_x), 1, 1)),
                  torch.tensor(run.data.mean), torch.tensor(run.data.std))
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(run.device, run.precision):  # the run's own arithmetic
        logits, feats = run.teacher(x, return_features=True)
    logits, feats = logits.float(), [f.float() for f in feats]
    for got, want in ((cached["logits"][idx], logits), (cached["stage0"][idx], feats[-1])):
        assert got.dtype == torch.float16
        # Stored as the fp16 rounding of the teacher's fp32 output (11 significant bits).
        assert ((got.float() - want).abs() <= 1e-3 * want.abs() + 1e-6).all()


def test_a_second_trial_reuses_the_views_the_first_one_computed(tiny_teacher_file, tmp_path):
    first = DistillRun(_cfg(tiny_teacher_file, tmp_path), device="cpu")
    m1 = [first.train_epoch() for _ in range(3)]
    assert first.cache.filled == 3 and all(m["teacher_cache_hit"] == 1.0 for m in m1)
    second = DistillRun(_cfg(tiny_teacher_file, tmp_path, lr=0.1, method="kd"), device="cpu")  # another arm
    m2 = second.train_epoch()
    assert second.cache.filled == 0 and m2["teacher_cache_hit"] == 1.0
    assert second.cache.dir == first.cache.dir
    other_seed = DistillRun(_cfg(tiny_teacher_file, tmp_path, seed=2), device="cpu")
    assert other_seed.cache.dir != first.cache.dir  # other augmentation draws: never shared


def test_a_kd_arm_fills_the_maps_too_so_a_feature_arm_with_its_seed_reads_them(tiny_teacher_file, tmp_path):
    # A study runs its arms in grid order; the teacher must run once per epoch view whichever arm is first.
    kd = DistillRun(_cfg(tiny_teacher_file, tmp_path, method="kd"), device="cpu")
    kd.train_epoch()
    assert kd.cache.filled == 1
    sfkd = DistillRun(_cfg(tiny_teacher_file, tmp_path), device="cpu")
    assert sfkd.cfg.method == "sfkd" and sfkd.train_epoch()["teacher_cache_hit"] == 1.0
    assert sfkd.cache.filled == 0 and sfkd.cache.dir == kd.cache.dir


def test_a_search_and_a_final_run_on_the_same_subset_never_share_a_cache(tiny_teacher_file, tmp_path):
    # Regression: with train_subset set, the train split of a search and the train+val of a final run
    # had the same cache key, so the final run distilled from outputs computed on other images.
    cfg = DistillRun(_cfg(tiny_teacher_file, tmp_path, train_subset=300), device="cpu").cfg
    search = load_splits("synthetic", synthetic_size=400, train_subset=300)
    final = load_splits("synthetic", synthetic_size=400, train_subset=300, full_train=True)
    assert len(search.train_x) == len(final.train_x) == 300
    assert not torch.equal(search.train_x, final.train_x)
    caches = [open_teacher_cache(cfg, file_digest(tiny_teacher_file), d, [-1], [(64, 8, 8)], 10) for d in (search, final)]
    assert caches[0].dir != caches[1].dir
    again = load_splits("synthetic", synthetic_size=400, train_subset=300)
    assert open_teacher_cache(cfg, file_digest(tiny_teacher_file), again, [-1], [(64, 8, 8)], 10).dir == caches[0].dir


def test_the_cache_size_is_views_times_images_times_outputs_in_fp16_capped_by_config(tiny_teacher_file, tmp_path):
    run = DistillRun(_cfg(tiny_teacher_file, tmp_path, epochs=5), device="cpu")
    n = len(run.data.train_x)
    per_view = 2 * n * (10 + 64 * 8 * 8)  # logits of 10 classes + resnet8's last map, 2 bytes each
    assert run.cache.view_bytes == per_view and run.cache.cached_views == 5  # one view per epoch
    capped = DistillRun(_cfg(tiny_teacher_file, tmp_path, epochs=5, cache_max_gb=2.5 * per_view / 1e9), device="cpu")
    assert capped.cache.cached_views == 2


def test_teacher_training_draws_the_same_per_epoch_views_as_every_other_run(tmp_path):
    cfg = {**BASE, "teacher": "none", "teacher_arch": "resnet8", "method": "ft", "cache_dir": str(tmp_path / "c")}
    run, seen, metrics = _train(cfg, epochs=1)
    assert run.cache is None and "teacher_cache_hit" not in metrics[0]
    order = torch.randperm(len(run.data.train_x), generator=torch.Generator().manual_seed(1))
    first = order[:run.cfg.batch_size]
    want = normalize(view_batch(run.train_loader.images, first, view_params(len(run.data.train_x), 1, 0)),
                     torch.tensor(run.data.mean), torch.tensor(run.data.std))
    assert torch.equal(seen[0], want)


def test_an_fp32_run_and_a_bf16_run_of_one_teacher_data_and_seed_do_not_share_teacher_outputs(tiny_teacher_file,
                                                                                              tmp_path):
    fp32 = DistillRun(_cfg(tiny_teacher_file, tmp_path, precision="fp32"), device="cpu")
    fp32.train_epoch()
    bf16 = DistillRun(_cfg(tiny_teacher_file, tmp_path, precision="bf16"), device="cpu")
    bf16.train_epoch()
    assert bf16.cache.dir != fp32.cache.dir and bf16.cache.filled == 1  # computed in its own numerics
    a, b = fp32.cache.load(0)["logits"], bf16.cache.load(0)["logits"]
    assert not torch.equal(a, b)  # what sharing would have fed one of them
    channels_last = DistillRun(_cfg(tiny_teacher_file, tmp_path, precision="fp32", memory_format="channels_last"),
                               device="cpu")
    assert channels_last.cache.dir not in (fp32.cache.dir, bf16.cache.dir)
