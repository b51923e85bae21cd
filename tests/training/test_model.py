import pytest
import torch

from training.model import create_detector, pick_device


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenetv2_100"])
def test_any_timm_backbone_gets_a_four_channel_stem_and_two_logits(name):
    model = create_detector(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, 64, 64)).shape == (2, 2)


def test_unknown_model_name_suggests_alternatives():
    with pytest.raises(ValueError, match="unknown timm model 'resnet_18'"):
        create_detector("resnet_18")


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
