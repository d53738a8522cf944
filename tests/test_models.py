import pytest
import torch

from trainables.models import create_model, model_names

PUBLISHED_PARAMS_M = {"resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.74, "wrn_16_2": 0.70,
                      "wrn_40_2": 2.26, "vgg8": 3.96, "vgg13": 9.46}
LAST_MAP = {"resnet20": (64, 8, 8), "resnet56": (64, 8, 8), "resnet110": (64, 8, 8), "wrn_16_2": (128, 8, 8),
            "wrn_40_2": (128, 8, 8), "vgg8": (512, 4, 4), "vgg13": (512, 4, 4), "resnet8x4": (256, 8, 8),
            "resnet32x4": (256, 8, 8)}


def test_all_fourteen_names_are_registered():
    assert set(model_names()) == {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                  "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2", "vgg8", "vgg11", "vgg13"}


@pytest.mark.parametrize("name,millions", PUBLISHED_PARAMS_M.items())
def test_parameter_count_matches_the_published_one_within_3_percent(name, millions):
    n = sum(p.numel() for p in create_model(name, 100).parameters())
    assert abs(n / 1e6 - millions) / millions < 0.03


@pytest.mark.parametrize("name,shape", LAST_MAP.items())
def test_last_stage_map_shape_for_32px_inputs(name, shape):
    model = create_model(name, 100).eval()
    logits, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 100)
    assert tuple(feats[-1].shape[1:]) == shape


def test_plain_call_returns_logits_equal_to_the_feature_call():
    model = create_model("resnet8", 10).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, feats = model(x, return_features=True)
    assert torch.equal(model(x), logits) and len(feats) >= 3


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        create_model("resnet21", 10)
