"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from real faces alone.

A face-swap pastes one face into another photo through a soft mask. Whatever the generator, the
paste leaves the same traces: a blending boundary around the face, a colour or sharpness mismatch
between inside and outside, and a slight misalignment. SBI makes exactly those traces without any
deepfake data: the face is blended with a slightly transformed copy of *itself* (colour, frequency,
scale/shift jitter) through a deformed, blurred face mask. A detector trained on real photos versus
their self-blends learns the traces rather than one generator's fingerprint, which is why SBI
generalises across manipulation methods better than training on one method's fakes.

The paste mask is chosen by name (`sbi.mask`, :data:`MASK_MAKERS`):

- ``ellipse``: an ellipse fitted inside the Haar face box (handler.faces), jittered in size and position
  and elastically deformed. Needs no landmarks; the original recipe of this project.
- ``landmarks``: the paper's mask. Its code fills the convex hull of 81 landmarks (dlib's 68 plus 13 on
  the forehead), or one of three reduced hulls of the 68 (Face X-ray's variants, picked at random), moves
  it with the pasted copy, deforms it elastically, shrinks it by a random amount (a Gaussian blur whose
  values below the maximum are cut to zero), blurs it again and scales it by a random blend ratio. We
  have the 68 points only (training.landmarks), so the forehead points are the brow points raised along
  the face's vertical axis (:func:`forehead_points`).
- ``face_hull``: the whole-face hull variant alone, for ablations.

The blur, blend ratios and source/target transforms follow the paper; the differences that remain
are named where they occur (:class:`SbiConfig`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
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
# The paper's code keeps only the first 68 of its 81 landmarks a quarter of the time: whole-face hulls without
# the forehead.
NO_FOREHEAD_SHARE = 0.25
# cv2 drawing takes fixed-point coordinates with this many fractional bits: sub-pixel outlines at MASK_SIDE.
_SHIFT = 4


@dataclass(frozen=True)
class SbiConfig:
    """How pseudo-fakes are made. The `sbi:` section of a training recipe; exported in metadata.json.

    The paper's source/target transforms differ from the defaults in two ways, both settings here: its
    RGB shift is applied to 30 % of the copies (`color_shift_probability` 0.3, default 1.0), and its
    hue/saturation/value step uses limits of ±0.3 on a 0..180/0..255 scale, which leaves uint8 pixels
    unchanged (`hue_shift` 0 and `saturation` 0; defaults 10 and 0.3). Its down-scaling is by 2 or 4
    with nearest-neighbour sampling; ours draws the factor from `downscale` and averages (INTER_AREA).

    Attributes:
        enabled: train on real photos + their self-blends (the dataset may then hold real images only).
        fake_share: pseudo-fakes per real training image per epoch (1.0: one self-blend of every real image).
        color_shift: largest per-channel RGB offset (0..255 scale) of the transformed copy.
        color_shift_probability: share of transformed copies that get the RGB offset (the paper: 0.3).
        hue_shift: largest hue rotation in degrees.
        saturation: largest relative saturation change.
        brightness_contrast: largest relative brightness and contrast change.
        downscale: (low, high) scale of the down-then-up resampling that blurs the copy (frequency mismatch);
            chosen with probability `downscale_probability`, otherwise the copy is sharpened.
        downscale_probability: share of copies blurred by resampling rather than sharpened.
        scale_jitter: largest relative scale change of the copy (0.05: between 0.95 and 1.05).
        shift_jitter: largest shift of the copy, as a share of the face box side.
        mask: the paste mask, a name of MASK_MAKERS: ellipse, landmarks (the paper's hulls) or face_hull.
            Landmark masks fall back to the ellipse for a face without landmarks.
        mask_width: (low, high) ellipse semi-axis across the face, as a share of the box width.
        mask_height: (low, high) ellipse semi-axis along the face, as a share of the box height.
        elastic_strength: largest displacement of the mask outline, as a share of the box side (of the
            landmarks' extent for landmark masks).
        mask_blur: (low, high) Gaussian sigma softening the ellipse's edge, as a share of the box side.
        hull_erosion: (low, high) how far a landmark hull shrinks before its blur, as a share of the landmarks'
            extent (the paper: a 5..25 px blur cut below its maximum, on a mask where the face is 96..128 px wide).
        hull_blur: (low, high) Gaussian sigma softening a landmark hull's edge, as a share of the landmarks'
            extent (the paper: a 5..25 px kernel with sigma 5..45 px, nearly a box filter, on the same mask).
        forehead_lift: how far above the brows the forehead points of a landmark hull lie, as a share of
            the brow-to-chin distance (0.5 would reach the hairline of a face of classical thirds).

    """

    enabled: bool = False
    fake_share: float = 1.0
    color_shift: float = 20.0
    color_shift_probability: float = 1.0
    hue_shift: float = 10.0
    saturation: float = 0.3
    brightness_contrast: float = 0.1
    downscale: tuple[float, float] = (0.25, 0.5)
    downscale_probability: float = 0.5
    scale_jitter: float = 0.05
    shift_jitter: float = 0.03
    mask: str = "ellipse"
    mask_width: tuple[float, float] = (0.36, 0.48)
    mask_height: tuple[float, float] = (0.44, 0.56)
    elastic_strength: float = 0.04
    mask_blur: tuple[float, float] = (0.02, 0.08)
    hull_erosion: tuple[float, float] = (0.016, 0.094)
    hull_blur: tuple[float, float] = (0.011, 0.056)
    forehead_lift: float = 0.4

    def __post_init__(self) -> None:
        for name in ("downscale", "mask_width", "mask_height", "mask_blur", "hull_erosion", "hull_blur"):
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))
        if self.mask not in MASK_MAKERS:
            raise ValueError(f"sbi setting 'mask' is unknown: {self.mask!r}; known: {sorted(MASK_MAKERS)}")
        checks = {
            "fake_share": 0.0 < self.fake_share <= 4.0,
            "color_shift": 0.0 <= self.color_shift <= 128.0,
            "color_shift_probability": 0.0 <= self.color_shift_probability <= 1.0,
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
            "hull_erosion": len(self.hull_erosion) == 2 and 0.0 <= self.hull_erosion[0] <= self.hull_erosion[1] < 0.3,
            "hull_blur": len(self.hull_blur) == 2 and 0.0 <= self.hull_blur[0] <= self.hull_blur[1] < 0.5,
            "forehead_lift": 0.0 <= self.forehead_lift <= 1.0,
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
                # A name (mask) stays text; convert_setting knows numbers, flags and pairs only.
                converted[name] = (str(value).strip() if isinstance(defaults[name], str)
                                   else convert_setting(value, defaults[name]))
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
    """A generator fixed by (key, seed): the same key always draws the same numbers."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def image_rng(rgb: np.ndarray, seed: int) -> np.random.Generator:
    """A generator fixed by (the image's pixels, seed): the same image always gets the same fixed pseudo-fake.

    Keyed by content, not by path: training names a file relative to its dataset's folder (or by its full
    path when the manifest lists it from elsewhere), evaluation relative to the folder of the faces.json it
    finds, so one file had two names and two different fakes. Both decode the same pixels. Hashing a 560 px
    crop takes well under a millisecond.
    """
    digest = hashlib.sha256(f"{rgb.shape}:{rgb.dtype}:".encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return rng_for(digest.hexdigest(), seed)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def shift_colours(rgb: np.ndarray, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """RGB offset, hue/saturation change and brightness/contrast change: the colour mismatch of a paste.

    Each step is a per-value lookup table (cv2.LUT) on uint8 data: a tenth of the cost of the same
    arithmetic in float32 on a full-resolution crop.
    """
    values = np.arange(256, dtype=np.float64)
    offsets = rng.uniform(-config.color_shift, config.color_shift, size=3)
    # The coin is drawn only when it can come up tails, so a probability of 1 repeats the fakes made before it
    # existed (the same draws from the same generator).
    if config.color_shift_probability < 1.0 and rng.random() >= config.color_shift_probability:
        offsets = np.zeros(3)
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


def geometry_jitter(box: FaceBox, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """The 2×3 affine matrix that scales the copy about the face centre and shifts it a little."""
    side = max(box.width, box.height)
    scale_x = 1.0 + rng.uniform(-config.scale_jitter, config.scale_jitter)
    scale_y = 1.0 + rng.uniform(-config.scale_jitter, config.scale_jitter)
    shift_x, shift_y = rng.uniform(-config.shift_jitter, config.shift_jitter, size=2) * side
    centre_x, centre_y = box.x + box.width / 2.0, box.y + box.height / 2.0
    return np.array([[scale_x, 0.0, (1.0 - scale_x) * centre_x + shift_x],
                     [0.0, scale_y, (1.0 - scale_y) * centre_y + shift_y]], dtype=np.float64)


def _warp(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    return cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def jitter_geometry(rgb: np.ndarray, box: FaceBox, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """Scales the copy about the face centre and shifts it a little: the misalignment of a paste."""
    return _warp(rgb, geometry_jitter(box, config, rng))


def face_mask(shape: tuple[int, ...], box: FaceBox, config: SbiConfig, rng: np.random.Generator) -> np.ndarray:
    """Soft elliptical paste mask, float32 [H, W] in [0, 1]: a jittered ellipse, deformed, blurred, scaled.

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
    mask = np.zeros((small_h, small_w), dtype=np.uint8)
    cv2.ellipse(mask, (round(centre[0] * 2**_SHIFT), round(centre[1] * 2**_SHIFT)),
                (max(1, round(axes[0] * 2**_SHIFT)), max(1, round(axes[1] * 2**_SHIFT))),
                float(rng.uniform(-10, 10)), 0, 360, 255, thickness=-1, lineType=cv2.LINE_AA, shift=_SHIFT)
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


# ---------------------------------------------------------------------------------------------------------------------
# Landmark hulls (68-point iBUG 300-W layout: 0-16 jaw, 17-21 and 22-26 the subject's right and left brow,
# 27-35 nose, 36-41 and 42-47 right and left eye, 48-67 mouth; the subject's right is the image's left).

# Face X-ray's reduced hulls, which the paper's code picks among: each is the union of the convex hulls of its parts.
# The eight facial components (jaw halves, cheeks, nose ridge, eye regions down to the chin, nose).
_COMPONENTS = (
    (*range(0, 9), 17), (*range(8, 17), 26), (17, 18, 19, 8), (24, 25, 26, 8), (*range(19, 25), 8),
    (*range(17, 22), 27, *range(31, 36), 8), (*range(22, 27), 27, *range(31, 36), 8), tuple(range(27, 36)),
)
HULL_PARTS: dict[str, tuple[tuple[int, ...], ...]] = {
    # DeepFaceLab's "full" mask: jaw and mouth, nose ridge, and the brow band down to the nose tip.
    "dfl_full": ((*range(0, 17), *range(48, 68)), (27, 28, 29, 30, 33), (*range(17, 27), 0, 27, 16, 33)),
    "components": _COMPONENTS,
    # The components with the brows first raised by half their distance to the upper eyelid (extended_brows).
    "extended": _COMPONENTS,
    # The whole face: one hull of every point, with the forehead points three times in four.
    "face_hull": (tuple(range(68)),),
}
HULL_VARIANTS = tuple(HULL_PARTS)
# Each brow point's partner below it when the "extended" variant raises the brows: the eye corners and upper
# eyelids (the outer ends are moved off their eye corner towards the jaw in extended_brows).
_BELOW_BROWS = (36, 36, 37, 38, 39, 42, 43, 44, 45, 45)


def forehead_points(landmarks: np.ndarray, lift: float) -> np.ndarray:
    """Ten points along the forehead, float32 [10, 2]: the brow points (17-26) raised along the face's vertical axis.

    The paper's 81-point model adds 13 forehead points up to the hairline; dlib's 68 stop at the brows. The
    brows are moved away from the chin, perpendicular to the line through the eye centres (so a tilted head
    gets a tilted forehead), by `lift` × the brow-to-chin distance at the middle of the brow line, falling off
    to 0.6 of that at its outer ends (sqrt(1 − (0.8 t)²) for t from −1 to 1 across the brows), so the hull
    gets the rounded top of a forehead instead of a rectangle.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    brows = points[17:27]
    across = points[42:48].mean(axis=0) - points[36:42].mean(axis=0)
    across /= max(float(np.linalg.norm(across)), 1e-6)
    up = np.array([across[1], -across[0]])
    centre = brows.mean(axis=0)
    if float(np.dot(up, points[8] - centre)) > 0:  # the perpendicular that points away from the chin
        up = -up
    height = float(np.linalg.norm(points[8] - centre))
    position = (brows - centre) @ across
    position /= max(float(np.abs(position).max()), 1e-6)
    profile = np.sqrt(1.0 - (0.8 * position) ** 2)
    return (brows + up[None, :] * (lift * height * profile)[:, None]).astype(np.float32)


def extended_brows(landmarks: np.ndarray) -> np.ndarray:
    """The 68 points with each brow point raised by half its distance to the point below it (DeepFaceLab's way)."""
    points = np.asarray(landmarks, dtype=np.float64).copy()
    below = points[list(_BELOW_BROWS)]
    below[0] = 0.75 * points[36] + 0.25 * points[0]  # the outer ends: a quarter of the way from eye corner to jaw
    below[-1] = 0.75 * points[45] + 0.25 * points[16]
    points[17:27] += (points[17:27] - below) / 2.0
    return points.astype(np.float32)


def hull_polygons(landmarks: np.ndarray, variant: str, forehead_lift: float | None) -> list[np.ndarray]:
    """The convex polygons whose union is a hull variant, each float32 [N, 2] in the landmarks' coordinates.

    Args:
        landmarks: 68 (x, y) points.
        variant: a name of HULL_PARTS.
        forehead_lift: for face_hull, adds forehead_points(landmarks, lift); None leaves the 68 points alone.

    """
    points = np.asarray(landmarks, dtype=np.float32)
    if variant == "extended":
        points = extended_brows(points)
    polygons = [points[list(part)] for part in HULL_PARTS[variant]]
    if variant == "face_hull" and forehead_lift is not None:
        polygons = [np.concatenate([points, forehead_points(points, forehead_lift)])]
    return [cv2.convexHull(polygon).reshape(-1, 2) for polygon in polygons]


def landmark_mask(shape: tuple[int, ...], landmarks: np.ndarray, config: SbiConfig, rng: np.random.Generator,
                  variants: tuple[str, ...] = HULL_VARIANTS) -> np.ndarray:
    """The paper's paste mask, float32 [H, W] in [0, 1]: a landmark hull, deformed, shrunk, blurred, scaled.

    Steps, as in the paper's code, with its pixel sizes turned into shares of the face so they hold at
    any crop size: one of `variants` is drawn (face_hull without the forehead a quarter of the time) and
    filled; the smooth elastic field of the ellipse mask displaces it; a minimum filter shrinks it by
    `hull_erosion` (what the paper's blur cut below its maximum does); a Gaussian of `hull_blur` softens
    it; it is divided by its maximum so the inside is 1 again, and multiplied by a blend ratio. The
    paper runs the shrink and the blur on the mask resized to a random 192..256 px per axis, which
    stretches both by up to a third along one axis more than the other: so does `stretch` here.
    Drawn at MASK_SIDE and enlarged, like face_mask.
    """
    height, width = shape[:2]
    scale = min(1.0, MASK_SIDE / max(height, width))
    small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
    points = np.asarray(landmarks, dtype=np.float32) * scale
    side = float(np.ptp(points, axis=0).max())
    with_forehead = rng.random() >= NO_FOREHEAD_SHARE
    variant = variants[int(rng.integers(len(variants)))]
    mask = np.zeros((small_h, small_w), dtype=np.uint8)
    for polygon in hull_polygons(points, variant, config.forehead_lift if with_forehead else None):
        cv2.fillConvexPoly(mask, np.rint(polygon * 2**_SHIFT).astype(np.int32), 255, lineType=cv2.LINE_AA,
                           shift=_SHIFT)
    mask = mask.astype(np.float32) / 255.0
    if config.elastic_strength > 0:
        mask = _elastic(mask, config.elastic_strength * side, rng)
    stretch = side / rng.uniform(0.75, 1.0, size=2)  # (x, y) pixels per unit share
    radius = _uniform(rng, config.hull_erosion) * stretch
    kernel = (2 * round(float(radius[0])) + 1, 2 * round(float(radius[1])) + 1)
    if max(kernel) > 1:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_RECT, kernel))
    sigma = _uniform(rng, config.hull_blur) * stretch
    if sigma.max() > 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(float(sigma[0]), 0.3), sigmaY=max(float(sigma[1]), 0.3))
    peak = float(mask.max())
    if peak > 0:
        mask = mask / peak
    if scale < 1.0:
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(mask * float(rng.choice(BLEND_RATIOS)), 0.0, 1.0)


