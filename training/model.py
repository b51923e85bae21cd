"""Detector construction: any timm backbone with a 4-channel (RGB + Laplacian) stem and two logits."""

from __future__ import annotations

import timm
import torch
from torch import nn

from training.weights import load_weights

IN_CHANNELS = 4
NUM_CLASSES = 2


def create_detector(model_name: str, weights: str = "none") -> nn.Module:
    """Builds timm's `model_name` with in_chans=4 and num_classes=2, initialised from `weights`.

    Args:
        model_name: any timm model name.
        weights: a `training.weights.WEIGHT_SOURCES` name ("none", "timm", "offline") or a path to a state dict /
            checkpoint. ImageNet weights keep their RGB stem filters, get a Kaiming-initialised Laplacian channel
            and a fresh 2-class head (see `training.weights.fit_state_dict`).

    Raises:
        ValueError: timm has no model of that name (the message suggests close names), or the weights do not fit.
        FileNotFoundError: `weights` is neither a source name nor an existing file.
        RuntimeError: weights="timm" could not download.

    """
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:10]
        raise ValueError(f"unknown timm model '{model_name}'; similar names: {close}")
    model = timm.create_model(model_name, pretrained=False, in_chans=IN_CHANNELS, num_classes=NUM_CLASSES)
    load_weights(model, model_name, weights)
    return model


def pick_device(requested: str) -> torch.device:
    """'auto' → CUDA if present, else Apple MPS, else CPU; anything else is taken as given."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
