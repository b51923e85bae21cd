"""The shared real face photos (../shared/data/faces, CC BY 4.0), read in place by tests; never copied into the repo."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handler.faces import FaceConfig, crop_face, detect_faces
from handler.forensics import decode_rgb

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def face_photo(name: str) -> Path:
    """A photo of the shared set by its path in manifest.csv (e.g. "london/L001_neutral.jpg")."""
    path = FACES_DIR / name
    assert path.is_file(), f"{path} is missing: the tests read the shared faces in ../shared/data/faces"
    return path


def face_crop(name: str, config: FaceConfig | None = None) -> np.ndarray:
    """The crop handler.faces cuts around the largest face of a shared photo (what training.prepare writes)."""
    config = config or FaceConfig()
    rgb = decode_rgb(face_photo(name).read_bytes())
    return crop_face(rgb, detect_faces(rgb, config)[0], config.margin)