def plausible_landmarks(landmarks: np.ndarray | None, box: FaceBox) -> bool:
    """Whether 68 points can outline the face in `box`: finite, centred inside it, and of about its size.

    A shape predictor always returns points, even when its seed box holds no face; a hull of such
    points would paste the wrong region, so those blends use the ellipse instead.
    """
    if landmarks is None or np.shape(landmarks) != (68, 2) or not np.isfinite(landmarks).all():
        return False
    centre = np.asarray(landmarks).mean(axis=0)
    extent = float(np.ptp(landmarks, axis=0).max())
    side = float(max(box.width, box.height))
    inside = box.x <= centre[0] <= box.x + box.width and box.y <= centre[1] <= box.y + box.height
    return inside and 0.5 * side <= extent <= 2.0 * side


# ---------------------------------------------------------------------------------------------------------------------
# The registry of masks and the blend


MaskDrawer = Callable[[tuple[int, ...], FaceBox, np.ndarray | None, SbiConfig, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class MaskMaker:
    """One paste mask of MASK_MAKERS.

    Attributes:
        draw: (image shape, face box, landmarks or None, config, rng) → float32 mask [H, W] in [0, 1].
        needs_landmarks: draw needs 68 points; without them the blend falls back to the ellipse.
        description: one line for --help and the docs.

    """

    draw: MaskDrawer
    needs_landmarks: bool
    description: str


def _ellipse(shape: tuple[int, ...], box: FaceBox, landmarks: np.ndarray | None, config: SbiConfig,
             rng: np.random.Generator) -> np.ndarray:
    return face_mask(shape, box, config, rng)


def _paper_hulls(shape: tuple[int, ...], box: FaceBox, landmarks: np.ndarray | None, config: SbiConfig,
                 rng: np.random.Generator) -> np.ndarray:
    assert landmarks is not None  # self_blend only draws a landmark mask with landmarks
    return landmark_mask(shape, landmarks, config, rng)


def _face_hull(shape: tuple[int, ...], box: FaceBox, landmarks: np.ndarray | None, config: SbiConfig,
               rng: np.random.Generator) -> np.ndarray:
    assert landmarks is not None
    return landmark_mask(shape, landmarks, config, rng, variants=("face_hull",))


MASK_MAKERS: dict[str, MaskMaker] = {
    "ellipse": MaskMaker(_ellipse, False, "an ellipse inside the face box, jittered and deformed (no landmarks)"),
    "landmarks": MaskMaker(_paper_hulls, True, "the paper's landmark hulls: whole face with forehead or one of "
                                               "three reduced hulls, deformed, shrunk and blurred"),
    "face_hull": MaskMaker(_face_hull, True, "the whole-face landmark hull alone, deformed, shrunk and blurred"),
}


def needs_landmarks(config: SbiConfig) -> bool:
    """Whether blends made with `config` want the face's 68 landmarks."""
    return MASK_MAKERS[config.mask].needs_landmarks


def self_blend_with_mask(rgb: np.ndarray, box: FaceBox, config: SbiConfig, rng: np.random.Generator,
                         landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pseudo-fake of `rgb` (uint8 [H, W, 3]) and the mask it was pasted through (float32 [H, W] in [0, 1]).

    As in the paper, either the pasted copy or the frame it is pasted into receives the colour and
    frequency change (so the detector cannot just look for one direction of mismatch); the copy
    always receives the geometric jitter. A landmark mask moves with the copy, as the paper's does
    (its points are jittered with it), so the hull outlines the pasted face; the ellipse stays where
    the face box is. A landmark mask without `landmarks` falls back to the ellipse.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"self_blend needs a uint8 RGB array [H, W, 3], got {rgb.dtype} {rgb.shape}")
    source, target = rgb, rgb
    appearance = change_frequencies(shift_colours(rgb, config, rng), config, rng)
    if rng.random() < 0.5:
        source = appearance
    else:
        target = appearance
    matrix = geometry_jitter(box, config, rng)
    source = _warp(source, matrix)
    maker = MASK_MAKERS[config.mask]
    if maker.needs_landmarks and landmarks is None:
        maker = MASK_MAKERS["ellipse"]
    if maker.needs_landmarks:
        landmarks = np.asarray(landmarks, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
    mask = maker.draw(rgb.shape, box, landmarks, config, rng)
    # OpenCV's per-pixel weighted blend of uint8 images: source × mask + target × (1 − mask), rounded.
    fake = cv2.blendLinear(np.ascontiguousarray(source), np.ascontiguousarray(target), mask, 1.0 - mask)
    return fake, mask


def self_blend(rgb: np.ndarray, box: FaceBox, config: SbiConfig, rng: np.random.Generator,
               landmarks: np.ndarray | None = None) -> np.ndarray:
    """A pseudo-fake of `rgb` (uint8 [H, W, 3]): the face in `box` blended with a transformed copy of itself.

    See self_blend_with_mask; `landmarks` (68 points, image coordinates) are used by landmark masks only.
    """
    return self_blend_with_mask(rgb, box, config, rng, landmarks)[0]
