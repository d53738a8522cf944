"""Each distillation method is one small unit in a registry: it declares what it needs and returns
its named loss parts, with the weights of docs/method.md's Baselines."""
import pytest
import torch
import torch.nn.functional as F

from trainables.config import DistillConfig
from trainables.losses import at_loss, kd_loss, sfkd_parts, sp_loss
from trainables.methods import METHODS, get_method


def _cfg(method, **kw):
    return DistillConfig.from_dict({"method": method, "teacher": "t.pt", **kw})


def test_the_registry_holds_the_six_methods_with_what_each_needs():
    assert set(METHODS) == {"ft", "kd", "fitnet", "sfkd", "at", "sp"}
    needs = {m: (get_method(m).needs_teacher, get_method(m).distils_stages, get_method(m).connectors) for m in METHODS}
    assert needs == {"ft": (False, False, False), "kd": (True, False, False), "fitnet": (True, True, True),
                     "sfkd": (True, True, True), "at": (True, True, False), "sp": (True, True, False)}


def test_each_method_fixes_the_weights_of_terms_it_does_not_have():
    assert (lambda c: (c.alpha, c.beta, c.gamma))(_cfg("ft", alpha=0.3, beta=0.9, gamma=0.7)) == (1.0, 0.0, 0.0)
    assert _cfg("kd", gamma=0.7).gamma == 0.0 and _cfg("sfkd", gamma=0.7).gamma == 0.7
    assert (lambda c: (c.alpha, c.beta))(_cfg("at")) == (1.0, 0.0)  # the literature recipe
    assert (lambda c: (c.alpha, c.beta))(_cfg("sfkd")) == (0.5, 0.5)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits, t_logits = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    pairs = [(torch.randn(4, 8, 6, 6, generator=g), torch.randn(4, 8, 6, 6, generator=g)) for _ in range(2)]
    return logits, y, t_logits, pairs


def test_each_unit_returns_its_named_parts_and_the_weighted_total(batch):
    logits, y, t_logits, pairs = batch
    ce, kd = F.cross_entropy(logits, y), kd_loss(logits, t_logits, 4.0)
    total, parts = get_method("ft").losses(_cfg("ft"), logits, y, t_logits, pairs)
    assert set(parts) == {"ce"} and torch.equal(total, ce)
    cfg = _cfg("kd", alpha=0.3, beta=0.7, temperature=4.0)
    total, parts = get_method("kd").losses(cfg, logits, y, t_logits, pairs)
    assert set(parts) == {"ce", "kd"} and torch.allclose(total, 0.3 * ce + 0.7 * kd)
    cfg = _cfg("sfkd", alpha=0.5, beta=0.5, gamma=2.0, bg_weight=0.25, fg_size=2, temperature=4.0)
    total, parts = get_method("sfkd").losses(cfg, logits, y, t_logits, pairs)
    fg = sum(sfkd_parts(s, t, 2)[0] for s, t in pairs)
    bg = sum(sfkd_parts(s, t, 2)[1] for s, t in pairs)
    assert set(parts) == {"ce", "kd", "fg", "bg"}
    assert torch.allclose(total, 0.5 * ce + 0.5 * kd + 2.0 * (fg + 0.25 * bg))
    total, parts = get_method("fitnet").losses(_cfg("fitnet", beta=0.0), logits, y, None, pairs)
    mse = sum(F.mse_loss(s, t) for s, t in pairs)  # fg_size 0: the whole map is L_fg
    assert torch.allclose(parts["fg"], mse) and float(parts["bg"]) == 0.0
    total, parts = get_method("at").losses(_cfg("at", at_weight=1000.0), logits, y, t_logits, pairs)
    assert set(parts) == {"ce", "at"}  # beta 0: no KD term
    assert torch.allclose(total, ce + 1000.0 * sum(at_loss(s, t) for s, t in pairs))
    total, parts = get_method("sp").losses(_cfg("sp", sp_weight=3000.0), logits, y, t_logits, pairs)
    assert torch.allclose(total, ce + 3000.0 * sum(sp_loss(s, t) for s, t in pairs))


def test_an_sfkd_foreground_that_does_not_fit_the_map_is_refused_and_fitnet_has_none():
    with pytest.raises(ValueError, match="fg_size"):
        get_method("sfkd").check_stage(_cfg("sfkd", fg_size=9), 8, 8, "student resnet8, stage -1")
    get_method("fitnet").check_stage(_cfg("fitnet", fg_size=9), 8, 8, "student resnet8, stage -1")


def test_each_method_declares_the_parts_it_returns_and_the_loop_logs_every_declared_part(batch):
    from trainables.methods import LOSS_PARTS

    logits, y, t_logits, pairs = batch
    for name in METHODS:
        cfg = _cfg(name, beta=0.5, gamma=0.5, fg_size=2)
        _, parts = get_method(name).losses(cfg, logits, y, t_logits, pairs)
        assert set(parts) <= set(get_method(name).parts), name
    # The six methods' parts, which the loop logs as loss_<part> for every run (0 where a method has none).
    assert set(LOSS_PARTS) == {"ce", "kd", "fg", "bg", "at", "sp"} and len(LOSS_PARTS) == 6


def test_the_space_validator_checks_stages_without_the_training_loop():
    import subprocess
    import sys

    code = "import sys, tuner.spaces; print('trainables.run' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
