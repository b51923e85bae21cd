"""Training throughput: the real pipeline (decode → augment → Laplacian → batch → step) against a bare loop.

The bare loop feeds the same model, loss, optimiser and batch size with tensors that are already
in memory, so it is the ceiling the data pipeline can only approach. The pipeline passes when it
reaches at least 85 % of it, i.e. the data path is not the bottleneck.

Usage:
    python -m benchmarks.train_throughput [--model-name resnet18] [--batch-size 32] [--input-size 128]
        [--steps 12] [--num-workers 0] [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from handler.forensics import PreprocessConfig
from training.augment import AugmentConfig, build_augmenter
from training.config import TrainConfig
from training.dataset import FaceImageDataset, scan_dataset
from training.demo_data import DemoDataConfig, write_demo_dataset
from training.faults import FaultPlan, StepSkipper
from training.model import create_detector, pick_device
from training.optim import build_optimizer, build_scheduler, resolve_mixed_precision
from training.train import TrainingLoop, train_one_epoch

PASS_RATIO = 0.85


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure."""

    model_name: str = "resnet18"
    batch_size: int = 32
    input_size: int = 128
    steps: int = 12
    warmup_steps: int = 2
    repeats: int = 3  # bare and pipeline alternate, so drift in machine load hits both; medians are reported
    num_workers: int = 0
    device: str = "auto"
    amp: str = "auto"
    image_size: int = 160  # the demo images' side: decode + resize work like the demo's


def _training_loop(config: BenchmarkConfig, loader: Iterable, steps_per_epoch: int) -> TrainingLoop:
    train_config = TrainConfig(dataset=Path("."), output_dir=Path("."), model_name=config.model_name,
                               batch_size=config.batch_size, input_size=config.input_size, amp=config.amp)
    device = pick_device(config.device)
    torch.manual_seed(0)
    model = create_detector(config.model_name).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_config)
    return TrainingLoop(
        model, loader, nn.CrossEntropyLoss(weight=torch.tensor(train_config.class_weights, device=device)),
        optimizer, build_scheduler(optimizer, train_config, steps_per_epoch),
        resolve_mixed_precision(config.amp, device), device, torch.channels_last, FaultPlan(),
        StepSkipper(FaultPlan(), 0), train_config.grad_clip_norm,
    )


def bare_loop_images_per_s(config: BenchmarkConfig) -> float:
    """Forward → loss → backward → optimiser step on one in-memory batch, nothing else: the ceiling.

    No DataLoader, progress bar, gradient clipping, scheduler or per-step loss sync, so the ratio
    exposes the cost of the whole training loop around the model, not only of data loading.
    """
    loop = _training_loop(config, [], 1)
    inputs = torch.randn(config.batch_size, 4, config.input_size, config.input_size)
    inputs = inputs.to(loop.device, memory_format=loop.memory_format)
    targets = (torch.arange(config.batch_size) % 2).to(loop.device)
    loop.model.train()

    def step() -> None:
        with loop.precision.autocast(loop.device):
            logits = loop.model(inputs)
        loss = loop.loss_fn(logits.float(), targets)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()

    for _ in range(config.warmup_steps):
        step()
    _synchronize(loop.device)
    started = time.perf_counter()
    for _ in range(config.steps):
        step()
    _synchronize(loop.device)
    return config.steps * config.batch_size / (time.perf_counter() - started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_images_per_s(config: BenchmarkConfig, data_dir: Path) -> float:
    """The training DataLoader exactly as training/train.py builds it (default augmentation on)."""
    preprocess = PreprocessConfig(input_size=(config.input_size, config.input_size))
    samples = scan_dataset(data_dir).samples
    dataset = FaceImageDataset(samples, preprocess, augment=build_augmenter(AugmentConfig(), preprocess.input_size))
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                        drop_last=True, persistent_workers=config.num_workers > 0,
                        generator=torch.Generator().manual_seed(0))
    loop = _training_loop(config, loader, len(loader))
    warm = DataLoader(dataset, batch_size=config.batch_size, num_workers=0,
                      sampler=range(config.warmup_steps * config.batch_size))
    loop.loader = warm
    train_one_epoch(loop, "pipeline warm-up")
    loop.loader = loader
    return train_one_epoch(loop, "pipeline")["train_images_per_s"]


def run(config: BenchmarkConfig) -> dict:
    """Measures both loops `repeats` times, alternating, and returns the report with medians."""
    bare, pipeline = [], []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        data_dir = Path(folder)
        per_class = config.steps * config.batch_size // 2
        write_demo_dataset(data_dir, DemoDataConfig(count=per_class, image_size=config.image_size, seed=5))
        for _ in range(config.repeats):
            bare.append(bare_loop_images_per_s(config))
            pipeline.append(pipeline_images_per_s(config, data_dir))
    ratio = statistics.median(pipeline) / statistics.median(bare)
    return {
        "benchmark": "train_throughput",
        "config": config.__dict__,
        "bare_loop_images_per_s": round(statistics.median(bare), 2),
        "pipeline_images_per_s": round(statistics.median(pipeline), 2),
        "bare_loop_runs": [round(value, 2) for value in bare],
        "pipeline_runs": [round(value, 2) for value in pipeline],
        "ratio": round(ratio, 4),
        "pass_ratio": PASS_RATIO,
        "passed": ratio >= PASS_RATIO,
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "device": str(pick_device(config.device)),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; exits 1 when the pipeline is the bottleneck."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = BenchmarkConfig()
    for name, value in defaults.__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, help="report JSON (default: benchmarks/results/)")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    config = BenchmarkConfig(**args)
    out = out or Path(f"benchmarks/results/train_throughput_{config.model_name}_{config.input_size}px.json")
    report = run(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bare loop {report['bare_loop_images_per_s']:.1f} img/s, pipeline {report['pipeline_images_per_s']:.1f} "
          f"img/s: {100 * report['ratio']:.1f} % (target ≥ {100 * PASS_RATIO:.0f} %) → {out}")
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
