import json

import pytest
import torch
from torch import nn

from handler.metadata import ModelMetadata
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
