"""68 facial landmarks (dlib's shape predictor, iBUG 300-W layout) for training and evaluation code.

Landmarks give a face's true outline, where a box gives only its extent: the cross-identity face
swaps of training.face_swap warp one face onto another triangle by triangle, and landmark masks
follow the seams real face swaps leave.

Licences (why this module stays out of the served model):
- dlib (the `dlib-bin` wheel) is under the Boost Software License 1.0.
- `face-recognition-models` is an MIT-licensed package that ships `shape_predictor_68_face_landmarks.dat`.
- That predictor was trained on the iBUG 300-W dataset, whose terms exclude commercial use. It is
  therefore used only at training and evaluation time; handler/ never imports this module and the
  file is never packed into a .mar.

Box or detector. dlib's predictor was trained from the boxes of dlib's own HOG frontal face detector,
and its cascade starts from the mean shape placed in that box, so a box of another detector (a Haar
box, or the central square of a precropped crop from training.sbi.inner_face_box) starts it off.
Measured on 60 photos of ../shared/data/faces and 60 of ../shared/data/congress cut into 560 px
crops, as the mean point error against the points of a HOG detection on the whole photo, in shares
of the eye distance (mean / worst): Haar box 0.016 / 0.21 and 0.017 / 0.05; the crop's central
square 0.016 / 0.19 and 0.033 / 0.55 (congress crops are shifted at the photo's edge, so the face is
off-centre); HOG run on the crop shrunk to 200 px 0.014 / 0.25 and 0.014 / 0.035. So a given box
only says *where to look*: the HOG detector runs on the region around it, shrunk so the box is about
:data:`_BOX_SIDE` px, and its detection that overlaps the box seeds the predictor. Only when HOG finds
no face there is the box itself used, moved and shrunk by the mean offset of HOG boxes from Haar boxes
measured on the same photos (:data:`_HAAR_TO_HOG`; it cut the Haar-box error from 0.016 to 0.012).
Through :func:`face_landmarks` on the same crops (London/AMFD, congress): no box 0.013 / 0.15 and
0.014 / 0.04; Haar box 0.013 / 0.16 and 0.015 / 0.04; central square 0.013 / 0.18 and 0.015 / 0.04.
Speed on a 560 px crop (one core of a 2-core CPU, median): 5 ms with a box, 9.5 ms without.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import dlib
import numpy as np

from handler.faces import FaceBox

LANDMARK_COUNT = 68
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# Index groups of the 68-point layout. "Right" and "left" are the subject's: the right eye appears on the image's left.
JAW = slice(0, 17)
RIGHT_BROW = slice(17, 22)
LEFT_BROW = slice(22, 27)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
EYES = slice(36, 48)
MOUTH = slice(48, 68)
LANDMARK_GROUPS: dict[str, slice] = {
    "jaw": JAW, "right_brow": RIGHT_BROW, "left_brow": LEFT_BROW, "brows": BROWS, "nose": NOSE,
    "right_eye": RIGHT_EYE, "left_eye": LEFT_EYE, "eyes": EYES, "mouth": MOUTH,
}

# Mean HOG box relative to a Haar box of the same face: (left shift, top shift) as shares of the Haar
# box's width/height, then (width, height) scale. Measured on 40 London/AMFD photos (std 0.03, 0.04, 0.06, 0.06).
_HAAR_TO_HOG = (0.032, 0.138, 0.929, 0.930)
# Side (px) a given box is shrunk/enlarged to before HOG runs around it: HOG finds faces of 80 px and more,
# and a small working image keeps the search at a few milliseconds.
_BOX_SIDE = 120
# Context searched around a given box, as a share of its side on each side (a crop's face may be off-centre).
_BOX_CONTEXT = 0.5
# Longer sides the whole image is searched at when no box is given: small first (a crop's face fills it,
# about 4 ms), then large (a small face in a photo).
_SEARCH_SIDES = (320, 960)
# A HOG detection seeds the predictor only when it overlaps the given box by this much (of the smaller box).
_MIN_OVERLAP = 0.5


@functools.cache
def predictor_path() -> Path:
    """The 68-point model inside face_recognition_models, found without importing that package.

    Its __init__ imports pkg_resources, which recent setuptools no longer ship; find_spec only locates it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed; run scripts/setup.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall face-recognition-models with scripts/setup.sh")
    return path


