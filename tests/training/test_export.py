import json

import pytest
import torch
from torch import nn

from handler.metadata import EXPLAIN_FILENAME, ModelMetadata
from handler.torchscript import torchscript_deprecation_silenced
from training.export import ExportMismatchError, export_torchscript
from training.model import create_detector


class SignDependent(nn.Module):
    """Data-dependent control flow: tracing freezes one branch, so the traced model is wrong for the other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(1, 2, 3))
        if bool(pooled.sum() > 0):
            return torch.stack([pooled, pooled * 2], dim=1)
        return torch.stack([pooled, pooled * 3], dim=1)


def test_export_reloads_and_matches_eager(tmp_path):
    model = create_detector("resnet18")
    batch = torch.randn(4, 4, 64, 64)
    result = export_torchscript(model, ModelMetadata(architecture="resnet18"), batch, tmp_path)
    assert result.max_abs_diff <= 1e-4
    assert json.loads(result.metadata_path.read_text())["architecture"] == "resnet18"
    with torchscript_deprecation_silenced():
        reloaded = torch.jit.load(str(result.model_path))
    torch.testing.assert_close(reloaded(batch), model.eval()(batch), atol=1e-4, rtol=0)


def test_export_refuses_a_model_whose_torchscript_differs(tmp_path):
    batch = torch.cat([torch.ones(1, 4, 8, 8), -2 * torch.ones(1, 4, 8, 8)])  # traced on the first item only
    refused = pytest.raises(ExportMismatchError, match="differs from the eager model")
    with pytest.warns(torch.jit.TracerWarning), refused:
        export_torchscript(SignDependent(), ModelMetadata(architecture="sign"), batch, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-exported is left for packaging to pick up


class SplitHeadDrops(nn.Module):
    """forward_features/forward_head exist but forward adds a bias they leave out: the split does not reproduce it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)) + 1.0


class TokenFeatures(SplitHeadDrops):
    """A ViT-like split: forward_features returns tokens [N, T, C], not a map Grad-CAM can weigh."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class NoSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize(("architecture", "layer", "channels"),
                         [("resnet18", "layer4", 512), ("tf_efficientnet_lite0", "bn2", 1280)])
def test_export_writes_the_explain_model_beside_the_plain_one(tmp_path, architecture, layer, channels):
    model = create_detector(architecture).eval()
    batch = torch.randn(3, 4, 64, 64)
    result = export_torchscript(model, ModelMetadata(architecture=architecture), batch, tmp_path)
    assert result.explain_path == tmp_path / EXPLAIN_FILENAME
    explain = ModelMetadata.load(result.metadata_path).explain
    assert explain["file"] == EXPLAIN_FILENAME and explain["method"] == "grad-cam" and explain["layer"] == layer
    assert explain["feature_map"] == [channels, 2, 2] and explain["max_abs_diff"] <= 1e-4
    with torchscript_deprecation_silenced():
        logits, features = torch.jit.load(str(result.explain_path))(batch)
        plain = torch.jit.load(str(result.model_path))
    torch.testing.assert_close(logits, plain(batch), atol=1e-4, rtol=0)
    torch.testing.assert_close(features, model.forward_features(batch), atol=1e-4, rtol=1e-4)
    assert isinstance(plain(batch), torch.Tensor)  # the served file stays the bare model, not the wrapper
    assert not any(name.startswith("model.") for name, _ in plain.named_parameters())


@pytest.mark.parametrize(("model", "reason"), [(NoSplit(), "no forward_features/forward_head"),
                                               (SplitHeadDrops(), "differs from forward"),
                                               (TokenFeatures(), "not a [N, C, H, W] feature map")])
def test_a_model_that_cannot_explain_is_exported_without_it_and_says_why(tmp_path, model, reason):
    batch = torch.randn(2, 4, 16, 16)
    result = export_torchscript(model, ModelMetadata(architecture="custom"), batch, tmp_path)
    assert result.model_path.is_file() and result.explain_path is None
    assert not (tmp_path / EXPLAIN_FILENAME).exists()
    explain = ModelMetadata.load(result.metadata_path).explain
    assert explain["file"] is None and reason in explain["reason"]


def test_re_exporting_a_model_that_cannot_explain_removes_a_stale_explain_file(tmp_path):
    batch = torch.randn(2, 4, 64, 64)
    export_torchscript(create_detector("resnet18"), ModelMetadata(architecture="resnet18"), batch, tmp_path)
    assert (tmp_path / EXPLAIN_FILENAME).is_file()
    export_torchscript(NoSplit(), ModelMetadata(architecture="custom"), batch, tmp_path)
    assert not (tmp_path / EXPLAIN_FILENAME).exists()
