"""Training-time augmentation of the decoded RGB image, before the Laplacian channel is computed.

The augmenter sits between decoding and :func:`handler.forensics.model_input_from_rgb`, so every op
also shapes the edge channel. That puts the forensic evidence first: ops that invent edges a served
image never has (black rotation corners) or erase the evidence (strong blur, heavy crops that cut off
the blending seam at the face border) are avoided or kept mild.

Order: geometric (crop → flip → rotation) → photometric (white-balance cast, colour jitter) → degradations
(down-up resampling → blur → JPEG).
This is the order in which an uploaded face photo is made: framed, colour-edited, softened by optics
or resampling, and compressed last. JPEG must come last so its block artefacts reach the Laplacian
channel unaltered, as in a served JPEG; a later rotation or blur would smooth them away. Working at
the output size after the crop also bounds the cost of blur and JPEG by the model's input size
rather than the source image's.

Speed: torchvision.transforms.v2 on uint8 tensors takes ~5 ms per 160 px image for this pipeline
(hue jitter alone ~2 ms, rotation ~0.8 ms on one thread, and much worse with intra-op threads at this
size), against a budget of ~2 ms per image on the 2-core training machine. The ops are therefore done
with OpenCV on the HWC array, following torchvision's parameter semantics (RandomResizedCrop scale
and ratio, ColorJitter factors, GaussianBlur sigma, JPEG quality), and fused where possible: crop,
resize, flip and rotation are one resize and at most one warp; the four colour jitters are one 3×4
colour matrix. The default pipeline measures ~0.55 ms per 160 px → 128 px image with torch and
OpenCV on one thread, ~0.75 ms with their default two threads.

Randomness: every random number comes from one ``torch.rand`` call per image, so the DataLoader's
per-worker seeding applies, ``torch.manual_seed`` makes a run reproducible, and each image consumes
the same number of draws whatever ops fire.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from handler.forensics import resize_rgb

# Positions in the per-image vector of uniform draws.
_CROP_SCALE, _CROP_RATIO, _CROP_X, _CROP_Y, _FLIP, _ROTATE, _ANGLE = range(7)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(7, 11)
_JITTER_ORDER = slice(11, 15)
_BLUR, _SIGMA, _JPEG, _QUALITY = range(15, 19)
_BASE_DRAW_COUNT = 19
# Drawn only when a run turns the white-balance cast or resampling on, so a run without them consumes exactly the
# random numbers it did before these ops existed and reproduces its model.
_CAST, _WARMTH, _TINT = range(19, 22)
_RESAMPLE, _RESAMPLE_SCALE = range(22, 24)
_DRAW_COUNT = 24

# Luma weights torchvision's ColorJitter uses for contrast and saturation.
_GREY_WEIGHTS = np.array([0.2989, 0.587, 0.114])
# Hue turns about the neutral axis: rotating colours there leaves greys grey and keeps R+G+B per pixel.
_NEUTRAL_AXIS = np.ones(3) / math.sqrt(3.0)
_NEUTRAL_CROSS = np.array(
    [[0.0, -_NEUTRAL_AXIS[2], _NEUTRAL_AXIS[1]],
     [_NEUTRAL_AXIS[2], 0.0, -_NEUTRAL_AXIS[0]],
     [-_NEUTRAL_AXIS[1], _NEUTRAL_AXIS[0], 0.0]]
)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a training run applies, and how strongly. Any op is off at probability or strength 0.

    The defaults are mild on purpose: the detector reads blending seams, resampling and noise
    statistics, and strong augmentation destroys exactly those.

    Attributes:
        enabled: False makes the augmenter the identity (validation, test and calibration always are).
        horizontal_flip_probability: faces are near-symmetric and forgery artefacts have no handedness.
        rotation_degrees: maximum in-plane rotation either way; aligned face crops rarely roll more than ~10°.
        rotation_probability: share of images rotated. Rotation resamples with bilinear interpolation, a
            slight low-pass; leaving half the images unrotated keeps the model seeing un-resampled pixels.
        crop_scale: RandomResizedCrop area range, as a fraction of the image. Kept ≥ 0.8 so the crop
            cannot cut off the face border, where swap blending seams are.
        crop_ratio: range of the crop's aspect ratio *relative to the image's own* (torchvision uses an
            absolute w/h). A crop of scale 1 and ratio 1 is then exactly the serving path's resize of the
            whole image, whatever its shape, and the sampling never has to fall back.
        brightness: ColorJitter brightness; the factor is drawn from [1 - b, 1 + b].
        contrast: ColorJitter contrast; the factor is drawn from [1 - c, 1 + c].
        saturation: ColorJitter saturation; the factor is drawn from [1 - s, 1 + s].
        hue: ColorJitter hue, as a fraction of a full turn drawn from [-h, h], applied as a rotation about
            the neutral axis. A global shift keeps the local colour mismatch between a pasted face and its
            surroundings, which is evidence; only mild values are realistic.
        colour_cast_probability: share of images given a white-balance cast, as another camera or light would.
        colour_cast: largest cast, as a natural-log gain: the warm/cool axis multiplies red by e^t and blue by
            e^-t with t drawn from [-c, c], and a green/magenta tint multiplies green by e^g, g from [-c/2, c/2].
            Measured (docs/EVALUATION.md): a model trained without it calls 90-100 % of real studio photos fake
            under a mild warm cast (R x1.15, B x0.8, t ≈ 0.18). The cast covers the whole image, self-blends
            included (they are made before augmentation), so a global cast carries no label and only the local
            colour disagreement of a blend does.
        resample_probability: share of images shrunk and enlarged back, as a small or upscaled source photo is.
        resample_scale: (low, high) range of the shrink factor (area averaging), then bilinear enlargement back.
            Measured (docs/EVALUATION.md): a model trained without it learns that a soft face is a blend (the
            self-blend's copy is often resampled), and calls real portraits from a smaller camera or upload fake
            when they are halved in size.
        blur_probability: share of images given a Gaussian blur (soft focus, earlier resampling).
        blur_sigma: blur standard deviation range in output pixels; past ~1.5 the edge evidence is gone.
        jpeg_probability: share of images re-compressed as JPEG, as sharing sites do.
        jpeg_quality: JPEG quality range (inclusive), drawn uniformly; below ~40 the artefacts dominate.

    """

    enabled: bool = True
    horizontal_flip_probability: float = 0.5
    rotation_degrees: float = 10.0
    rotation_probability: float = 0.5
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.02
    colour_cast_probability: float = 0.0
    colour_cast: float = 0.0
    resample_probability: float = 0.0
    resample_scale: tuple[float, float] = (0.3, 0.9)
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)

    def __post_init__(self) -> None:
        for name in ("horizontal_flip_probability", "rotation_probability", "blur_probability", "jpeg_probability",
                     "colour_cast_probability", "resample_probability"):
            _check(name, 0 <= getattr(self, name) <= 1, "a probability in [0, 1]")
        for name in ("rotation_degrees", "brightness", "contrast", "saturation"):
            _check(name, getattr(self, name) >= 0, "0 or more")
        _check("rotation_degrees", self.rotation_degrees <= 180, "at most 180")
        _check("hue", 0 <= self.hue <= 0.5, "in [0, 0.5] (a fraction of a full turn)")
        _check("colour_cast", 0 <= self.colour_cast <= 1, "in [0, 1] (a natural-log gain)")
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "jpeg_quality", "resample_scale"):
            value = getattr(self, name)
            _check(name, len(value) == 2 and value[0] <= value[1], "a range [low, high] with low <= high")
        _check("crop_scale", 0 < self.crop_scale[0] and self.crop_scale[1] <= 1, "within (0, 1]")
        _check("crop_ratio", self.crop_ratio[0] > 0, "positive")
        _check("blur_sigma", self.blur_sigma[0] >= 0, "0 or more")
        _check("resample_scale", 0 < self.resample_scale[0] and self.resample_scale[1] <= 1, "within (0, 1]")
        _check("jpeg_quality", 1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100, "within [1, 100]")

    def to_dict(self) -> dict[str, Any]:
        """YAML/JSON-friendly form; :meth:`from_dict` of it gives the same config back."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        """Builds a config from YAML or ``--set`` values; missing keys keep their defaults.

        Values are converted to the field's type ("0.3" → 0.3, "40,95" or [40, 95] → (40, 95)), since
        command-line overrides arrive as strings.

        Raises:
            ValueError: an unknown key (a typo must not silently leave an augmentation at its default),
                or a value that cannot be converted or is out of range, naming the key.

        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown augment setting(s) {unknown}; known: {sorted(fields)}")
        converted = {}
        for name, value in values.items():
            try:
                converted[name] = convert_setting(value, fields[name].default)
            except (TypeError, ValueError) as error:
                raise ValueError(f"augment setting {name!r}: cannot use {value!r} ({error})") from error
        return cls(**converted)


