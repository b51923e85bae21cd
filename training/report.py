"""The end of a run: calibrate on validation, choose the threshold, measure on test, export, plot, report.

Calibration and threshold see the validation split only; the test split is touched once, here,
for the numbers the report and the exported metrics.json state.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from handler.calibration import Calibration
from handler.faces import FaceConfig
from handler.forensics import PreprocessConfig
from handler.metadata import ModelMetadata
from training.calibration import fit_calibration
from training.config import TrainConfig
from training.dataset import CLASS_NAMES, FaceImageDataset, Sample, ScannedDataset
from training.export import ExportResult, export_torchscript
from training.inference import predict_logits
from training.jsonsafe import json_safe, write_json
from training.metrics import choose_threshold, classification_metrics, expected_calibration_error
from training.optim import MixedPrecision
from training.plots import plot_confusion_matrix, plot_reliability, plot_roc, plot_training_curves
from training.splits import DatasetSplit

REPORT_FILENAME = "report.json"
FAKE_INDEX = CLASS_NAMES.index("fake")


@dataclass(frozen=True)
class FinalEvaluation:
    """The calibrated model's numbers on the held-out split, and where everything was written."""

    calibration: Calibration
    threshold: float
    evaluated_on: str
    metrics: dict[str, Any]
    uncalibrated_metrics: dict[str, Any]
    export: ExportResult
    plots: dict[str, Path]
    report_path: Path

    def summary_line(self) -> str:
        """One line for the console."""
        return (f"{self.evaluated_on} ROC AUC {self.metrics['roc_auc']:.4f}, accuracy {self.metrics['accuracy']:.3f}, "
                f"F1 {self.metrics['f1']:.3f} at threshold {self.threshold:.3f}; ECE "
                f"{self.uncalibrated_metrics['ece']:.3f} → {self.metrics['ece']:.3f} ({self.calibration.method})")


