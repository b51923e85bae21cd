"""Export: TorchScript + metadata.json, calibration.json, metrics.json; refused unless TorchScript matches eager.

The export folder is everything the handler needs; scripts/package_model.py archives it into a .mar.

Beside the plain model it writes model.explain.pt, the same weights traced as forward(x) → (logits, last feature
map), because a traced model hides its activations and Grad-CAM (handler/explain.py) needs them. The plain file is
traced and checked exactly as before, so inference never pays for explanations. A backbone without timm's
forward_features/forward_head split (or whose split does not reproduce forward) is exported without it; metadata.json
says why (docs/EXPLANATIONS.md).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handler.calibration import CALIBRATION_FILENAME, Calibration
from handler.explain import EXPLAIN_METHOD
from handler.metadata import EXPLAIN_FILENAME, METADATA_FILENAME, METRICS_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.torchscript import load_torchscript, torchscript_deprecation_silenced
from training.jsonsafe import write_json
from training.model_files import save_torchscript, torchscript_bytes, write_atomically

logger = logging.getLogger(__name__)


class ExportMismatchError(RuntimeError):
    """The saved TorchScript model does not reproduce the eager model's outputs."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how closely it matched.

    Attributes:
        explain_path: model.explain.pt, or None when the model could not be exported for explanations
            (metadata.json's `explain.reason` says why).

    """

    model_path: Path
    metadata_path: Path
    max_abs_diff: float
    explain_path: Path | None = None


class FeaturesAndLogits(nn.Module):
    """A timm model whose forward returns (logits, last feature map): the activations Grad-CAM weighs, made visible.

    The logits are forward_head(forward_features(x)), which is how timm's own forward computes them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, classes] and the last feature map [N, C, h, w] of inputs [N, 4, H, W]."""
        features = self.model.forward_features(x)
        return self.model.forward_head(features), features


def feature_layer_name(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the module whose output forward_features returns (e.g. "layer4", "bn2"), for the response.

    Found by hooking every module and keeping the last one whose output is the returned tensor itself;
    "forward_features" when the tensor comes from a functional op instead of a module.
    """
    outputs: list[tuple[str, Any]] = []
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.append((name, out)))
               for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            features = model.forward_features(example)
    finally:
        for handle in handles:
            handle.remove()
    return next((name for name, output in reversed(outputs) if output is features), "forward_features")


def export_explain_model(model: nn.Module, example_batch: torch.Tensor, expected: torch.Tensor, out_dir: Path,
                         tolerance: float) -> tuple[Path | None, dict[str, Any]]:
    """Traces FeaturesAndLogits(model), saves it as model.explain.pt and checks its logits against `expected`.

    Args:
        model: the eager model, on CPU, in eval mode.
        example_batch: real model inputs; the comparison runs on these.
        expected: the eager model's logits on `example_batch`.
        out_dir: the export folder.
        tolerance: the largest accepted absolute logit difference (the plain export's).

    Returns:
        The file (None when not written) and metadata.json's `explain` entry, which says why when it is None.

    """
    path = out_dir / EXPLAIN_FILENAME
    path.unlink(missing_ok=True)  # a re-export into the same folder must not keep a stale twin
    if not (callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))):
        return None, {"file": None, "reason": f"{type(model).__name__} has no forward_features/forward_head "
                                              f"(timm's split of backbone and classifier)"}
    try:  # in memory: a model that cannot be traced or reloaded is exported without explanations
        with torch.inference_mode(False), torch.no_grad(), torchscript_deprecation_silenced():
            layer = feature_layer_name(model, example_batch[:1])
            serialized = torchscript_bytes(torch.jit.trace(FeaturesAndLogits(model), example_batch[:1]))
            logits, features = torch.jit.load(io.BytesIO(serialized), map_location="cpu").eval()(example_batch)
    except Exception as error:  # noqa: BLE001 - explanations are optional: any failure exports without them
        return None, {"file": None, "reason": f"tracing forward_features/forward_head failed: {error}"}
    if features.ndim != 4:
        return None, {"file": None, "reason": f"forward_features returns shape {list(features.shape)}, not a "
                                              f"[N, C, H, W] feature map Grad-CAM can weigh"}
    difference = float((logits - expected).abs().max())
    if not difference <= tolerance:
        return None, {"file": None, "reason": f"forward_head(forward_features(x)) differs from forward(x) by "
                                              f"{difference:.3g} (> {tolerance:g})"}
    write_atomically(path, serialized)  # outside the try: a full disk is an error, not "no explanations"
    return path, {"file": EXPLAIN_FILENAME, "method": EXPLAIN_METHOD, "layer": layer,
                  "feature_map": list(features.shape[1:]), "max_abs_diff": difference}


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
            The explain model (model.explain.pt) is written too when the model allows it (export_explain_model);
            metadata.json's `explain` says whether it was.

    Raises:
        ExportMismatchError: the reloaded file differs from the eager model by more than `tolerance`.

    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    example_batch = example_batch.to("cpu")
    model_path = out_dir / MODEL_FILENAME
    with torch.inference_mode(False), torch.no_grad(), torchscript_deprecation_silenced():
        traced = torch.jit.trace(model, example_batch[:1])
        save_torchscript(traced, model_path)
        reloaded = load_torchscript(model_path, torch.device("cpu"))
        expected = model(example_batch)
        actual = reloaded(example_batch)
    max_abs_diff = float((expected - actual).abs().max())
    if not max_abs_diff <= tolerance:
        model_path.unlink(missing_ok=True)
        raise ExportMismatchError(
            f"TorchScript output differs from the eager model by {max_abs_diff:.3g} (> {tolerance:g}); not exported"
        )
    explain_path, explain = export_explain_model(model, example_batch, expected, out_dir, tolerance)
    if explain_path is None:
        logger.warning("exported without %s, so this model cannot answer explanations: %s", EXPLAIN_FILENAME,
                       explain["reason"])
    metadata = replace(metadata, explain=explain)
    metadata_path = out_dir / METADATA_FILENAME
    metadata.save(metadata_path)
    if calibration is not None:
        calibration.save(out_dir / CALIBRATION_FILENAME)
    if metrics is not None:
        write_json(out_dir / METRICS_FILENAME, metrics)
    return ExportResult(model_path, metadata_path, max_abs_diff, explain_path)
