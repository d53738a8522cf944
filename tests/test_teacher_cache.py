"""The shared teacher-output cache: the same numbers as a fresh teacher forward, computed once."""
import pytest
import torch

from trainables import DistillRun
from trainables.data.augment import normalize, view_batch, view_params

BASE = dict(dataset="synthetic", synthetic_size=400, student="resnet8", teacher_arch="resnet8", epochs=3,
            batch_size=32, lr=0.05, density=0.3, sparse_init="ERK", fg_size=4, seed=1, method="sfkd", beta=0.5,
            teacher_cache=True, cache_views=2)


def _cfg(teacher, tmp_path, **kw):
    return {**BASE, "teacher": str(teacher), "cache_dir": str(tmp_path / "cache"), **kw}


def test_a_view_is_a_fixed_function_of_seed_view_and_image():
    a, b = view_params(100, 1, 3), view_params(100, 1, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(view_params(100, 1, 4)[0], a[0])
    assert not torch.equal(view_params(100, 2, 3)[0], a[0])


def test_cached_teacher_outputs_equal_a_fresh_teacher_forward_on_the_same_view(tiny_teacher_file, tmp_path):
    run = DistillRun(_cfg(tiny_teacher_file, tmp_path), device="cpu")
    cached = run._cached_teacher_view(1)
    idx = torch.tensor([0, 5, 17, 42, len(run.data.train_x) - 1])
    x = normalize(view_batch(run.train_loader.images, idx, view_params(len(run.data.train_x), 1, 1)),
                  torch.tensor(run.data.mean), torch.tensor(run.data.std))
    with torch.inference_mode():
        logits, feats = run.teacher(x, return_features=True)
    for got, want in ((cached["logits"][idx], logits), (cached["stage0"][idx], feats[-1])):
        assert got.dtype == torch.float16
        # fp16 keeps 11 significant bits: within 1e-3 of each value's magnitude.
        assert torch.allclose(got.float(), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def test_a_second_trial_reuses_the_views_the_first_one_computed(tiny_teacher_file, tmp_path):
    first = DistillRun(_cfg(tiny_teacher_file, tmp_path), device="cpu")
    m1 = [first.train_epoch() for _ in range(3)]  # epochs 0, 1, 2 -> views 0, 1, 0
    assert first.cache.filled == 2 and all(m["teacher_cache_hit"] == 1.0 for m in m1)
    second = DistillRun(_cfg(tiny_teacher_file, tmp_path, lr=0.1), device="cpu")  # another trial's config
    m2 = second.train_epoch()
    assert second.cache.filled == 0 and m2["teacher_cache_hit"] == 1.0
    assert second.cache.dir == first.cache.dir
    other_seed = DistillRun(_cfg(tiny_teacher_file, tmp_path, seed=2), device="cpu")
    assert other_seed.cache.dir != first.cache.dir  # different split and views: never shared


def test_training_from_the_cache_matches_running_the_teacher_on_the_same_views(tiny_teacher_file, tmp_path):
    def losses(**kw):
        run = DistillRun(_cfg(tiny_teacher_file, tmp_path, **kw), device="cpu")
        return [run.train_epoch()["loss"] for _ in range(2)], run

    cached, run = losses()
    fresh, fresh_run = losses(cache_max_gb=0.0)  # no room: same fixed views, teacher on the fly
    assert run.cache.cached_views == 2 and fresh_run.cache.cached_views == 0
    assert cached == pytest.approx(fresh, rel=1e-3)


def test_the_cache_size_is_views_times_images_times_outputs_in_fp16_capped_by_config(tiny_teacher_file, tmp_path):
    run = DistillRun(_cfg(tiny_teacher_file, tmp_path, cache_views=5), device="cpu")
    n = len(run.data.train_x)
    per_view = 2 * n * (10 + 64 * 8 * 8)  # logits of 10 classes + resnet8's last map, 2 bytes each
    assert run.cache.view_bytes == per_view and run.cache.cached_views == 5
    capped = DistillRun(_cfg(tiny_teacher_file, tmp_path, cache_views=5, cache_max_gb=2.5 * per_view / 1e9), device="cpu")
    assert capped.cache.cached_views == 2


def test_runs_without_a_teacher_file_keep_fresh_augmentation_draws(tmp_path):
    # Teacher training (method ft, teacher none) must not be narrowed to the cache's fixed views.
    cfg = {**BASE, "teacher": "none", "teacher_arch": "resnet8", "method": "ft", "cache_dir": str(tmp_path / "c")}
    run = DistillRun(cfg, device="cpu")
    assert run.cache is None
    shuffle_only = torch.Generator()
    shuffle_only.set_state(run.generator.get_state())
    torch.randperm(len(run.data.train_x), generator=shuffle_only)  # all that fixed views draw per epoch
    metrics = run.train_epoch()
    # Fresh crops and flips come from the run's generator, so it moved on past the shuffle.
    assert not torch.equal(run.generator.get_state(), shuffle_only.get_state())
    assert "teacher_cache_hit" not in metrics
