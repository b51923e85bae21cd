import math

import pytest
import torch

from training.model import create_detector, pick_device
from training.weights import OFFLINE_IMAGENET_WEIGHTS, imagenet_classifier

OFFLINE_MODELS = sorted(OFFLINE_IMAGENET_WEIGHTS)


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


def stem_weight(model: torch.nn.Module) -> torch.Tensor:
    return model.get_submodule(model.pretrained_cfg["first_conv"]).weight.detach()


@pytest.mark.parametrize("name", OFFLINE_MODELS)
def test_offline_weights_keep_rgb_filters_and_kaiming_init_the_laplacian_channel(name):
    pretrained = imagenet_classifier(name)
    torch.manual_seed(0)
    detector = create_detector(name, weights="offline").eval()

    stem, rgb_stem = stem_weight(detector), stem_weight(pretrained)
    assert stem.shape[1] == 4 and rgb_stem.shape[1] == 3
    assert torch.equal(stem[:, :3], rgb_stem)
    laplacian = stem[:, 3]
    fan_in = stem[0].numel()  # 4 channels x kernel area: the whole stem convolution's fan-in
    kaiming_std = math.sqrt(2.0 / fan_in)
    assert laplacian.abs().sum() > 0
    assert kaiming_std / 2 < laplacian.std().item() < kaiming_std * 2

    with torch.no_grad():
        assert detector(torch.randn(2, 4, 64, 64)).shape == (2, 2)


@pytest.mark.parametrize("name", OFFLINE_MODELS)
def test_offline_weights_load_every_backbone_tensor_and_reset_only_the_head(name):
    pretrained = imagenet_classifier(name).state_dict()
    detector = create_detector(name, weights="offline")
    classifier = detector.pretrained_cfg["classifier"]
    stem_key = f"{detector.pretrained_cfg['first_conv']}.weight"

    assert detector.get_classifier().out_features == 2
    for key, tensor in detector.state_dict().items():
        if key.startswith(f"{classifier}."):
            assert tensor.shape[0] == 2, key
        elif key != stem_key:
            assert torch.equal(tensor, pretrained[key]), key  # BN running stats and batch counters included


def test_laplacian_filters_follow_the_torch_seed():
    def laplacian_filters(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return stem_weight(create_detector("mobilenetv2_100", weights="offline"))[:, 3]

    assert torch.equal(laplacian_filters(1), laplacian_filters(1))
    assert not torch.equal(laplacian_filters(1), laplacian_filters(2))