@functools.cache
def _predictor() -> dlib.shape_predictor:
    """Loads the predictor once per process (about 0.5 s and 100 MB: never per image)."""
    return dlib.shape_predictor(str(predictor_path()))


@functools.cache
def _detector() -> dlib.fhog_object_detector:
    """The HOG frontal face detector of dlib, built once per process."""
    return dlib.get_frontal_face_detector()


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Grey uint8 copy: both dlib models work on intensity, and converting once saves each a conversion."""
    if rgb.ndim == 2:
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def _hog_faces(grey: np.ndarray, longer_side: int) -> list[FaceBox]:
    """HOG detections on `grey` resized so its longer side is `longer_side`, in `grey`'s pixel coordinates."""
    height, width = grey.shape[:2]
    scale = longer_side / max(height, width)
    work = grey
    if abs(scale - 1.0) > 0.02:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR)
    else:
        scale = 1.0
    return [
        FaceBox(round(r.left() / scale), round(r.top() / scale), round(r.width() / scale), round(r.height() / scale))
        for r in _detector()(work, 0)
    ]


def _hog_box_near(grey: np.ndarray, box: FaceBox) -> FaceBox:
    """The HOG detection around a given box, or the box moved to where HOG would have put it."""
    height, width = grey.shape[:2]
    side = max(box.width, box.height)
    pad = round(side * _BOX_CONTEXT)
    left, top = max(0, box.x - pad), max(0, box.y - pad)
    right, bottom = min(width, box.x + box.width + pad), min(height, box.y + box.height + pad)
    if right - left > 1 and bottom - top > 1:
        region = grey[top:bottom, left:right]
        longer = round(max(right - left, bottom - top) * _BOX_SIDE / side)
        found = [FaceBox(f.x + left, f.y + top, f.width, f.height) for f in _hog_faces(region, longer)]
        found = [f for f in found if f.overlap(box) >= _MIN_OVERLAP]
        if found:
            return max(found, key=lambda f: (f.overlap(box), f.area))
    dx, dy, sx, sy = _HAAR_TO_HOG
    return FaceBox(round(box.x + dx * box.width), round(box.y + dy * box.height),
                   max(1, round(sx * box.width)), max(1, round(sy * box.height)))


def face_landmarks(rgb: np.ndarray, box: FaceBox | None = None) -> np.ndarray | None:
    """68 (x, y) float32 points [68, 2] in image pixel coordinates, or None when no face is found.

    Args:
        rgb: RGB (or grey) uint8 image [H, W, 3].
        box: where the face is (a Haar box, or a crop's central face from training.sbi.inner_face_box).
            The HOG detector searches around it and its detection seeds the predictor (see the module
            docstring for why); without a detection the box itself does, so a box always yields points.
            When None, the largest HOG face of the whole image is used, and None is returned if there is none.

    Returns:
        Points in the iBUG 300-W order (index groups: :data:`LANDMARK_GROUPS`), or None.

    """
    grey = _grey(rgb)
    if box is not None:
        face = _hog_box_near(grey, box)
    else:
        faces: list[FaceBox] = []
        for side in dict.fromkeys(min(side, 2 * max(grey.shape[:2])) for side in _SEARCH_SIDES):
            faces = _hog_faces(grey, side)
            if faces:
                break
        if not faces:
            return None
        face = max(faces, key=lambda f: f.area)
    rect = dlib.rectangle(int(face.x), int(face.y), int(face.x + face.width), int(face.y + face.height))
    shape = _predictor()(grey, rect)
    return np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float32)
