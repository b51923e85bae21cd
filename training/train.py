"""Trains the detector, keeps the best epoch by validation ROC AUC, calibrates it and exports it for serving.

Usage:
    python -m training.train --dataset DATA --output-dir RUN [--config config/train.yaml] [--set key=value ...]
    torchrun --nproc_per_node 2 -m training.train --dataset DATA --output-dir RUN   (data-parallel)

DATA is a folder (real/ + fake/, or Train|Validation|Test / Real|Fake) or a CSV manifest
(path,label[,subject][,split]). Settings: config/train.yaml lists every one with its default.

Outputs in --output-dir:
    config.yaml      the fully resolved configuration
    checkpoint.pt    best weights + config + metrics, loadable with torch.load(..., weights_only=True)
    export/          model.torchscript.pt, metadata.json, calibration.json, metrics.json (→ scripts/package_model.py)
    plots/           training curves, ROC, confusion matrix, reliability diagram (PNG)
    report.json      seed, versions, data fingerprint and split, skipped files, faults, per-epoch and test metrics
    splits.csv       every file with its split (path,label,subject,split + the manifest's other columns), for
                     python -m training.evaluate --dataset RUN/splits.csv --split test

Real photos + self-blended images (SBI): --set sbi.enabled=true (or config/train-faces-sbi.yaml) trains on
a folder of real faces only; prepare it with python -m training.prepare to train and serve on face crops.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from handler.forensics import PreprocessConfig
from training.augment import build_augmenter
from training.blend_map import DetectorWithBlendMap, blend_map_loss
from training.config import AMP_MODES, TrainConfig, dotted_override, load_config, merge_settings, save_config
from training.dataset import CLASS_NAMES, FaceImageDataset, ScannedDataset, scan_dataset
from training.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    init_distributed,
    parameters_in_sync,
    shutdown_distributed,
)
from training.early_stopping import EarlyStopping
from training.export import ExportResult
from training.faults import FAULTS, FaultPlan, StepSkipper, corrupt_labels, loss_targets, noisy_inputs, parse_faults
from training.inference import predict_logits
from training.metrics import classification_metrics
from training.model import create_detector, pick_device
from training.model_files import save_checkpoint
from training.optim import MixedPrecision, build_optimizer, build_scheduler, resolve_mixed_precision
from training.prepare import read_face_config
from training.pseudo_fakes import PseudoFakeMaker, split_with_twins
from training.report import FinalEvaluation, finish_run
from training.splits import SPLITS_FILENAME, assert_subject_disjoint, split_dataset, write_split_manifest

CHECKPOINT_FILENAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced (on the main process; other ranks get None from train())."""

    best_epoch: int
    best_metrics: dict[str, float]
    final: FinalEvaluation
    report_path: Path

    @property
    def export(self) -> ExportResult:
        """The export folder's files (the input of scripts/package_model.py)."""
        return self.final.export


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, NumPy and torch; returns the generator that drives DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class TrainingLoop:
    """The objects one optimisation epoch needs, gathered so functions take one argument, not twelve."""

    model: nn.Module
    loader: DataLoader
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: MixedPrecision
    device: torch.device
    memory_format: torch.memory_format
    faults: FaultPlan
    skipper: StepSkipper
    grad_clip_norm: float
    blend_map_weight: float = 0.0
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = self.precision.grad_scaler(self.device)


