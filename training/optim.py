"""Optimiser, learning-rate schedule and mixed-precision settings for a training run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW: Adam's adaptive steps with decoupled weight decay, the usual choice for fine-tuning CNNs."""
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up to the peak rate, then cosine decay to 1 % of it, stepped once per batch.

    Warm-up keeps the first updates of a pretrained backbone (and of the freshly initialised
    Laplacian filters and head) small, before Adam's moment estimates have settled.
    """
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=config.learning_rate * 0.01
    )
    if warmup_steps <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


@dataclass(frozen=True)
class MixedPrecision:
    """The autocast dtype (None: fp32) and whether fp16 needs loss scaling."""

    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        """'bf16', 'fp16' or 'off', for the report."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "off")

    def autocast(self, device: torch.device) -> torch.autocast:
        """The autocast context for forward passes (disabled when dtype is None)."""
        return torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """fp16's limited range needs a loss scaler; bf16 and fp32 get a pass-through one."""
        return torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)


def resolve_mixed_precision(mode: str, device: torch.device) -> MixedPrecision:
    """'auto' → bf16 on CUDA GPUs that support it (Ampere and later), else fp16 on CUDA; off on CPU/MPS.

    Raises:
        ValueError: fp16 asked for on a device without CUDA (CPU autocast has no float16 path worth using).

    """
    if mode == "off":
        return MixedPrecision(None)
    if mode == "auto":
        if device.type != "cuda":
            return MixedPrecision(None)
        return MixedPrecision(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if mode == "fp16" and device.type != "cuda":
        raise ValueError(f"amp=fp16 needs a CUDA device, training runs on {device}; use bf16 or off")
    return MixedPrecision(torch.bfloat16 if mode == "bf16" else torch.float16)
