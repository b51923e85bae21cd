"""Grad-CAM for the "fake" class, mapped back onto the pixels of the image the client sent.

A traced TorchScript model hides its activations, so export writes a twin of the served model,
model.explain.pt, whose forward(x) returns (logits, last feature map) (training/export.py). Grad-CAM
weighs each channel of that feature map by the mean gradient of the fake logit over it, keeps the positive
sum, and normalises it per region to 0..1: where in the region the evidence for "fake" sits, not how much of
it there is (the region's probability says that).

Each region is a face crop (with its margin) or the whole image, and the model saw it resized to its input size
without cropping (handler.forensics.resize_rgb), so a region's map is stretched back over exactly that box. The
maps are pasted into one heat map the shape of the image (long side at most 512 px; the higher value where regions
overlap), coloured with OpenCV's JET colormap, with an alpha that grows with the heat, and sent as a base64 PNG
ready to draw over the image at the same size. docs/EXPLANATIONS.md has the design and how to read the result.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from handler.faces import FaceBox, crop_box
from handler.forensics import ACCEPTED_FORMATS, EXIF_ORIENTATION_TAG, ImageDecodeError
from handler.metadata import EXPLAIN_FILENAME
from handler.request_body import ImageBytes
from handler.scoring import REGION_FACES, ScoredRegions
from handler.torchscript import load_torchscript, torchscript_deprecation_silenced
from handler.verdict import ItemScores
from handler.video import sniff_container

EXPLAIN_METHOD = "grad-cam"
EXPLAIN_TARGET = "fake"  # the only target: the heat says where the model saw evidence of manipulation
DEFAULT_LAYER = "forward_features"  # named when metadata.json (exported before the layer was recorded) has none


@dataclass(frozen=True)
class ExplainConfig:
    """How explanations are computed and drawn.

    Attributes:
        max_heatmap_side: the heat map's longer side in pixels (smaller images keep their own size): enough for
            an overlay in a browser, and a PNG of tens of kB instead of megabytes for a 40-Mpx photo.
        max_alpha: the overlay's opacity at the hottest pixel (0 heat is fully transparent), so the image stays
            visible under the colour.
        chunk_size: regions per forward and backward pass. Grad-CAM keeps every activation for the backward pass,
            so memory grows with the chunk; a batch of many images or faces is cut into chunks of this size.

    """

    max_heatmap_side: int = 512
    max_alpha: float = 0.6
    chunk_size: int = 32

    def __post_init__(self) -> None:
        if self.max_heatmap_side < 1 or not 0.0 < self.max_alpha <= 1.0 or self.chunk_size < 1:
            raise ValueError(f"invalid ExplainConfig {self}: max_heatmap_side and chunk_size must be at least 1, "
                             f"max_alpha in (0, 1]")


def load_explain_model(model_dir: Path, device: torch.device) -> torch.jit.ScriptModule | None:
    """model.explain.pt from the model folder, frozen, in fp32; None when the export has none.

    Frozen (torch.jit.freeze: weights become constants, BatchNorm folds into the convolutions) because the
    gradient is taken with respect to the feature map through an input that requires grad, never the weights.
    Measured on one CPU thread: the same maps (relative difference <= 4e-6) in less time, 20.0 -> 15.9 ms for
    EfficientNet-Lite0 at 128 px, 43.7 -> 33.1 ms at 224 px, 22.1 -> 21.1 ms for ResNet18 at 64 px. fp32 whatever
    the serving precision: gradients in fp16/bf16 are too coarse for a map. Not torch.jit.optimize_for_inference,
    whose rewrites target inference alone.
    """
    path = model_dir / EXPLAIN_FILENAME
    if not path.is_file():
        return None
    with torchscript_deprecation_silenced():
        return torch.jit.freeze(load_torchscript(path, device).float().eval())


def explanations_unavailable() -> ImageDecodeError:
    """The error of an explanation request to a model exported without model.explain.pt (501)."""
    return ImageDecodeError("explanations_unavailable", f"this model was exported without {EXPLAIN_FILENAME}, so it "
                            f"cannot explain its verdicts; /predictions still answers")


def refuse_video(image: ImageBytes) -> ImageDecodeError | None:
    """The error of an explanation request that sent a video (400 explanation_needs_image), else None."""
    container = sniff_container(image.data)
    if container is None:
        return None
    return ImageDecodeError("explanation_needs_image", f"explanations are for images; this is a {container} video",
                            image.field)


def raw_grad_cam(model: torch.jit.ScriptModule, batch: torch.Tensor, fake_index: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, classes] and unnormalised Grad-CAM maps [N, h, w] of the fake class for one batch.

    cam = relu(sum_c mean_hw(d fake_logit / d A_c) * A_c) over the channels c of the last feature map A. Each
    image's fake logit depends only on its own row (BatchNorm is in eval mode), so the gradient of the batch's
    sum gives every row its own gradient in one backward pass. Runs with autograd on even when the caller is
    inside torch.inference_mode or torch.no_grad.
    """
    with torch.inference_mode(False), torch.enable_grad():
        inputs = batch.detach().clone().requires_grad_(True)  # the weights need none; the graph needs a leaf
        logits, features = model(inputs)
        (gradients,) = torch.autograd.grad(logits[:, fake_index].sum(), features)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cams = torch.relu((weights * features).sum(dim=1))
    return logits.detach(), cams.detach()


