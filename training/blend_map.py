"""An auxiliary objective on the blend itself: locate where a self-blend was pasted, from the backbone's features.

Why: a classifier trained on self-blends alone learns whatever tells the training sources' blends from their reals,
and docs/EVALUATION.md measured what that was: colour, framing, resolution, none of which a real face swap must
share. Asking the same features to map the blend (Face X-ray's blending boundary 4·M·(1−M), or the pasted region M)
ties them to the local evidence every pasted face leaves. The map head is used in training only: the export keeps the
classifier alone, so the handler, the .mar and every serving figure are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BLEND_MAP_TARGETS = ("boundary", "region")


def blend_map_target(mask: np.ndarray, target: str) -> np.ndarray:
    """The map a blend's features should predict, float32 [H, W] in [0, 1] (all zeros for an unblended image).

    The mask is first scaled to peak 1: the self-blend multiplies it by a random blend ratio, which says how strongly
    the copy shows, not where the blend is.

    Args:
        mask: the blend mask (training.sbi.self_blend_with_mask), float [H, W] in [0, 1].
        target: "boundary" (4·M·(1−M), high where the copy and the frame mix) or "region" (M).

    """
    if target not in BLEND_MAP_TARGETS:
        raise ValueError(f"blend_map_target must be one of {list(BLEND_MAP_TARGETS)}, got {target!r}")
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0.0:
        return np.zeros(mask.shape, dtype=np.float32)
    region = np.clip(mask.astype(np.float32) / peak, 0.0, 1.0)
    return region if target == "region" else 4.0 * region * (1.0 - region)


class DetectorWithBlendMap(nn.Module):
    """The detector plus a 1×1-convolution head on its last feature map; forward returns (logits, map logits).

    The detector's own forward is forward_head(forward_features(x)) in timm, so the logits are exactly the exported
    model's; the map logits are [B, h, w] at the feature map's resolution (input / 32 for the supported backbones).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.blend_map_head = nn.Conv2d(detector.num_features, 1, kernel_size=1)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits [B, 2] and blend-map logits [B, h, w]."""
        features = self.detector.forward_features(inputs)
        return self.detector.forward_head(features), self.blend_map_head(features)[:, 0]


def blend_map_loss(map_logits: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the map logits against the target maps averaged down to their resolution.

    Args:
        map_logits: [B, h, w] from DetectorWithBlendMap.
        maps: [B, H, W] targets at the model input's resolution (zeros for real images).

    """
    targets = F.adaptive_avg_pool2d(maps.unsqueeze(1).float(), map_logits.shape[-2:])[:, 0]
    return F.binary_cross_entropy_with_logits(map_logits.float(), targets)
