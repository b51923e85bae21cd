"""Finds faces in an RGB image and cuts the square crop the model is trained and served on.

Deepfake manipulations live in the face, and a face is a small part of most photos: scoring the
whole photo resized to 128 px throws most of the face's pixels away. The prepare command
(training.prepare) writes crops made here, and the handler crops served images here, so a face is
cut the same way in training and in serving.

Two detectors, chosen by FaceConfig.detector (a registry, :data:`DETECTORS`), neither of which downloads anything:
- "haar" (default): OpenCV's Haar cascade, shipped inside the opencv-python wheel. It finds upright frontal faces;
  turned, tilted and heavily occluded faces are missed, and callers fall back to the whole image (and say so).
- "mtcnn": handler.mtcnn, three small CNNs run by OpenCV's dnn module from ONNX files the .mar carries. It also
  finds turned and tilted faces and returns five landmarks per face (:func:`detect_faces_with_landmarks`).
A model is served with the detector it was trained with: the setting travels in metadata.json.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from handler import mtcnn
from handler.face_box import FaceBox
from handler.mtcnn import DetectedFace, MtcnnConfig

# Cascades that ship with OpenCV (cv2.data.haarcascades), by the name a config uses.
CASCADES = {
    "frontalface_default": "haarcascade_frontalface_default.xml",
    "frontalface_alt": "haarcascade_frontalface_alt.xml",
    "frontalface_alt2": "haarcascade_frontalface_alt2.xml",
}


@dataclass(frozen=True)
class FaceConfig:
    """How faces are found and cut. Exported in metadata.json so serving crops as training did.

    Attributes:
        detector: a name in :data:`DETECTORS`: "haar" (the default, as every model exported before the setting
            existed) or "mtcnn" (finds turned faces, and landmarks).
        cascade: a name in :data:`CASCADES` (haar only).
        margin: context kept around the detected box, as a share of the box side on each side
            (0.3: a 100 px face gives a 160 px crop). Blending seams sit at the face's border, so the
            crop must include some of the surroundings.
        min_face_fraction: faces whose longer side is below this share of the image's shorter side are ignored.
        min_face_pixels: faces smaller than this many pixels on their longer side are ignored: too little detail to
            judge.
        detection_size: the image is shrunk so its longer side is at most this before detection
            (speed: detection cost grows with the pixel count); boxes are mapped back to full resolution.
        scale_factor: cascade pyramid step (OpenCV's scaleFactor; haar only).
        min_neighbors: cascade votes a box needs (OpenCV's minNeighbors; haar only); higher = fewer false faces.
        max_faces: at most this many faces per image, largest first.
        min_confidence: face probability MTCNN's last stage must give a face (mtcnn only; its own floor is 0.7).
            Higher = fewer false faces (see docs/FACE_DETECTION.md).

    """

    detector: str = "haar"
    cascade: str = "frontalface_default"
    margin: float = 0.3
    min_face_fraction: float = 0.1
    min_face_pixels: int = 40
    detection_size: int = 640
    scale_factor: float = 1.1
    min_neighbors: int = 5
    max_faces: int = 8
    min_confidence: float = 0.9

    def __post_init__(self) -> None:
        checks = {
            "detector": (self.detector in DETECTORS, f"one of {sorted(DETECTORS)}"),
            "cascade": (self.cascade in CASCADES, f"one of {sorted(CASCADES)}"),
            "margin": (0.0 <= self.margin <= 2.0, "in [0, 2]"),
            "min_face_fraction": (0.0 <= self.min_face_fraction < 1.0, "in [0, 1)"),
            "min_face_pixels": (self.min_face_pixels >= 1, "at least 1"),
            "detection_size": (self.detection_size >= 64, "at least 64"),
            "scale_factor": (1.0 < self.scale_factor <= 2.0, "in (1, 2]"),
            "min_neighbors": (self.min_neighbors >= 0, "at least 0"),
            "max_faces": (self.max_faces >= 1, "at least 1"),
            "min_confidence": (0.0 <= self.min_confidence < 1.0, "in [0, 1)"),
        }
        for name, (valid, requirement) in checks.items():
            if not valid:
                raise ValueError(f"face setting '{name}' must be {requirement}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly form, for metadata.json and the prepare manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FaceConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so a typo cannot pass silently.

        Keys that are missing take their defaults, so metadata.json written before a setting existed still loads
        (an export without `detector` was made with, and is served with, the Haar cascade).
        """
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown face settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


@functools.cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    """Loads a cascade once per process (about 30 ms; a worker detects thousands of times)."""
    path = Path(cv2.data.haarcascades) / CASCADES[name]
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise RuntimeError(f"OpenCV could not load the face cascade {path}; reinstall opencv-python-headless")
    return classifier


def detect_faces(rgb: np.ndarray, config: FaceConfig) -> list[FaceBox]:
    """Faces in an RGB uint8 image [H, W, 3], largest first, in full-resolution pixel coordinates.

    See :func:`detect_faces_with_landmarks`, which this returns the boxes of.
    """
    return [face.box for face in detect_faces_with_landmarks(rgb, config)]


def detect_faces_with_landmarks(rgb: np.ndarray, config: FaceConfig) -> list[DetectedFace]:
    """Faces in an RGB uint8 image [H, W, 3] with landmarks and scores where the detector gives them, largest first.

    Detection runs on a copy shrunk to `detection_size`, and boxes (and landmarks) are mapped back to full
    resolution; boxes whose longer side is below the configured minimum are dropped, and overlapping boxes (one face
    found twice) are merged by keeping the larger. Haar gives neither landmarks nor scores (None); MTCNN gives five
    landmarks (handler.mtcnn.DetectedFace) and its probability.
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, config.detection_size / max(height, width))
    smallest = max(config.min_face_pixels, config.min_face_fraction * min(height, width))
    min_size = max(1, math.floor(smallest * scale))
    faces = DETECTORS[config.detector](rgb, config, scale, min_size)
    # The longer side, which the crop is sized on: Haar's boxes are square, MTCNN's are taller than wide.
    faces = [face for face in faces if max(face.box.width, face.box.height) >= smallest]
    faces.sort(key=lambda face: (-face.box.area, face.box.x, face.box.y))
    kept: list[DetectedFace] = []
    for face in faces:
        if all(face.box.overlap(other.box) < 0.3 for other in kept):
            kept.append(face)
    return kept[: config.max_faces]


def _haar_faces(rgb: np.ndarray, config: FaceConfig, scale: float, min_size: int) -> list[DetectedFace]:
    """Haar cascade on a grey, histogram-equalised copy shrunk by `scale`; boxes in full-resolution pixels."""
    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    found = _cascade(config.cascade).detectMultiScale(
        grey, scaleFactor=config.scale_factor, minNeighbors=config.min_neighbors, minSize=(min_size, min_size))
    return [
        DetectedFace(FaceBox(round(x / scale), round(y / scale), round(w / scale), round(h / scale)), None, None)
        for x, y, w, h in (found if len(found) else [])
    ]


def _mtcnn_faces(rgb: np.ndarray, config: FaceConfig, scale: float, min_size: int) -> list[DetectedFace]:
    """MTCNN on an RGB copy shrunk by `scale`, faces below min_confidence dropped; full-resolution pixels."""
    height, width = rgb.shape[:2]
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA)
    # P-Net's window is 12 px: a smaller minimum cannot be searched for, and would cost a larger pyramid.
    found = mtcnn.detect(rgb, MtcnnConfig(min_face_size=max(12.0, float(min_size))))
    return [
        DetectedFace(FaceBox(round(face.box.x / scale), round(face.box.y / scale), round(face.box.width / scale),
                             round(face.box.height / scale)),
                     face.landmarks / np.float32(scale), face.score)
        for face in found if face.score is not None and face.score >= config.min_confidence
    ]


# Face detectors by the name FaceConfig.detector uses: (full-resolution RGB, config, detection scale, smallest
# face side at that scale) → faces in full-resolution pixels.
DETECTORS: dict[str, Callable[[np.ndarray, FaceConfig, float, int], list[DetectedFace]]] = {
    "haar": _haar_faces,
    "mtcnn": _mtcnn_faces,
}


def crop_box(box: FaceBox, image_shape: tuple[int, ...], margin: float) -> FaceBox:
    """The square region cut around a face: the box's longer side plus `margin` on each side, centred on it.

    Shifted (not shrunk) to stay inside the image where possible, so a face near an edge keeps its
    size and context; only an image smaller than the square clips it.
    """
    height, width = image_shape[:2]
    side = round(max(box.width, box.height) * (1.0 + 2.0 * margin))
    side = max(1, min(side, height, width))
    centre_x, centre_y = box.x + box.width / 2.0, box.y + box.height / 2.0
    left = int(min(max(round(centre_x - side / 2.0), 0), width - side))
    top = int(min(max(round(centre_y - side / 2.0), 0), height - side))
    return FaceBox(left, top, side, side)


def crop_face(rgb: np.ndarray, box: FaceBox, margin: float) -> np.ndarray:
    """The square crop of one face (see :func:`crop_box`) as a contiguous RGB uint8 array."""
    region = crop_box(box, rgb.shape, margin)
    return np.ascontiguousarray(rgb[region.y: region.y + region.height, region.x: region.x + region.width])
