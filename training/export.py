"""Export: TorchScript + metadata.json, calibration.json, metrics.json; refused unless TorchScript matches eager.

The export folder is everything the handler needs; scripts/package_model.py archives it into a .mar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handler.calibration import CALIBRATION_FILENAME, Calibration
from handler.metadata import METADATA_FILENAME, METRICS_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.torchscript import load_torchscript, torchscript_deprecation_silenced
from training.jsonsafe import write_json


class ExportMismatchError(RuntimeError):
    """The saved TorchScript model does not reproduce the eager model's outputs."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely it matched."""

    model_path: Path
    metadata_path: Path
    max_abs_diff: float


def export_torchscript(
    model: nn.Module, metadata: ModelMetadata, example_batch: torch.Tensor, out_dir: Path, tolerance: float = 1e-4,
    calibration: Calibration | None = None, metrics: dict[str, Any] | None = None,
) -> ExportResult:
    """Traces the model on CPU, saves it, reloads it and compares logits on `example_batch`.

    Args:
        model: the trained eager model (any device; it is moved to CPU and put in eval mode).
        metadata: written to metadata.json beside the model.
        example_batch: real model inputs [N, 4, H, W]; the comparison runs on these.
        out_dir: created if needed.
        tolerance: the largest accepted absolute logit difference.
        calibration: written to calibration.json, which the handler applies to the softmax output.
        metrics: written to metrics.json, so the model's measured quality travels with it into the .mar.

    Raises:
        ExportMismatchError: the reloaded file differs from the eager model by more than `tolerance`.

    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    example_batch = example_batch.to("cpu")
    model_path = out_dir / MODEL_FILENAME
    with torch.inference_mode(False), torch.no_grad(), torchscript_deprecation_silenced():
        traced = torch.jit.trace(model, example_batch[:1])
        torch.jit.save(traced, str(model_path))
        reloaded = load_torchscript(model_path, torch.device("cpu"))
        expected = model(example_batch)
        actual = reloaded(example_batch)
    max_abs_diff = float((expected - actual).abs().max())
    if not max_abs_diff <= tolerance:
        model_path.unlink(missing_ok=True)
        raise ExportMismatchError(
            f"TorchScript output differs from the eager model by {max_abs_diff:.3g} (> {tolerance:g}); not exported"
        )
    metadata_path = out_dir / METADATA_FILENAME
    metadata.save(metadata_path)
    if calibration is not None:
        calibration.save(out_dir / CALIBRATION_FILENAME)
    if metrics is not None:
        write_json(out_dir / METRICS_FILENAME, metrics)
    return ExportResult(model_path, metadata_path, max_abs_diff)
