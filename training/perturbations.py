"""Named changes to a decoded photo, for the evaluation's robustness and probe rows.

A detector that is right on its own photos can still key on something no deepfake has: the
white balance of the training cameras, their framing, their resolution. The only way to see that is
to change one such property of *real* photos and of their fakes alike and watch the score move. Each
entry here is one such change, named and deterministic, so every lever is judged by the same table
(docs/EVALUATION.md). The probes of ../shared/design/DETECTION_NOTES.md are here as rows: a mild warm
cast (R x1.15, B x0.8) turned 90 % of real studio photos fake for the first face model.

Groups (``--perturbation GROUP`` on training.evaluate):
- robustness: everyday degradations (re-compression, downscaling, blur) the model should shrug off;
- colour: white-balance casts, tints, exposure and saturation, as other cameras and lights give;
- framing: tighter crops and a rolled head, as other photographers and poses give;
- resolution: small and upsampled faces, heavy compression, as web thumbnails give.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from handler.forensics import decode_rgb


def jpeg_recompress(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Re-encodes as JPEG at `quality` with Pillow (4:2:0) and decodes it with serving's decoder: a re-shared photo."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return decode_rgb(buffer.getvalue())


def downscale(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Shrinks width and height by `factor` with cv2.INTER_AREA; the model input is then resized as usual."""
    height, width = rgb.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def down_up(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Shrinks by `factor` and enlarges back (bicubic): a small source photo shown at a larger size."""
    height, width = rgb.shape[:2]
    return cv2.resize(downscale(rgb, factor), (width, height), interpolation=cv2.INTER_CUBIC)


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` px; OpenCV derives the kernel size from sigma (ksize 0)."""
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma)


def channel_gains(rgb: np.ndarray, red: float = 1.0, green: float = 1.0, blue: float = 1.0) -> np.ndarray:
    """Multiplies each channel by its gain (clipped to 0..255): a white-balance cast of the whole photo."""
    gains = np.array([red, green, blue], dtype=np.float32)
    return np.clip(rgb.astype(np.float32) * gains + 0.5, 0, 255).astype(np.uint8)


def gamma(rgb: np.ndarray, exponent: float) -> np.ndarray:
    """Tone curve out = in ** exponent on 0..1: above 1 darker mid-tones, below 1 brighter, as another exposure."""
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** exponent + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, table)


def saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Scales saturation about each pixel's grey (ITU-R 601 luma), as a camera's or an editor's colour setting."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    return np.clip(grey + factor * (rgb.astype(np.float32) - grey) + 0.5, 0, 255).astype(np.uint8)


def centre_crop(rgb: np.ndarray, share: float) -> np.ndarray:
    """Keeps the central `share` of width and height: a tighter framing of the same face."""
    height, width = rgb.shape[:2]
    crop_h, crop_w = max(1, round(height * share)), max(1, round(width * share))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return np.ascontiguousarray(rgb[top:top + crop_h, left:left + crop_w])


def rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rolls the photo about its centre; the corners are filled by reflection, not black step edges."""
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


class Perturbation(NamedTuple):
    """A named change; a tuple whose last item is the description, like the project's other registries.

    Attributes:
        apply: RGB uint8 [H, W, 3] → RGB uint8 [H', W', 3]; deterministic, so every run sees the same pixels.
        group: the key of :data:`PERTURBATION_GROUPS` it belongs to.
        description: one line for `--help` and the report.

    """

    apply: Callable[[np.ndarray], np.ndarray]
    group: str
    description: str


# Add your own: PERTURBATIONS["jpeg_q30"] = Perturbation(partial(jpeg_recompress, quality=30), "resolution", "...").
PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg_q50": Perturbation(partial(jpeg_recompress, quality=50), "robustness",
                             "re-encoded as JPEG quality 50 (Pillow, 4:2:0 chroma), as a re-shared photo"),
    "downscale_0.5": Perturbation(partial(downscale, factor=0.5), "robustness",
                                  "shrunk to half width and height (cv2.INTER_AREA); the model resizes as usual"),
    "blur_sigma1": Perturbation(partial(gaussian_blur, sigma=1.0), "robustness",
                                "Gaussian blur, sigma 1 px (cv2.GaussianBlur, kernel size from sigma)"),
    "cast_warm": Perturbation(partial(channel_gains, red=1.15, blue=0.8), "colour",
                              "mild warm white balance: red x1.15, blue x0.8 (the probe of DETECTION_NOTES)"),
    "cast_cool": Perturbation(partial(channel_gains, red=0.85, blue=1.15), "colour",
                              "mild cool white balance: red x0.85, blue x1.15"),
    "cast_warm_strong": Perturbation(partial(channel_gains, red=1.3, blue=0.7), "colour",
                                     "strong warm cast (tungsten light): red x1.3, blue x0.7"),
    "cast_cool_strong": Perturbation(partial(channel_gains, red=0.75, blue=1.3), "colour",
                                     "strong cool cast (shade, daylight on a tungsten setting): red x0.75, blue x1.3"),
    "tint_green": Perturbation(partial(channel_gains, green=1.12), "colour",
                               "green tint (fluorescent light): green x1.12"),
    "tint_magenta": Perturbation(partial(channel_gains, green=0.88), "colour", "magenta tint: green x0.88"),
    "gamma_dark": Perturbation(partial(gamma, exponent=1.6), "colour", "darker exposure: gamma 1.6"),
    "gamma_bright": Perturbation(partial(gamma, exponent=0.7), "colour", "brighter exposure: gamma 0.7"),
    "saturation_1.5": Perturbation(partial(saturation, factor=1.5), "colour", "saturation x1.5 (vivid colour setting)"),
    "saturation_0.5": Perturbation(partial(saturation, factor=0.5), "colour", "saturation x0.5 (muted colour)"),
    "crop_0.8": Perturbation(partial(centre_crop, share=0.8), "framing",
                             "central 80 % of width and height kept: a tighter framing"),
    "crop_0.65": Perturbation(partial(centre_crop, share=0.65), "framing",
                              "central 65 % kept: the face fills the frame"),
    "rotate_15": Perturbation(partial(rotate, degrees=15.0), "framing",
                              "head rolled by 15 degrees (corners reflected)"),
    "downscale_0.25": Perturbation(partial(downscale, factor=0.25), "resolution",
                                   "shrunk to a quarter (a 560 px crop becomes 140 px)"),
    "down_up_0.3": Perturbation(partial(down_up, factor=0.3), "resolution",
                                "shrunk to 0.3x and enlarged back (bicubic): a small photo shown large"),
    "jpeg_q30": Perturbation(partial(jpeg_recompress, quality=30), "resolution", "re-encoded as JPEG quality 30"),
}

PERTURBATION_GROUPS: dict[str, str] = {
    "robustness": "everyday degradations (the default rows): JPEG q50, half size, blur sigma 1",
    "colour": "white-balance casts and tints, exposure and saturation (other cameras and lights)",
    "framing": "tighter crops and a rolled head (other photographers and poses)",
    "resolution": "small, upsampled and heavily compressed photos (web thumbnails)",
    "all": "every perturbation above",
}
DEFAULT_PERTURBATIONS = tuple(name for name, entry in PERTURBATIONS.items() if entry.group == "robustness")


def expand_perturbations(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Perturbation and group names → perturbation names, in registry order without repeats.

    Raises:
        KeyError: a name that is neither, listing the valid ones.

    """
    wanted: set[str] = set()
    for name in names:
        if name == "all":
            wanted.update(PERTURBATIONS)
        elif name in PERTURBATION_GROUPS:
            wanted.update(key for key, entry in PERTURBATIONS.items() if entry.group == name)
        elif name in PERTURBATIONS:
            wanted.add(name)
        else:
            raise KeyError(f"unknown perturbation {name!r}; known: groups {sorted(PERTURBATION_GROUPS)} and "
                           f"{sorted(PERTURBATIONS)}")
    return tuple(name for name in PERTURBATIONS if name in wanted)