def _check(name: str, valid: bool, requirement: str) -> None:
    if not valid:
        raise ValueError(f"augment setting {name!r} must be {requirement}")


def convert_setting(value: Any, default: Any) -> Any:
    """A YAML or ``--set`` value converted to the type of the setting's default ("0.3" → 0.3, "40,95" → (40, 95))."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError("expected true or false")
        return text in ("1", "true", "yes", "on")
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(items) != len(default):
            raise ValueError(f"expected {len(default)} numbers")
        return tuple(convert_setting(item, element) for item, element in zip(items, default, strict=True))
    if isinstance(default, int):
        number = float(value)
        if not number.is_integer():
            raise ValueError("expected a whole number")
        return int(number)
    return float(value)


def identity_rgb(rgb: np.ndarray) -> np.ndarray:
    """The augmenter of a disabled config; a module-level function so DataLoader workers can pickle it."""
    return rgb


@dataclass(frozen=True)
class RgbAugmenter:
    """Random augmentation of one decoded RGB image, ``uint8 [H, W, 3] → uint8 [out_h, out_w, 3]``.

    A frozen dataclass rather than a closure so that it pickles into spawned DataLoader workers.

    Attributes:
        config: which ops run and how strongly.
        output_size: (height, width) of the result, normally the model input size, so the resize in
            preprocessing is a no-op; None keeps each input's size.

    """

    config: AugmentConfig
    output_size: tuple[int, int] | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Augments one image; the result is C-contiguous and may share memory with the input when no op fired.

        Raises:
            ValueError: the input is not a uint8 [H, W, 3] array.

        """
        return self.with_map(rgb)[0]

    def with_map(self, rgb: np.ndarray, blend_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Augments one image and moves `blend_map` (float [H, W] in [0, 1]) through the same geometry.

        The crop, flip and rotation apply to the map too, so a map of where a blend is stays on the blend
        (training.blend_map); colour, resampling, blur and JPEG leave where it is unchanged. The image and the random
        draws are exactly those of ``__call__``.

        Raises:
            ValueError: the input is not a uint8 [H, W, 3] array, or the map's size is not the image's.

        """
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
            raise ValueError(f"augmentation needs an RGB uint8 array [H, W, 3], got {rgb.dtype} {rgb.shape}")
        config = self.config
        extra = config.colour_cast_probability > 0 or config.resample_probability > 0
        if blend_map is not None and blend_map.shape != rgb.shape[:2]:
            raise ValueError(f"blend map {blend_map.shape} does not match the image {rgb.shape[:2]}")
        draws = torch.rand(_DRAW_COUNT if extra else _BASE_DRAW_COUNT, dtype=torch.float64).tolist()
        image = self._geometric(np.ascontiguousarray(rgb), draws)
        if blend_map is not None:
            # The same geometry on a grey image of the map: one code path, so the two cannot drift apart.
            grey = np.rint(np.clip(blend_map, 0.0, 1.0) * 255.0).astype(np.uint8)
            moved = self._geometric(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), draws)
            blend_map = moved[:, :, 0].astype(np.float32) / 255.0
        image = self._colour_jitter(image, draws)
        if config.resample_probability and draws[_RESAMPLE] < config.resample_probability:
            low, high = config.resample_scale
            image = down_up(image, low + (high - low) * draws[_RESAMPLE_SCALE])
        if draws[_BLUR] < config.blur_probability:
            low, high = config.blur_sigma
            sigma = low + (high - low) * draws[_SIGMA]
            if sigma > 0:
                image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        if draws[_JPEG] < config.jpeg_probability:
            low, high = config.jpeg_quality
            image = recompress_jpeg(image, min(high, low + int(draws[_QUALITY] * (high - low + 1))))
        return np.ascontiguousarray(image), blend_map

    def _geometric(self, rgb: np.ndarray, draws: list[float]) -> np.ndarray:
        """RandomResizedCrop → horizontal flip → rotation, with one resize and at most one warp.

        Without rotation the crop is resized with the serving path's own :func:`resize_rgb`, so crop
        scale 1 reproduces served inputs exactly. With rotation the source is first resized (again by
        :func:`resize_rgb`, INTER_AREA when shrinking) to the crop's output scale, and a single bilinear
        warp then rotates, flips and crops it. The rotated crop takes real pixels from around the crop
        where the image has them; only what falls outside the image is filled by reflection
        (BORDER_REFLECT_101). Black corners, torchvision's only fill, would be step edges the Laplacian
        channel lights up on, and that no served image has; rotating then cropping inside to avoid
        corners would instead zoom every rotated image by up to 1.16× more than the crop asked for.
        """
        config = self.config
        height, width = rgb.shape[:2]
        out_h, out_w = self.output_size or (height, width)
        x0, y0, crop_w, crop_h = _crop_box(height, width, config.crop_scale, config.crop_ratio, draws)
        flip = draws[_FLIP] < config.horizontal_flip_probability
        angle = 0.0
        if draws[_ROTATE] < config.rotation_probability:
            angle = (2.0 * draws[_ANGLE] - 1.0) * config.rotation_degrees
        if angle == 0.0:
            image = resize_rgb(rgb[y0:y0 + crop_h, x0:x0 + crop_w], (out_h, out_w))
            return cv2.flip(image, 1) if flip else image

        source = rgb
        centre_x, centre_y, box_w, box_h = x0 + crop_w / 2, y0 + crop_h / 2, float(crop_w), float(crop_h)
        if crop_w * crop_h > out_w * out_h:
            scaled_w, scaled_h = max(1, round(width * out_w / crop_w)), max(1, round(height * out_h / crop_h))
            source = resize_rgb(rgb, (scaled_h, scaled_w))
            fx, fy = scaled_w / width, scaled_h / height
            centre_x, centre_y, box_w, box_h = centre_x * fx, centre_y * fy, box_w * fx, box_h * fy
        radians = math.radians(angle)
        rotation = np.array([[math.cos(radians), -math.sin(radians)], [math.sin(radians), math.cos(radians)]])
        mirror = np.diag([-1.0 if flip else 1.0, 1.0])
        # Output pixel index → source pixel index, about the pixel centres: src = centre + S⁻¹·F·R·(dst - mid).
        linear = np.diag([box_w / out_w, box_h / out_h]) @ mirror @ rotation
        output_mid = np.array([(out_w - 1) / 2, (out_h - 1) / 2])
        offset = np.array([centre_x - 0.5, centre_y - 0.5]) - linear @ output_mid
        matrix = np.hstack([linear, offset[:, None]])
        return cv2.warpAffine(source, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT_101)

    def _colour_jitter(self, image: np.ndarray, draws: list[float]) -> np.ndarray:
        """White-balance cast, then ColorJitter, as one 3×4 colour matrix: brightness, contrast, saturation, hue.

        The cast comes first because a camera sets it before any editing; its gains start the matrix.

        All four are affine in RGB (contrast's grey mean is linear in the image, so it follows from the
        input's mean through the ops before it), which makes the whole jitter one ``cv2.transform``
        pass, and brightness, contrast and saturation match torchvision's to ±1 level. Unlike torchvision,
        intermediate values are not clipped, and hue turns colours about the neutral axis instead of
        shifting HSV hue: not the same pixels, but a change of the same size (mean 4.2 vs 3.5 levels at
        hue 0.02) that also leaves greys grey, at ~1 % of the cost of torchvision's HSV round trip.
        """
        config = self.config
        strengths = (config.brightness, config.contrast, config.saturation, config.hue)
        cast = config.colour_cast and config.colour_cast_probability and draws[_CAST] < config.colour_cast_probability
        if not any(strengths) and not cast:
            return image
        linear, offset = np.eye(3), np.zeros(3)
        if cast:
            warmth = (2 * draws[_WARMTH] - 1) * config.colour_cast
            tint = (draws[_TINT] - 0.5) * config.colour_cast
            linear = np.diag(np.exp([warmth, tint, -warmth]))
        mean_rgb = np.array(cv2.mean(image)[:3]) if config.contrast else None
        for op in np.argsort(draws[_JITTER_ORDER], kind="stable"):
            if op == 3:
                if config.hue:
                    turn = 2 * math.pi * config.hue * (2 * draws[_HUE] - 1)
                    step = (math.cos(turn) * np.eye(3) + math.sin(turn) * _NEUTRAL_CROSS
                            + (1 - math.cos(turn)) * np.outer(_NEUTRAL_AXIS, _NEUTRAL_AXIS))
                    linear, offset = step @ linear, step @ offset
                continue
            strength = strengths[op]
            if not strength:
                continue
            factor = max(0.0, 1 - strength) + (1 + strength - max(0.0, 1 - strength)) * draws[_BRIGHTNESS + op]
            if op == 0:
                linear, offset = factor * linear, factor * offset
            elif op == 1:
                grey_mean = _GREY_WEIGHTS @ (linear @ mean_rgb + offset)
                linear, offset = factor * linear, factor * offset + (1 - factor) * grey_mean
            else:
                step = factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), _GREY_WEIGHTS)
                linear, offset = step @ linear, step @ offset
        return cv2.transform(image, np.hstack([linear, offset[:, None]]))


def _crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], draws: list[float]
) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of a RandomResizedCrop whose aspect ratio is relative to the image's.

    Sides that would exceed the image are clipped to it instead of redrawing, so the draw count is
    fixed; clipping only happens when scale × ratio > 1 and then keeps at least 1 / ratio[1] of the area.
    """
    area = scale[0] + (scale[1] - scale[0]) * draws[_CROP_SCALE]
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = math.exp(log_low + (log_high - log_low) * draws[_CROP_RATIO])
    crop_w = min(width, max(1, round(width * math.sqrt(area * aspect))))
    crop_h = min(height, max(1, round(height * math.sqrt(area / aspect))))
    x0 = min(width - crop_w, int(draws[_CROP_X] * (width - crop_w + 1)))
    y0 = min(height - crop_h, int(draws[_CROP_Y] * (height - crop_h + 1)))
    return x0, y0, crop_w, crop_h


def down_up(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Shrinks by `scale` with area averaging and enlarges back bilinearly: the look of a lower-resolution source."""
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def recompress_jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encodes and decodes as JPEG (4:2:0), the degradation a shared photo goes through.

    OpenCV is ~20 % faster than torchvision.io here. It expects BGR, and the channel order matters:
    JPEG splits luma from chroma and subsamples the chroma, so RGB passed as BGR would be degraded wrongly.
    """
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode a {rgb.shape} image")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def build_augmenter(
    config: AugmentConfig, output_size: tuple[int, int] | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The augmenter for a training dataset: :class:`RgbAugmenter`, or :func:`identity_rgb` when disabled.

    Args:
        config: the run's augmentation settings.
        output_size: (height, width) of the model input, so crops are resized once, straight to it;
            None keeps each image's size. Ignored when the config is disabled.

    """
    if not config.enabled:
        return identity_rgb
    if output_size is not None:
        output_size = (int(output_size[0]), int(output_size[1]))
        if min(output_size) < 1:
            raise ValueError(f"output_size must be (height, width) of at least 1 pixel, got {output_size}")
    return RgbAugmenter(config, output_size)
