"""Images built from the shared real face photos for the face tests: one face, two faces, no face, EXIF-rotated."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from handler.forensics import decode_rgb

# Frontal photos on which OpenCV's eye cascade also finds both eyes: independent evidence of where the face is.
ONE_FACE_PHOTOS = ("london/L001_neutral.jpg", "london/L010_smiling.jpg", "amfd/A1001_neutral.jpg")
LARGER_FACE_PHOTO, SMALLER_FACE_PHOTO = "london/L001_neutral.jpg", "amfd/A1001_neutral.jpg"


def encode(rgb: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_rgb(faces_dir: Path, name: str) -> np.ndarray:
    return decode_rgb((faces_dir / name).read_bytes())


def at_height(rgb: np.ndarray, height: int) -> np.ndarray:
    width = round(rgb.shape[1] * height / rgb.shape[0])
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def two_faces(faces_dir: Path) -> np.ndarray:
    """Two people side by side on grey, the left one larger (600 px tall photo) than the right one (360 px)."""
    left = at_height(photo_rgb(faces_dir, LARGER_FACE_PHOTO), 600)
    right = at_height(photo_rgb(faces_dir, SMALLER_FACE_PHOTO), 360)
    canvas = np.full((600, left.shape[1] + right.shape[1], 3), 128, np.uint8)
    canvas[:, :left.shape[1]] = left
    canvas[120:480, left.shape[1]:] = right
    return canvas


def no_face(height: int = 480, width: int = 640) -> np.ndarray:
    """A smooth colour gradient: an image with nothing face-like in it."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    rows = np.linspace(40, 200, height, dtype=np.float32)[:, None, None]
    return np.clip(np.concatenate([np.broadcast_to(ramp, (height, width, 1)), np.broadcast_to(rows, (height, width, 1)),
                                   np.full((height, width, 1), 90, np.float32)], axis=2), 0, 255).astype(np.uint8)


def exif_rotated(rgb: np.ndarray) -> bytes:
    """A PNG stored a quarter turn anticlockwise with EXIF orientation 6: viewers (and decode_rgb) show `rgb`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(np.ascontiguousarray(np.rot90(rgb)), "PNG", exif=exif.tobytes())