def package_versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced."""
    names = ("torch", "torchvision", "timm", "numpy", "opencv-python-headless", "pillow", "scikit-learn")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:  # e.g. opencv-python instead of the headless build: record, don't crash
            versions[name] = None
    return versions


def _fake_probability(calibration: Calibration, logits: np.ndarray) -> np.ndarray:
    return calibration.probabilities(logits, FAKE_INDEX)[:, FAKE_INDEX]


def finish_run(
    *, model: nn.Module, config: TrainConfig, preprocess: PreprocessConfig, split: DatasetSplit,
    scanned: ScannedDataset, history: list[dict[str, Any]], best_epoch: int, device: torch.device,
    memory_format: torch.memory_format, run_facts: dict[str, Any],
    faces: FaceConfig | None = None, pseudo_fakes: Callable[[np.ndarray, Sample], np.ndarray] | None = None,
) -> FinalEvaluation:
    """Calibrates, thresholds, tests, exports and reports the best checkpoint (already loaded into `model`).

    Logits come from the model in fp32 whatever the training precision: serving runs the fp32
    TorchScript export, and calibration, threshold and test metrics must describe what is served.
    `faces` (the crop settings of a face dataset) and the SBI settings go into metadata.json, so the
    handler cuts faces as the training crops were cut; `pseudo_fakes` makes the val/test self-blends.
    """
    def dataset_of(samples: list) -> FaceImageDataset:
        return FaceImageDataset(samples, preprocess, pseudo_fakes=pseudo_fakes)

    def logits_of(samples: list) -> tuple[np.ndarray, np.ndarray]:
        loader = DataLoader(dataset_of(samples), batch_size=config.batch_size * 2,
                            num_workers=config.num_workers)
        return predict_logits(model, loader, device, memory_format, MixedPrecision(None))

    val_labels, val_logits = logits_of(split.val)
    real_weight, fake_weight = config.class_weights
    calibration = fit_calibration(val_logits, val_labels, config.calibration, fake_index=FAKE_INDEX,
                                  fake_logit_offset=math.log(fake_weight / real_weight))
    val_calibrated = _fake_probability(calibration, val_logits)
    threshold = choose_threshold(val_labels, val_calibrated, config.threshold_rule, config.threshold)

    evaluated_on = "test" if split.test else "validation"
    labels, logits = logits_of(split.test) if split.test else (val_labels, val_logits)
    uncalibrated = _fake_probability(Calibration.none(), logits)
    calibrated = _fake_probability(calibration, logits)
    metrics = classification_metrics(labels, calibrated, threshold)
    uncalibrated_metrics = classification_metrics(labels, uncalibrated, config.threshold)
    validation_metrics = {key: value for key, value in history[best_epoch - 1].items() if key != "epoch"}

    val_uncalibrated = _fake_probability(Calibration.none(), val_logits)
    quality = {
        "best_epoch": best_epoch,
        "validation": validation_metrics,
        # Calibrated scores at the validation-chosen threshold (what is served), and the raw softmax at the
        # fixed `threshold` setting (what the model would do without calibration and threshold choice).
        "evaluation": {"split": evaluated_on, "images": len(labels), "threshold": threshold,
                       "calibrated": metrics, "uncalibrated_threshold": config.threshold,
                       "uncalibrated": uncalibrated_metrics},
        "calibration": {"method": calibration.method, "fitted_on": "validation",
                        "validation_ece_before": expected_calibration_error(val_labels, val_uncalibrated),
                        "validation_ece_after": expected_calibration_error(val_labels, val_calibrated),
                        "evaluation_ece_before": uncalibrated_metrics["ece"],
                        "evaluation_ece_after": metrics["ece"]},
        "threshold": {"rule": config.threshold_rule, "value": threshold, "chosen_on": "validation, calibrated"},
    }
    metadata = ModelMetadata(
        architecture=config.model_name, class_names=CLASS_NAMES, threshold=threshold, preprocessing=preprocess,
        training=json_safe({"best_epoch": best_epoch, "data_fingerprint": scanned.fingerprint(),
                            "split": split.summary(), "calibration": calibration.method,
                            "threshold_rule": config.threshold_rule, "validation": validation_metrics,
                            "evaluation": quality["evaluation"], "faults": list(config.faults),
                            **({"sbi": config.sbi.to_dict()} if config.sbi.enabled else {})}),
        faces=faces,
    )
    model = model.to(memory_format=torch.contiguous_format)  # export the plain layout; serving tunes its own
    example_batch = next(iter(DataLoader(dataset_of(split.val), batch_size=8)))[0]
    export = export_torchscript(model, metadata, example_batch, config.output_dir / "export", config.export_tolerance,
                                calibration=calibration, metrics=quality)
    print(f"exported {export.model_path} (TorchScript vs eager max |diff| {export.max_abs_diff:.2e})")

    plots_dir = config.output_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = {
        "training_curves": plot_training_curves(history, plots_dir / "training_curves.png"),
        "roc": plot_roc(labels, calibrated, plots_dir / f"roc_{evaluated_on}.png"),
        "confusion_matrix": plot_confusion_matrix(metrics["confusion_matrix"],
                                                  plots_dir / f"confusion_matrix_{evaluated_on}.png"),
        "reliability": plot_reliability(labels, uncalibrated, calibrated,
                                        plots_dir / f"reliability_{evaluated_on}.png"),
    }

    report = {
        "config": config.to_dict(),
        "seed": config.seed,
        **run_facts,
        "versions": package_versions(),
        "data": {
            "source": str(config.dataset),
            "layout": scanned.layout,
            "fingerprint": metadata.training["data_fingerprint"],
            "split": split.summary(),
            "skipped_count": len(scanned.skipped),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in scanned.skipped],
        },
        "history": history,
        **quality,
        "export": {"folder": str(export.model_path.parent), "max_abs_diff": export.max_abs_diff},
        "plots": {name: str(path) for name, path in plots.items()},
    }
    report_path = config.output_dir / REPORT_FILENAME
    write_json(report_path, report)
    return FinalEvaluation(calibration, threshold, evaluated_on, metrics, uncalibrated_metrics, export, plots,
                           report_path)
