"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from real faces alone.

A face-swap pastes one face into another photo through a soft mask. Whatever the generator, the
paste leaves the same traces: a blending boundary around the face, a colour or sharpness mismatch
between inside and outside, and a slight misalignment. SBI makes exactly those traces without any
deepfake data: the face is blended with a slightly transformed copy of *itself* (colour, frequency,
scale/shift jitter) through a deformed, blurred face mask. A detector trained on real photos versus
their self-blends learns the traces rather than one generator's fingerprint, which is why SBI
generalises across manipulation methods better than training on one method's fakes.

The paper builds the mask from 81 facial landmarks (dlib). No landmark model ships offline here, so
the mask is an ellipse fitted inside the Haar face box (handler.faces), jittered in size and
position and elastically deformed; the blur, blend ratio and transforms follow the paper.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from handler.faces import FaceBox
from training.augment import convert_setting

# Blend ratios of the paper: a third of the pseudo-fakes are partially transparent pastes.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
# Longest side the paste mask is drawn at before it is enlarged to the image (see face_mask).
MASK_SIDE = 160


@dataclass(frozen=True)
class SbiConfig:
    """How pseudo-fakes are made. The `sbi:` section of a training recipe; exported in metadata.json.

    Attributes:
        enabled: train on real photos + their self-blends (the dataset may then hold real images only).
        fake_share: pseudo-fakes per real training image per epoch (1.0: one self-blend of every real image).
        color_shift: largest per-channel RGB offset (0..255 scale) of the transformed copy.
        hue_shift: largest hue rotation in degrees.
        saturation: largest relative saturation change.
        brightness_contrast: largest relative brightness and contrast change.
        downscale: (low, high) scale of the down-then-up resampling that blurs the copy (frequency mismatch);
            chosen with probability `downscale_probability`, otherwise the copy is sharpened.
        downscale_probability: share of copies blurred by resampling rather than sharpened.
        scale_jitter: largest relative scale change of the copy (0.05: between 0.95 and 1.05).
        shift_jitter: largest shift of the copy, as a share of the face box side.
        mask_width: (low, high) ellipse semi-axis across the face, as a share of the box width.
        mask_height: (low, high) ellipse semi-axis along the face, as a share of the box height.
        elastic_strength: largest displacement of the mask outline, as a share of the box side.
        mask_blur: (low, high) Gaussian sigma softening the mask edge, as a share of the box side.

    """

    enabled: bool = False
    fake_share: float = 1.0
    color_shift: float = 20.0
    hue_shift: float = 10.0
    saturation: float = 0.3
    brightness_contrast: float = 0.1
    downscale: tuple[float, float] = (0.25, 0.5)
    downscale_probability: float = 0.5
    scale_jitter: float = 0.05
    shift_jitter: float = 0.03
    mask_width: tuple[float, float] = (0.36, 0.48)
    mask_height: tuple[float, float] = (0.44, 0.56)
    elastic_strength: float = 0.04
    mask_blur: tuple[float, float] = (0.02, 0.08)

    def __post_init__(self) -> None:
        for name in ("downscale", "mask_width", "mask_height", "mask_blur"):
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))
        checks = {
            "fake_share": 0.0 < self.fake_share <= 4.0,
            "color_shift": 0.0 <= self.color_shift <= 128.0,
            "hue_shift": 0.0 <= self.hue_shift <= 90.0,
            "saturation": 0.0 <= self.saturation < 1.0,
            "brightness_contrast": 0.0 <= self.brightness_contrast < 1.0,
            "downscale": len(self.downscale) == 2 and 0.05 <= self.downscale[0] <= self.downscale[1] <= 1.0,
            "downscale_probability": 0.0 <= self.downscale_probability <= 1.0,
            "scale_jitter": 0.0 <= self.scale_jitter < 0.5,
            "shift_jitter": 0.0 <= self.shift_jitter < 0.5,
            "mask_width": len(self.mask_width) == 2 and 0.05 <= self.mask_width[0] <= self.mask_width[1] <= 1.0,
            "mask_height": len(self.mask_height) == 2 and 0.05 <= self.mask_height[0] <= self.mask_height[1] <= 1.0,
            "elastic_strength": 0.0 <= self.elastic_strength < 0.5,
            "mask_blur": len(self.mask_blur) == 2 and 0.0 <= self.mask_blur[0] <= self.mask_blur[1] < 0.5,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"sbi setting '{name}' is out of range: {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly form."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> SbiConfig:
        """Builds a config from YAML or ``--set`` strings; missing keys keep their defaults.

        Raises:
            ValueError: an unknown key (named, with the known ones) or a value that cannot be converted.

        """
        values = dict(values or {})
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = set(values) - set(defaults)
        if unknown:
            raise ValueError(f"unknown sbi setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
        converted = {}
        for name, value in values.items():
            try:
                converted[name] = convert_setting(value, defaults[name])
            except (TypeError, ValueError) as error:
                raise ValueError(f"sbi setting {name!r}: cannot use {value!r} ({error})") from error
        return cls(**converted)


def inner_face_box(crop_shape: tuple[int, ...], margin: float) -> FaceBox:
    """The detected face inside a crop cut by handler.faces.crop_face with `margin` (the crop's central square).

    A crop shifted at an image edge has its face off-centre by at most the margin; the paste region
    is an ellipse inside this box, so the error only moves the seam a little.
    """
    height, width = crop_shape[:2]
    side = min(height, width)
    face = max(1, round(side / (1.0 + 2.0 * margin)))
    return FaceBox((width - face) // 2, (height - face) // 2, face, face)


def rng_for(key: str, seed: int) -> np.random.Generator:
    """A generator fixed by (key, seed): the same file always gets the same pseudo-fake in val/test/evaluation."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def shift_colours(rgb: np.ndarray, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """RGB offset, hue/saturation change and brightness/contrast change: the colour mismatch of a paste.

    Each step is a per-value lookup table (cv2.LUT) on uint8 data: a tenth of the cost of the same
    arithmetic in float32 on a full-resolution crop.
    """
    values = np.arange(256, dtype=np.float64)
    offsets = rng.uniform(-config.color_shift, config.color_shift, size=3)
    image = cv2.LUT(rgb, _table(values[:, None] + offsets[None, :]).reshape(256, 1, 3))
    hue = rng.uniform(-config.hue_shift, config.hue_shift) / 2.0  # OpenCV hue runs 0..179
    saturation = 1.0 + rng.uniform(-config.saturation, config.saturation)
    if config.hue_shift or config.saturation:  # the uint8 HSV round trip itself changes pixels: skip it when idle
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hue_table = np.where(values < 180, np.mod(values + hue, 180.0), values)
        tables = np.stack([_table(hue_table), _table(values * saturation), _table(values)], axis=1)
        image = cv2.cvtColor(cv2.LUT(hsv, tables.reshape(256, 1, 3)), cv2.COLOR_HSV2RGB)
    contrast = 1.0 + rng.uniform(-config.brightness_contrast, config.brightness_contrast)
    brightness = 255.0 * rng.uniform(-config.brightness_contrast, config.brightness_contrast)
    mean = float(image.mean())
    return cv2.LUT(image, _table((values - mean) * contrast + mean + brightness))


def _table(values: np.ndarray) -> np.ndarray:
    """A uint8 lookup table from float values: rounded and clipped to 0..255."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def change_frequencies(rgb: np.ndarray, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """Blur by down-then-up resampling, or sharpen: the sharpness mismatch between a pasted face and its frame."""
    height, width = rgb.shape[:2]
    if rng.random() < config.downscale_probability:
        scale = _uniform(rng, config.downscale)
        small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    amount = float(rng.uniform(0.2, 0.6))
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigmaX=1.0)
    return cv2.addWeighted(rgb, 1.0 + amount, blurred, -amount, 0)


def jitter_geometry(rgb: np.ndarray, box: FaceBox, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """Scales the copy about the face centre and shifts it a little: the misalignment of a paste."""
    side = max(box.width, box.height)
    scale_x = 1.0 + rng.uniform(-config.scale_jitter, config.scale_jitter)
    scale_y = 1.0 + rng.uniform(-config.scale_jitter, config.scale_jitter)
    shift_x, shift_y = rng.uniform(-config.shift_jitter, config.shift_jitter, size=2) * side
    centre_x, centre_y = box.x + box.width / 2.0, box.y + box.height / 2.0
    matrix = np.array([[scale_x, 0.0, (1.0 - scale_x) * centre_x + shift_x],
                       [0.0, scale_y, (1.0 - scale_y) * centre_y + shift_y]], dtype=np.float64)
    height, width = rgb.shape[:2]
    return cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def face_mask(shape: tuple[int, ...], box: FaceBox, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """Soft paste mask, float32 [H, W] in [0, 1]: a jittered ellipse over the face, deformed, blurred, scaled.

    The Haar box spans brows to chin; the ellipse sits slightly below the box centre, where the
    landmark hull of the paper would be. The mask is drawn at most MASK_SIDE pixels wide and
    enlarged bilinearly: it is smooth by construction, and a full-resolution blur with a sigma of
    tens of pixels was most of the cost of a self-blend.
    """
    height, width = shape[:2]
    scale = min(1.0, MASK_SIDE / max(height, width))
    small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
    side = float(max(box.width, box.height)) * scale
    centre = ((box.x + box.width * rng.uniform(0.45, 0.55)) * scale,
              (box.y + box.height * rng.uniform(0.5, 0.56)) * scale)
    axes = (box.width * scale * _uniform(rng, config.mask_width),
            box.height * scale * _uniform(rng, config.mask_height))
    shift = 4  # cv2.ellipse takes fixed-point coordinates: sub-pixel outlines at the small scale
    mask = np.zeros((small_h, small_w), dtype=np.uint8)
    cv2.ellipse(mask, (round(centre[0] * 2**shift), round(centre[1] * 2**shift)),
                (max(1, round(axes[0] * 2**shift)), max(1, round(axes[1] * 2**shift))),
                float(rng.uniform(-10, 10)), 0, 360, 255, thickness=-1, lineType=cv2.LINE_AA, shift=shift)
    mask = mask.astype(np.float32) / 255.0
    if config.elastic_strength > 0:
        mask = _elastic(mask, config.elastic_strength * side, rng)
    sigma = _uniform(rng, config.mask_blur) * side
    if sigma > 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma)
    if scale < 1.0:
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(mask * float(rng.choice(BLEND_RATIOS)), 0.0, 1.0)


def _elastic(mask: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Moves the mask outline by a smooth random field (a 5×5 grid of offsets, upsampled)."""
    height, width = mask.shape
    offsets = rng.uniform(-strength, strength, size=(2, 5, 5)).astype(np.float32)
    dx = cv2.resize(offsets[0], (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(offsets[1], (width, height), interpolation=cv2.INTER_CUBIC)
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(mask, grid_x + dx, grid_y + dy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def self_blend(rgb: np.ndarray, box: FaceBox, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """A pseudo-fake of `rgb` (uint8 [H, W, 3]): the face in `box` blended with a transformed copy of itself.

    As in the paper, either the pasted copy or the frame it is pasted into receives the colour and
    frequency change (so the detector cannot just look for one direction of mismatch); the copy
    always receives the geometric jitter.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"self_blend needs a uint8 RGB array [H, W, 3], got {rgb.dtype} {rgb.shape}")
    source, target = rgb, rgb
    appearance = change_frequencies(shift_colours(rgb, config, rng), config, rng)
    if rng.random() < 0.5:
        source = appearance
    else:
        target = appearance
    source = jitter_geometry(source, box, config, rng)
    mask = face_mask(rgb.shape, box, config, rng)
    # OpenCV's per-pixel weighted blend of uint8 images: source × mask + target × (1 − mask), rounded.
    return cv2.blendLinear(np.ascontiguousarray(source), np.ascontiguousarray(target), mask, 1.0 - mask)