def train_one_epoch(loop: TrainingLoop, description: str) -> dict[str, float]:
    """One pass over this process's share of the training split; returns mean loss and throughput."""
    loop.model.train()
    total, count = 0.0, 0
    started = time.perf_counter()
    # disable=None: a progress bar on a terminal, silence in CI logs.
    progress = tqdm(loop.loader, desc=description, unit="batch", leave=False, dynamic_ncols=True, disable=None)
    for inputs, targets, *blend_maps in progress:
        inputs = inputs.to(loop.device, memory_format=loop.memory_format, non_blocking=True)
        targets = targets.to(loop.device, non_blocking=True)
        inputs = noisy_inputs(inputs, loop.faults)
        with loop.precision.autocast(loop.device):
            outputs = loop.model(inputs)
        logits = outputs[0] if blend_maps else outputs
        loss = loop.loss_fn(logits.float(), loss_targets(targets, loop.faults))
        if blend_maps:  # DetectorWithBlendMap and a dataset with blend_maps (training.blend_map)
            loss = loss + loop.blend_map_weight * blend_map_loss(outputs[1], blend_maps[0].to(loop.device))
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        skipped = loop.skipper.skip()
        if not skipped:
            if loop.grad_clip_norm > 0:
                loop.scaler.unscale_(loop.optimizer)
                nn.utils.clip_grad_norm_(loop.model.parameters(), loop.grad_clip_norm)
            loop.scaler.step(loop.optimizer)
            loop.scaler.update()
        with warnings.catch_warnings():
            if skipped:  # the schedule follows steps taken or not; torch warns when the first one was skipped
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            loop.scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
        progress.set_postfix(loss=f"{total / count:.4f}")
    seconds = time.perf_counter() - started
    return {"train_loss": total / max(count, 1), "train_images_per_s": count / seconds if seconds else 0.0}


def preprocessing_for(model: nn.Module, input_size: int, jpeg_reduced_decode: bool = True) -> PreprocessConfig:
    """The model input recipe, with the RGB normalisation the backbone was pretrained with.

    Preprocessing travels with the weights (timm's pretrained_cfg): TF-ported EfficientNet-Lite
    expects mean = std = 0.5, not ImageNet's statistics, and a stem fed the wrong scale starts
    fine-tuning from badly mis-scaled activations. The exported metadata.json carries the result.
    """
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    defaults = PreprocessConfig()
    mean = (*pretrained.get("mean", defaults.mean[:3]), defaults.mean[3])
    std = (*pretrained.get("std", defaults.std[:3]), defaults.std[3])
    return PreprocessConfig(input_size=(input_size, input_size), mean=tuple(mean), std=tuple(std),
                            jpeg_reduced_decode=jpeg_reduced_decode)


def _log(context: DistributedContext, message: str) -> None:
    if context.is_main:
        print(message, flush=True)


def required_classes(config: TrainConfig) -> tuple[str, ...]:
    """Real images alone suffice when the fakes are self-blended; otherwise the data must hold both classes."""
    return ("real",) if config.sbi.enabled else CLASS_NAMES


def _scan(config: TrainConfig, preprocess: PreprocessConfig, context: DistributedContext) -> ScannedDataset:
    """Rank 0 decodes every file once; the other ranks receive its result instead of repeating the work."""
    scanned = None
    if context.is_main:
        scanned = scan_dataset(config.dataset, preprocess.max_image_pixels, layout=config.dataset_layout,
                               required_classes=required_classes(config))
        for skipped in scanned.skipped:
            print(f"skipped {skipped.path}: {skipped.reason}")
    return broadcast_from_main(scanned, context)


def train(config: TrainConfig) -> TrainResult | None:
    """Runs the whole recipe: scan → split → train → select by val AUC → calibrate → test → export → report.

    Under torchrun every rank trains; rank 0 alone evaluates, saves and reports, and returns the result.
    """
    faults = parse_faults(config.faults)
    context, device = init_distributed(pick_device(config.device))
    try:
        return _train(config, faults, context, device)
    finally:
        shutdown_distributed(context)


