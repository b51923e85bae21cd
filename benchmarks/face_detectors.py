"""Face detectors compared on the shared real photos and on harder variants of them: recall, extra boxes, ms/image.

Every photo of ../shared/data/faces (London + AMFD) and ../shared/data/congress shows exactly one face. Each is
searched as is and after one change that detectors find hard: in-plane rotation by 20 and 35 degrees (a tilted
head), downscaling to 0.35x (a small face), a strong side-light ramp, and a horizontal squeeze to 0.7 of the width
(a crude proxy for a turned head: the face gets narrower). For each detector, dataset and variant:

- found: share of photos with at least one face found;
- on_face: share whose largest box is on the true face (the true face's centre inside the box, and the box's
  side within 0.5x to 2x of the true face's), among photos that have a true face (see below);
- extra_boxes: boxes beyond the one face, per photo;
- ms_per_image: detection time only (no decoding), single-threaded OpenCV (cv2.setNumThreads(1)).

No photo carries a hand-drawn face box, so the true face is where both detectors agree on the unchanged photo (each
largest box's centre inside the other's): the mean of the two boxes, moved by each variant's own geometry. Photos
without agreement have no true face and count only towards `found`; the result says how many there are.

Usage:
    python -m benchmarks.face_detectors [--limit N] [--set FACE_SETTING=VALUE ...]
        [--output benchmarks/results/face_detectors.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from handler.faces import DETECTORS, FaceBox, FaceConfig, detect_faces
from handler.forensics import decode_rgb
from training.prepare import face_config_from_pairs

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DATASETS = {"faces": SHARED_DATA / "faces", "congress": SHARED_DATA / "congress"}
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "face_detectors.json"
GREY = (128, 128, 128)

# A variant: RGB → (changed RGB, 2x3 affine matrix taking original pixel coordinates to the changed image's).
Variant = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _unchanged(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rgb, np.eye(2, 3)


def _rotated(degrees: float) -> Variant:
    """Turns the photo in the image plane on a canvas grown to hold all of it (grey corners): a tilted head."""

    def rotate(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = rgb.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        new_width, new_height = round(width * cos + height * sin), round(width * sin + height * cos)
        matrix[:, 2] += ((new_width - width) / 2.0, (new_height - height) / 2.0)
        changed = cv2.warpAffine(rgb, matrix, (new_width, new_height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=GREY)
        return changed, matrix

    return rotate


def _resized(x_factor: float, y_factor: float) -> Variant:
    """Resizes with area averaging: both factors for a smaller face, x only for a narrower (turned-like) one."""

    def resize(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = rgb.shape[:2]
        size = (max(1, round(width * x_factor)), max(1, round(height * y_factor)))
        changed = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return changed, np.array([[size[0] / width, 0.0, 0.0], [0.0, size[1] / height, 0.0]])

    return resize


def _side_light(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness ramp 0.15x (left) to 1.35x (right): one half of the face in shadow, the other washed out."""
    ramp = np.linspace(0.15, 1.35, rgb.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(rgb.astype(np.float32) * ramp, 0, 255).astype(np.uint8), np.eye(2, 3)


VARIANTS: dict[str, Variant] = {
    "original": _unchanged,
    "rotate_20": _rotated(20.0),
    "rotate_35": _rotated(35.0),
    "downscale_0.35": _resized(0.35, 0.35),
    "side_light": _side_light,
    "squeeze_0.7": _resized(0.7, 1.0),
}


@dataclass(frozen=True)
class TrueFace:
    """Where the one face of a photo is: centre and side lengths in pixels."""

    centre_x: float
    centre_y: float
    width: float
    height: float

    def moved(self, matrix: np.ndarray) -> TrueFace:
        """The face after an affine change of the photo (rotation keeps its sides, a resize scales them)."""
        centre_x, centre_y = matrix @ np.array([self.centre_x, self.centre_y, 1.0])
        x_scale, y_scale = np.hypot(matrix[0, 0], matrix[1, 0]), np.hypot(matrix[0, 1], matrix[1, 1])
        return TrueFace(float(centre_x), float(centre_y), self.width * x_scale, self.height * y_scale)

    def covered_by(self, box: FaceBox) -> bool:
        """The box holds the face's centre and is neither far smaller nor far larger than the face."""
        inside = box.x <= self.centre_x <= box.x + box.width and box.y <= self.centre_y <= box.y + box.height
        ratio = np.sqrt(box.area / max(self.width * self.height, 1e-9))
        return bool(inside and 0.5 <= ratio <= 2.0)


def true_face(first: list[FaceBox], second: list[FaceBox]) -> TrueFace | None:
    """The mean of two detectors' largest boxes when each one's centre lies inside the other, else None."""
    if not first or not second:
        return None
    a, b = TrueFace(*_centre_and_sides(first[0])), TrueFace(*_centre_and_sides(second[0]))
    if not (a.covered_by(second[0]) and b.covered_by(first[0])):
        return None
    return TrueFace((a.centre_x + b.centre_x) / 2, (a.centre_y + b.centre_y) / 2, (a.width + b.width) / 2,
                    (a.height + b.height) / 2)


def _centre_and_sides(box: FaceBox) -> tuple[float, float, float, float]:
    return box.x + box.width / 2.0, box.y + box.height / 2.0, float(box.width), float(box.height)


@dataclass
class Tally:
    """Counts for one detector, dataset and variant."""

    images: int = 0
    found: int = 0
    with_true_face: int = 0
    on_face: int = 0
    extra_boxes: int = 0
    seconds: float = 0.0

    def add(self, boxes: list[FaceBox], seconds: float, face: TrueFace | None) -> None:
        """Counts one searched photo."""
        self.images += 1
        self.found += bool(boxes)
        self.extra_boxes += max(0, len(boxes) - 1)
        self.seconds += seconds
        if face is not None:
            self.with_true_face += 1
            self.on_face += bool(boxes) and face.covered_by(boxes[0])

    def summary(self) -> dict[str, Any]:
        """Shares and means, rounded for the report."""
        return {
            "images": self.images,
            "found": round(self.found / max(self.images, 1), 4),
            "on_face": round(self.on_face / max(self.with_true_face, 1), 4),
            "images_with_true_face": self.with_true_face,
            "extra_boxes": round(self.extra_boxes / max(self.images, 1), 4),
            "ms_per_image": round(1000.0 * self.seconds / max(self.images, 1), 2),
        }


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure.

    Attributes:
        face_configs: the setting each detector runs with, by detector name.
        limit: at most this many photos per dataset, spread evenly over its manifest (None: all).
        datasets: folders with manifest.csv, by name.

    """

    face_configs: dict[str, FaceConfig]
    limit: int | None = None
    datasets: dict[str, Path] = field(default_factory=lambda: dict(DATASETS))


def photo_paths(folder: Path, limit: int | None) -> list[Path]:
    """The photos of a manifest, or `limit` of them evenly spread (London and AMFD come in blocks)."""
    with (folder / "manifest.csv").open(newline="") as handle:
        paths = [folder / row["path"] for row in csv.DictReader(handle)]
    if limit is not None and limit < len(paths):
        paths = [paths[index] for index in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def timed(rgb: np.ndarray, config: FaceConfig) -> tuple[list[FaceBox], float]:
    """The boxes found and the seconds it took."""
    started = time.perf_counter()
    boxes = detect_faces(rgb, config)
    return boxes, time.perf_counter() - started


def run(config: BenchmarkConfig) -> dict[str, Any]:
    """Searches every photo and variant with every detector; returns the JSON report."""
    cv2.setNumThreads(1)
    detectors = list(config.face_configs)
    results: list[dict[str, Any]] = []
    true_faces: dict[str, dict[str, int]] = {}
    warm = np.full((64, 64, 3), 128, np.uint8)
    for face_config in config.face_configs.values():
        detect_faces(warm, face_config)  # loads the cascade / nets outside the timings
    for dataset, folder in config.datasets.items():
        tallies = {(name, variant): Tally() for name in detectors for variant in VARIANTS}
        paths = photo_paths(folder, config.limit)
        agreed = 0
        for path in paths:
            rgb = decode_rgb(path.read_bytes())
            original = {name: timed(rgb, face_config) for name, face_config in config.face_configs.items()}
            face = true_face(*(original[name][0] for name in detectors[:2])) if len(detectors) >= 2 else None
            agreed += face is not None
            for variant, change in VARIANTS.items():
                changed, matrix = change(rgb)
                moved = None if face is None else face.moved(matrix)
                for name, face_config in config.face_configs.items():
                    boxes, seconds = original[name] if variant == "original" else timed(changed, face_config)
                    tallies[name, variant].add(boxes, seconds, moved)
        true_faces[dataset] = {"photos": len(paths), "with_true_face": agreed}
        results.extend({"detector": name, "dataset": dataset, "variant": variant, **tally.summary()}
                       for (name, variant), tally in tallies.items())
        print(f"{dataset}: {len(paths)} photos, {agreed} with a true face", flush=True)
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads()},
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.face_detectors", *sys.argv[1:]]),
        "limit": config.limit,
        "face_configs": {name: face_config.to_dict() for name, face_config in config.face_configs.items()},
        "true_faces": true_faces,
        "results": results,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """One row per dataset and variant; found / on face / extra boxes / ms per detector."""
    detectors = list(report["face_configs"])
    header = "| dataset | variant | " + " | ".join(
        f"{name} found | {name} on face | {name} extra | {name} ms" for name in detectors) + " |"
    lines = [header, "|" + "---|" * (2 + 4 * len(detectors))]
    by_key = {(row["dataset"], row["variant"], row["detector"]): row for row in report["results"]}
    for dataset in report["true_faces"]:
        for variant in VARIANTS:
            cells = []
            for name in detectors:
                row = by_key[dataset, variant, name]
                cells += [f"{row['found']:.1%}", f"{row['on_face']:.1%}", f"{row['extra_boxes']:.2f}",
                          f"{row['ms_per_image']:.1f}"]
            lines.append(f"| {dataset} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="photos per dataset, evenly spread (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="FACE_SETTING=VALUE",
                        help="a face setting for every detector (e.g. min_face_pixels=20); see training.prepare")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    base = face_config_from_pairs(args.set)
    report = run(BenchmarkConfig({name: replace(base, detector=name) for name in DETECTORS}, args.limit))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
