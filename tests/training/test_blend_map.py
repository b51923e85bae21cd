import numpy as np
import pytest
import torch

from training.blend_map import DetectorWithBlendMap, blend_map_loss, blend_map_target
from training.model import create_detector


def test_the_boundary_is_where_copy_and_frame_mix_whatever_the_blend_ratio():
    mask = np.array([[0.0, 0.25, 0.5]], dtype=np.float32)  # a blend ratio of 0.5 on a hard-centred mask
    assert blend_map_target(mask, "region") == pytest.approx(np.array([[0.0, 0.5, 1.0]]))
    # scaled to peak 1 first: the centre (fully pasted) and the outside (untouched) are not boundary
    assert blend_map_target(mask, "boundary") == pytest.approx(np.array([[0.0, 1.0, 0.0]]))
    assert blend_map_target(mask, "boundary").dtype == np.float32


def test_an_unblended_image_has_an_empty_map_and_an_unknown_target_is_refused():
    assert not blend_map_target(np.zeros((4, 5), dtype=np.float32), "boundary").any()
    with pytest.raises(ValueError, match=r"one of \['boundary', 'region'\]"):
        blend_map_target(np.ones((2, 2)), "edges")


@pytest.mark.parametrize("model_name", ["resnet18", "tf_efficientnet_lite0"])
def test_the_wrapped_detector_gives_the_detectors_own_logits_and_a_coarse_map(model_name):
    torch.manual_seed(0)
    detector = create_detector(model_name).eval()
    wrapped = DetectorWithBlendMap(detector).eval()
    inputs = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        logits, map_logits = wrapped(inputs)
        assert torch.allclose(logits, detector(inputs), atol=1e-6)
    assert map_logits.shape == (2, 2, 2)  # stride 32
    assert set(detector.state_dict()) == {key.removeprefix("detector.") for key in wrapped.state_dict()
                                          if key.startswith("detector.")}


def test_the_loss_averages_the_target_down_to_the_maps_resolution_and_rewards_the_right_map():
    target = torch.zeros(1, 64, 64)
    target[:, :32, :32] = 1.0  # the top-left quarter blended
    right = torch.full((1, 2, 2), -8.0)
    right[0, 0, 0] = 8.0
    wrong = -right
    assert blend_map_loss(right, target) < 0.01 < 5 < blend_map_loss(wrong, target)


def test_the_loss_has_gradients_for_the_map_head_only_through_the_features():
    detector = create_detector("resnet18")
    wrapped = DetectorWithBlendMap(detector)
    _, map_logits = wrapped(torch.randn(2, 4, 64, 64))
    blend_map_loss(map_logits, torch.rand(2, 64, 64)).backward()
    assert wrapped.blend_map_head.weight.grad is not None
    assert detector.fc.weight.grad is None  # the class head is not involved in the map
    assert detector.conv1.weight.grad is not None and detector.conv1.weight.grad.abs().sum() > 0


def test_the_map_head_is_not_part_of_what_is_exported():
    detector = create_detector("resnet18")
    DetectorWithBlendMap(detector)
    assert not any("blend_map" in key for key in detector.state_dict())
    assert not any("blend_map" in name for name, _ in detector.named_modules())
