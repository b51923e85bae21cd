"""Inference over a labelled loader: the logits every metric, calibration fit and plot starts from."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.optim import MixedPrecision


def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, memory_format: torch.memory_format,
    precision: MixedPrecision,
) -> tuple[np.ndarray, np.ndarray]:
    """True labels [N] and float32 logits [N, 2] for every item of the loader, in loader order."""
    model.eval()
    labels, logits = [], []
    with torch.inference_mode(), precision.autocast(device):
        for inputs, targets in loader:
            logits.append(model(inputs.to(device, memory_format=memory_format)).float().cpu())
            labels.append(targets)
    return torch.cat(labels).numpy(), torch.cat(logits).numpy()