def _train(config: TrainConfig, faults: FaultPlan, context: DistributedContext,
           device: torch.device) -> TrainResult | None:
    started = time.time()
    generator = seed_everything(config.seed)  # every rank alike: identical initial weights
    if context.is_main:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, config.output_dir / "config.yaml")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = resolve_mixed_precision(config.amp, device)

    # channels_last: ~25 % faster convolutions on a 2-core AVX-512 CPU (measured), and the fast path on GPUs.
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = create_detector(config.model_name, config.weights).to(device, memory_format=memory_format)
    preprocess = preprocessing_for(model, config.input_size, config.jpeg_reduced_decode)
    # From here on each rank draws its own augmentation and noise; one rank's draws repeated N times is
    # less augmentation, not more data.
    torch.manual_seed(config.seed + context.rank)
    scanned = _scan(config, preprocess, context)
    faces = read_face_config(config.dataset)  # a face-crop dataset from training.prepare: serve on faces too
    split = split_dataset(scanned.samples, config.val_fraction, config.test_fraction, config.seed,
                          classes=required_classes(config))
    if context.is_main:
        write_split_manifest(split, config.output_dir / SPLITS_FILENAME,
                             config.dataset if scanned.layout == "manifest" else None)
    train_fakes = eval_fakes = None
    if config.sbi.enabled:
        split = split_with_twins(split, config.sbi, config.seed)
        margin = faces.margin if faces is not None else None
        train_fakes = PseudoFakeMaker(config.sbi, margin, fixed_seed=None, root=scanned.root)
        eval_fakes = PseudoFakeMaker(config.sbi, margin, fixed_seed=config.seed, root=scanned.root)
    assert_subject_disjoint(split)
    train_labels, fault_effects = corrupt_labels([s.label for s in split.train], faults, config.seed)
    _log(context, f"data: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} test "
                  f"({split.method} split), {len(scanned.skipped)} skipped (from {config.dataset}"
                  f"{', face crops' if faces else ''}); device: {device}, "
                  f"mixed precision: {precision.name}, processes: {context.world_size}"
                  + (f"; FAULTS INJECTED: {', '.join(faults.specs)} {fault_effects}" if faults.active else ""))

    augment = build_augmenter(config.augment, preprocess.input_size)
    mapping = config.blend_map_weight > 0
    train_set = FaceImageDataset(split.train, preprocess, augment=augment, labels=train_labels,
                                 pseudo_fakes=train_fakes, blend_maps=config.blend_map_target if mapping else None)
    sampler = (DistributedSampler(train_set, context.world_size, context.rank, shuffle=True, seed=config.seed,
                                  drop_last=True) if context.enabled else None)
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
        num_workers=config.num_workers, persistent_workers=config.num_workers > 0,
        pin_memory=device.type == "cuda", drop_last=len(split.train) > config.batch_size * context.world_size,
    )
    val_loader = DataLoader(FaceImageDataset(split.val, preprocess, pseudo_fakes=eval_fakes),
                            batch_size=config.batch_size * 2,
                            num_workers=config.num_workers)

    # The map head trains beside the classifier; `model` (what is validated, checkpointed, exported) stays the detector.
    optimised = DetectorWithBlendMap(model).to(device, memory_format=memory_format) if mapping else model
    trained = DistributedDataParallel(optimised, device_ids=[device.index] if device.type == "cuda" else None) \
        if context.enabled else optimised
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(config.class_weights, dtype=torch.float32, device=device))
    optimizer = build_optimizer(trained, config)
    scheduler = build_scheduler(optimizer, config, len(train_loader))
    loop = TrainingLoop(trained, train_loader, loss_fn, optimizer, scheduler, precision, device, memory_format,
                        faults, StepSkipper(faults, config.seed), config.grad_clip_norm, config.blend_map_weight)

    history: list[dict[str, Any]] = []
    selection = EarlyStopping(config.early_stopping_patience)
    stopped_early = False
    checkpoint_path = config.output_dir / CHECKPOINT_FILENAME
    for epoch in range(1, config.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        learning_rate = optimizer.param_groups[0]["lr"]  # at the epoch's start; it changes every step
        epoch_stats = train_one_epoch(loop, f"epoch {epoch}/{config.epochs}")
        stop = False
        if context.is_main:
            labels, logits = predict_logits(model, val_loader, device, memory_format, precision)
            probability_fake = torch.softmax(torch.from_numpy(logits), dim=1)[:, 1].numpy()
            metrics = {**epoch_stats, **classification_metrics(labels, probability_fake, config.threshold)}
            history.append({"epoch": epoch, "learning_rate": learning_rate, **metrics})
            improved = selection.update(epoch, metrics["roc_auc"])
            print(f"epoch {epoch}/{config.epochs}: train loss {metrics['train_loss']:.4f} "
                  f"({metrics['train_images_per_s']:.0f} img/s), val loss {metrics['loss']:.4f}, "
                  f"accuracy {metrics['accuracy']:.3f}, ROC AUC {metrics['roc_auc']:.4f}"
                  f"{'  (best so far, saved)' if improved else ''}", flush=True)
            if improved:
                save_checkpoint({"state_dict": model.state_dict(), "config": config.to_dict(), "epoch": epoch,
                                 "metrics": metrics}, checkpoint_path)
            stop = selection.should_stop and epoch < config.epochs  # on the last epoch there is nothing to stop
            if stop:
                print(f"early stop: no better validation ROC AUC for {selection.stale_epochs} epochs")
        if broadcast_from_main(stop, context):
            stopped_early = True
            break
    in_sync = parameters_in_sync(model, context)
    barrier(context)
    if not context.is_main:
        return None

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    final = finish_run(
        model=model, config=config, preprocess=preprocess, split=split, scanned=scanned, history=history,
        best_epoch=selection.best_epoch, device=device, memory_format=memory_format, faces=faces,
        pseudo_fakes=eval_fakes,
        run_facts={
            "device": str(device), "mixed_precision": precision.name, "world_size": context.world_size,
            "faults": {"specs": list(faults.specs), **fault_effects, "optimizer_steps_skipped": loop.skipper.skipped,
                       "optimizer_steps_taken": loop.skipper.taken},
            "early_stopped": stopped_early,
            "ddp_parameters_in_sync": in_sync, "seconds_training": round(time.time() - started, 1),
        },
    )
    return TrainResult(selection.best_epoch, history[selection.best_epoch - 1], final, final.report_path)


def _epilog() -> str:
    from training.calibration import CALIBRATORS
    from training.dataset import LAYOUTS
    from training.metrics import THRESHOLD_RULES
    from training.weights import WEIGHT_SOURCES

    def listing(title: str, entries: dict[str, Any]) -> str:
        def describe(entry: Any) -> str:
            return entry if isinstance(entry, str) else getattr(entry, "description", None) or entry[-1]

        lines = [f"  {name:16s} {describe(entry)}" for name, entry in entries.items()]
        return f"{title}:\n" + "\n".join(lines)

    return "\n\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        listing("weights (--weights)", WEIGHT_SOURCES), listing("dataset layouts (dataset_layout)", LAYOUTS),
        listing("calibration (--calibration)", CALIBRATORS),
        listing("threshold rules (threshold_rule)", THRESHOLD_RULES),
        listing("faults (--fault NAME[:VALUE], repeatable)", FAULTS), listing("mixed precision (--amp)", AMP_MODES),
    ])


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """CLI → TrainConfig: defaults, then the --config YAML, then explicit flags, then --set key=value pairs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    parser.add_argument("--config", type=Path,
                        help="recipe YAML, e.g. config/train_demo.yaml (defaults: config/train.yaml)")
    parser.add_argument("--dataset", "--data-dir", dest="dataset", type=Path,
                        help="dataset folder or CSV manifest")
    parser.add_argument("--output-dir", type=Path, help="where to write checkpoint, export, plots and report")
    parser.add_argument("--model-name", help="timm model name (default resnet18)")
    parser.add_argument("--weights", help="none | timm | offline | PATH (see below)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--input-size", type=int, help="square model input side in px")
    parser.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:1 | mps")
    parser.add_argument("--amp", choices=sorted(AMP_MODES))
    parser.add_argument("--calibration", help="temperature | isotonic | none")
    parser.add_argument("--fault", action="append", default=None, metavar="NAME[:VALUE]",
                        help="inject a fault, e.g. --fault label_noise:0.2 (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set warmup_epochs=2 --set augment.jpeg_probability=0")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "dataset": args.dataset, "output_dir": args.output_dir, "model_name": args.model_name,
        "weights": args.weights, "epochs": args.epochs, "batch_size": args.batch_size,
        "input_size": args.input_size, "learning_rate": args.learning_rate, "device": args.device, "amp": args.amp,
        "calibration": args.calibration, "faults": args.fault,
    }
    for pair in args.set:
        key, separator, value = pair.partition("=")
        if not separator:
            parser.error(f"--set expects KEY=VALUE, got {pair!r}")
        # Merged, not updated: two `--set augment.X` must both survive (update kept only the last one).
        overrides = merge_settings(overrides, dotted_override(key.strip(), yaml.safe_load(value)))
    try:
        return load_config(args.config, overrides)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    result = train(parse_args(argv))
    if result is not None:
        print(f"best epoch {result.best_epoch}: val ROC AUC {result.best_metrics['roc_auc']:.4f}; "
              f"{result.final.summary_line()}; report: {result.report_path}")


if __name__ == "__main__":
    main()
