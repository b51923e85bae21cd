import pytest
import torch
from matplotlib import cbook
from PIL import Image
from safetensors.torch import save_file

from training import weights
from training.model import create_detector
from training.weights import (
    OFFLINE_IMAGENET_WEIGHTS,
    WEIGHT_SOURCES,
    imagenet_classifier,
    imagenet_preprocessing,
    load_weights,
    rename_in_order,
    resolve_weights,
    weights_help,
)

MILITARY_UNIFORM = 652  # ImageNet-1k class index


# Checked by hand: MobileNetV2 puts "military uniform" first (p~0.43); EfficientNet-Lite0 with its own
# preprocessing (mean=std=0.5) ranks it third (p~0.18) behind "academic gown" and "mortarboard"; Lite1 second
# (p~0.09, behind "comic book"), Lite2 first (p~0.10). A wrong key order or random weights give p~0.001.
@pytest.mark.parametrize(("name", "top_k", "min_probability"), [
    ("mobilenetv2_100", 1, 0.1), ("tf_efficientnet_lite0", 5, 0.1),
    ("tf_efficientnet_lite1", 5, 0.05), ("tf_efficientnet_lite2", 5, 0.05),
])
def test_offline_imagenet_classifier_recognises_grace_hoppers_uniform(name, top_k, min_probability):
    model = imagenet_classifier(name)
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    with torch.no_grad():
        probabilities = model(imagenet_preprocessing(model)(image).unsqueeze(0)).softmax(dim=1)[0]
    assert MILITARY_UNIFORM in probabilities.topk(top_k).indices.tolist()
    assert probabilities[MILITARY_UNIFORM] > min_probability


def test_every_source_is_described_for_help():
    assert set(WEIGHT_SOURCES) == {"none", "timm", "offline"}
    help_text = weights_help()
    assert all(f"{name}:" in help_text for name in WEIGHT_SOURCES) and "path" in help_text
    assert resolve_weights("resnet18", "none") is None


def test_offline_for_an_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"no offline ImageNet weights for 'resnet18'.*mobilenetv2_100.*tf_efficient"):
        create_detector("resnet18", weights="offline")


def test_timm_source_without_network_points_to_the_alternatives(monkeypatch):
    def unreachable_hub(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(weights.timm, "create_model", unreachable_hub)
    with pytest.raises(RuntimeError, match=r"needs internet access.*weights='offline'.*local .pth"):
        resolve_weights("resnet18", "timm")


def test_rename_in_order_refuses_tensors_in_another_order():
    reference = {"conv.weight": torch.zeros(8, 3, 3, 3), "bn.weight": torch.zeros(8), "bn.running_var": torch.zeros(8)}
    shipped = dict(zip(["a.weight", "b.weight", "b.running_var"], reference.values(), strict=True))
    assert list(rename_in_order(shipped, reference)) == list(reference)

    swapped = {"a.weight": reference["conv.weight"], "b.running_var": torch.ones(8), "b.weight": torch.ones(8)}
    with pytest.raises(ValueError, match="tensor order differs: 'b.running_var'"):
        rename_in_order(swapped, reference)
    with pytest.raises(ValueError, match="cannot map 2 tensors onto a model with 3"):
        rename_in_order(dict(list(shipped.items())[:2]), reference)


def test_mobilenet_offline_mapping_pairs_torchvision_and_timm_names():
    # Spot checks where the two naming schemes differ most: first block without expansion, head, classifier.
    shipped = torch.load(OFFLINE_IMAGENET_WEIGHTS["mobilenetv2_100"].path(), weights_only=True)
    state_dict, _ = resolve_weights("mobilenetv2_100", "offline")
    assert torch.equal(state_dict["blocks.0.0.conv_pw.weight"], shipped["features.1.conv.1.weight"])
    assert torch.equal(state_dict["blocks.1.0.conv_dw.weight"], shipped["features.2.conv.1.0.weight"])
    assert torch.equal(state_dict["blocks.6.0.bn3.running_var"], shipped["features.17.conv.3.running_var"])
    assert torch.equal(state_dict["conv_head.weight"], shipped["features.18.0.weight"])
    assert torch.equal(state_dict["classifier.weight"], shipped["classifier.1.weight"])


def assert_same_tensors(left: torch.nn.Module, right: torch.nn.Module) -> None:
    right_state = right.state_dict()
    for key, tensor in left.state_dict().items():
        assert torch.equal(tensor, right_state[key]), key


def test_local_state_dict_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    trained = create_detector("mobilenetv2_050")
    path = tmp_path / "detector.pth"
    torch.save(trained.state_dict(), path)

    torch.manual_seed(1)
    fresh = create_detector("mobilenetv2_050")
    report = load_weights(fresh, "mobilenetv2_050", str(path))
    assert report.stem_channels_initialised == () and report.reinitialised == ()  # 4-channel stem, 2-class head kept
    assert_same_tensors(fresh, trained)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_training_checkpoint_and_safetensors_files_load(tmp_path, suffix):
    trained = create_detector("mobilenetv2_050")
    path = tmp_path / f"checkpoint{suffix}"
    if suffix == ".safetensors":
        save_file(trained.state_dict(), path)
    else:
        torch.save({"state_dict": trained.state_dict(), "config": {"model_name": "mobilenetv2_050"}, "epoch": 3}, path)
    assert_same_tensors(create_detector("mobilenetv2_050", weights=str(path)), trained)


def test_checkpoint_without_batchnorm_counters_still_loads(tmp_path):
    trained = create_detector("mobilenetv2_050")
    state_dict = {k: v for k, v in trained.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state_dict, tmp_path / "old.pth")
    assert_same_tensors(create_detector("mobilenetv2_050", weights=str(tmp_path / "old.pth")), trained)


def test_local_imagenet_file_gets_the_same_stem_and_head_surgery(tmp_path):
    imagenet = imagenet_classifier("mobilenetv2_100")
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    detector = create_detector("mobilenetv2_100")
    report = load_weights(detector, "mobilenetv2_100", str(tmp_path / "imagenet.pth"))
    assert report.stem_channels_initialised == (3,)
    assert report.reinitialised == ("classifier.bias", "classifier.weight")
    assert torch.equal(detector.conv_stem.weight[:, :3], imagenet.conv_stem.weight)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(FileNotFoundError, match=r"weights file '.*no_such_weights.pth' does not exist.*'offline'"):
        create_detector("mobilenetv2_050", weights=str(missing))


@pytest.mark.parametrize(("saved", "loaded", "problem"), [
    ("mobilenetv2_050", "mobilenetv2_100", r"shape mismatches \['bn1.weight \(16,\) vs \(32,\)"),
    ("mobilenetv2_050", "tf_efficientnet_lite0", r"unexpected keys"),
])
def test_weights_of_another_architecture_are_refused(tmp_path, saved, loaded, problem):
    path = tmp_path / f"{saved}.pth"
    torch.save(create_detector(saved).state_dict(), path)
    with pytest.raises(ValueError, match=rf"weights from .*{saved}.pth do not fit {loaded}: .*{problem}"):
        create_detector(loaded, weights=str(path))


def test_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "metrics.pt"
    torch.save({"epoch": 3, "accuracy": 0.9}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        create_detector("mobilenetv2_050", weights=str(path))