def normalised(cams: np.ndarray) -> np.ndarray:
    """Each map [N, h, w] divided by its own maximum, so its hottest cell is 1; an all-zero map stays zero."""
    peaks = cams.reshape(len(cams), -1).max(axis=1) if cams.size else np.zeros(0, np.float32)
    scale = np.where(peaks > 0, peaks, 1.0).astype(np.float32)
    return (cams / scale[:, None, None]).astype(np.float32)


def grad_cam(model: torch.jit.ScriptModule, inputs: Sequence[torch.Tensor], fake_index: int, device: torch.device,
             chunk_size: int = ExplainConfig.chunk_size) -> np.ndarray:
    """Normalised Grad-CAM maps [N, h, w] (0..1, at the feature map's resolution) of model inputs [4, H, W].

    Raises:
        ValueError: no inputs.

    """
    if not inputs:
        raise ValueError("Grad-CAM needs at least one model input")
    maps = []
    for start in range(0, len(inputs), chunk_size):
        batch = torch.stack([tensor.float() for tensor in inputs[start:start + chunk_size]]).to(device)
        maps.append(raw_grad_cam(model, batch, fake_index)[1].float().cpu().numpy())
    return normalised(np.concatenate(maps))


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as shown (EXIF orientation applied), read from its header alone.

    The image a prediction decodes may be smaller (reduced JPEG decoding of whole images), but boxes and the heat
    map are given in the pixels of the file the client has.
    """
    with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
        width, height = image.size
        orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def region_boxes(scored: ScoredRegions, image_size: tuple[int, int], face_margin: float) -> list[FaceBox]:
    """The image pixels each model input was cut from: the face crop (margin included, as cut) or the whole image.

    Args:
        scored: the regions a prediction scored for this image.
        image_size: (width, height) of the upright image.
        face_margin: the crop margin the faces were cut with (FaceConfig.margin).

    """
    width, height = image_size
    if scored.scored == REGION_FACES:
        return [crop_box(box, (height, width), face_margin) for box in scored.boxes]
    return [FaceBox(0, 0, width, height)] * len(scored.inputs)


def heatmap_size(image_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) of the heat map: the image's aspect, the longer side at most `max_side`."""
    width, height = image_size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def paste_heat(cams: np.ndarray, boxes: Sequence[FaceBox], image_size: tuple[int, int],
               size: tuple[int, int]) -> np.ndarray:
    """One heat map [height, width] of `size` from per-region maps, each stretched over its box.

    Bilinear stretching, as the model's own resize maps the box onto its input; where regions overlap the hotter
    value wins, so one face's evidence is not diluted by a neighbour's margin.
    """
    width, height = size
    scale_x, scale_y = width / image_size[0], height / image_size[1]
    heat = np.zeros((height, width), np.float32)
    for cam, box in zip(cams, boxes, strict=True):
        left, top = round(box.x * scale_x), round(box.y * scale_y)
        right = max(left + 1, round((box.x + box.width) * scale_x))
        bottom = max(top + 1, round((box.y + box.height) * scale_y))
        right, bottom = min(right, width), min(bottom, height)
        if right <= left or bottom <= top:
            continue
        stretched = cv2.resize(cam.astype(np.float32), (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
        np.maximum(heat[top:bottom, left:right], stretched, out=heat[top:bottom, left:right])
    return np.clip(heat, 0.0, 1.0)


def heatmap_rgba(heat: np.ndarray, max_alpha: float = ExplainConfig.max_alpha) -> np.ndarray:
    """JET colours (blue = cold, red = hot) with alpha = max_alpha × heat: an overlay [h, w, 4] uint8."""
    levels = np.round(heat * 255.0).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    alpha = np.round(heat * (max_alpha * 255.0)).astype(np.uint8)
    return np.dstack([rgb, alpha])


def png_base64(rgba: np.ndarray) -> str:
    """An RGBA array as a base64 PNG (what a browser puts after "data:image/png;base64,")."""
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")  # optimize=True: 10 % smaller, 5x slower (measured)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation(cams: np.ndarray, boxes: Sequence[FaceBox], scores: Sequence[ItemScores],
                image_size: tuple[int, int], layer: str, config: ExplainConfig) -> dict[str, Any]:
    """The `explanation` field of one image's answer.

    Args:
        cams: normalised Grad-CAM maps [regions, h, w].
        boxes: the image pixels each region was cut from (region_boxes).
        scores: each region's probabilities of fake from the served model (the same as the prediction's).
        image_size: (width, height) of the upright image.
        layer: the module whose activations were weighed.
        config: heat-map size and opacity.

    """
    size = heatmap_size(image_size, config.max_heatmap_side)
    heat = paste_heat(cams, boxes, image_size, size)
    return {
        "method": EXPLAIN_METHOD,
        "target": EXPLAIN_TARGET,
        "layer": layer,
        "image_size": list(image_size),
        "heatmap_size": list(size),
        "heatmap_png": png_base64(heatmap_rgba(heat, config.max_alpha)),
        "regions": [{"box": box.to_list(), "probability_fake": round(score.calibrated, 6),
                     "grid": np.round(cam, 4).tolist()}
                    for box, score, cam in zip(boxes, scores, cams, strict=True)],
    }
