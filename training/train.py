"""Trains the detector, keeps the best epoch by validation ROC AUC, and exports it for serving.

Usage:
    python -m training.train --config config/train_demo.yaml --data-dir build/demo/data --output-dir build/demo/run

Outputs in --output-dir:
    config.yaml        the fully resolved configuration
    checkpoint.pt      best weights (state dict + config), loadable with weights_only=True
    export/            model.torchscript.pt + metadata.json, the input of scripts/package_model.py
    run_report.json    seed, package versions, data fingerprint, skipped files, per-epoch metrics
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from handler.forensics import PreprocessConfig
from handler.metadata import ModelMetadata
from training.config import TrainConfig, load_config, save_config
from training.dataset import CLASS_NAMES, FaceImageDataset, scan_image_folder, stratified_split
from training.export import ExportResult, export_torchscript
from training.metrics import classification_metrics
from training.model import create_detector, pick_device

CHECKPOINT_FILENAME = "checkpoint.pt"
REPORT_FILENAME = "run_report.json"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    best_epoch: int
    best_metrics: dict[str, float]
    export: ExportResult
    report_path: Path


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, NumPy and torch; returns the generator that drives DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def package_versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced."""
    names = ("torch", "torchvision", "timm", "numpy", "opencv-python-headless", "pillow", "scikit-learn")
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def predict_probabilities(
    model: nn.Module, loader: DataLoader, device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probability of fake for every item of the loader, in loader order."""
    model.eval()
    labels, probabilities = [], []
    with torch.inference_mode():
        for inputs, targets in loader:
            logits = model(inputs.to(device, memory_format=memory_format))
            probabilities.append(torch.softmax(logits.float(), dim=1)[:, CLASS_NAMES.index("fake")].cpu())
            labels.append(targets)
    return torch.cat(labels).numpy(), torch.cat(probabilities).numpy()


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, description: str,
                    memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """One pass over the training split; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    # disable=None: a progress bar on a terminal, silence in CI logs.
    progress = tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True, disable=None)
    for inputs, targets in progress:
        inputs, targets = inputs.to(device, memory_format=memory_format), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
        progress.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def train(config: TrainConfig) -> TrainResult:
    """Runs the whole recipe: scan → split → train → select by val AUC → export → report."""
    started = time.time()
    generator = seed_everything(config.seed)
    device = pick_device(config.device)
    output_dir = config.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")

    preprocess = PreprocessConfig(input_size=(config.input_size, config.input_size))
    scanned = scan_image_folder(config.data_dir, preprocess.max_image_pixels)
    for skipped in scanned.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    train_samples, val_samples = stratified_split(scanned.samples, config.val_fraction, config.seed)
    print(f"data: {len(train_samples)} train, {len(val_samples)} validation, {len(scanned.skipped)} skipped "
          f"(from {config.data_dir}); device: {device}")

    train_loader = DataLoader(
        FaceImageDataset(train_samples, preprocess, config.horizontal_flip),
        batch_size=config.batch_size, shuffle=True, generator=generator, num_workers=config.num_workers,
        drop_last=len(train_samples) > config.batch_size,
    )
    val_loader = DataLoader(FaceImageDataset(val_samples, preprocess), batch_size=config.batch_size * 2,
                            num_workers=config.num_workers)

    # channels_last: ~25 % faster convolutions on a 2-core AVX-512 CPU (measured), and the fast path on GPUs.
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = create_detector(config.model_name).to(device, memory_format=memory_format)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(config.class_weights, dtype=torch.float32, device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=max(1, config.epochs * len(train_loader)), pct_start=0.2
    )

    history: list[dict[str, Any]] = []
    best_epoch, best_auc, best_metrics = 0, -math.inf, {}
    checkpoint_path = output_dir / CHECKPOINT_FILENAME
    for epoch in range(1, config.epochs + 1):
        train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, device,
                                     f"epoch {epoch}/{config.epochs}", memory_format)
        labels, probabilities = predict_probabilities(model, val_loader, device, memory_format)
        metrics = {"train_loss": train_loss, **classification_metrics(labels, probabilities, config.threshold)}
        history.append({"epoch": epoch, **metrics})
        improved = metrics["roc_auc"] > best_auc or best_epoch == 0
        print(f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}, val accuracy {metrics['accuracy']:.3f}, "
              f"val ROC AUC {metrics['roc_auc']:.4f}{'  (best so far, saved)' if improved else ''}")
        if improved:
            best_epoch, best_auc, best_metrics = epoch, metrics["roc_auc"], metrics
            torch.save({"state_dict": model.state_dict(), "config": config.to_dict(), "epoch": epoch}, checkpoint_path)

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    model = model.to(memory_format=torch.contiguous_format)  # export the plain layout; serving tunes its own
    metadata = ModelMetadata(
        architecture=config.model_name,
        class_names=CLASS_NAMES,
        threshold=config.threshold,
        preprocessing=preprocess,
        training={"best_epoch": best_epoch, "validation": best_metrics, "data_fingerprint": scanned.fingerprint(),
                  "train_images": len(train_samples), "validation_images": len(val_samples)},
    )
    example_batch = next(iter(val_loader))[0]
    export = export_torchscript(model, metadata, example_batch, output_dir / "export", config.export_tolerance)
    print(f"exported {export.model_path} (TorchScript vs eager max |diff| {export.max_abs_diff:.2e})")

    report = {
        "config": config.to_dict(),
        "seed": config.seed,
        "device": str(device),
        "versions": package_versions(),
        "data": {
            "fingerprint": metadata.training["data_fingerprint"],
            "train_images": len(train_samples),
            "validation_images": len(val_samples),
            "skipped_count": len(scanned.skipped),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in scanned.skipped],
        },
        "history": history,
        "best": {"epoch": best_epoch, **best_metrics},
        "export": {"model": str(export.model_path), "metadata": str(export.metadata_path),
                   "max_abs_diff": export.max_abs_diff},
        "seconds": round(time.time() - started, 1),
    }
    report_path = output_dir / REPORT_FILENAME
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return TrainResult(best_epoch, best_metrics, export, report_path)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """CLI → TrainConfig: YAML defaults, then explicit flags, then --set key=value pairs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", type=Path, help="YAML file of settings (e.g. config/train_demo.yaml)")
    parser.add_argument("--data-dir", type=Path, help="folder with real/ and fake/ images")
    parser.add_argument("--output-dir", type=Path, help="where to write checkpoint, export and report")
    parser.add_argument("--model-name", help="timm model name (default resnet18)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--input-size", type=int, help="square model input side in px")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:1 | mps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set learning_rate=3e-4 (repeatable)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "data_dir": args.data_dir, "output_dir": args.output_dir, "model_name": args.model_name,
        "epochs": args.epochs, "batch_size": args.batch_size, "input_size": args.input_size, "device": args.device,
    }
    for pair in args.set:
        key, separator, value = pair.partition("=")
        if not separator:
            parser.error(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        return load_config(args.config, overrides)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    result = train(parse_args(argv))
    print(f"best epoch {result.best_epoch}: val ROC AUC {result.best_metrics['roc_auc']:.4f}, "
          f"accuracy {result.best_metrics['accuracy']:.3f}; report: {result.report_path}")


if __name__ == "__main__":
    main()
