"""Labelled image folders → model inputs, through the same preprocessing the handler uses.

Bad files are found once, up front, and reported; they never stop a run mid-epoch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from handler.forensics import (
    ImageDecodeError,
    PreprocessConfig,
    decode_rgb,
    model_input_from_bytes,
    model_input_from_rgb,
)

CLASS_NAMES = ("real", "fake")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class DatasetError(ValueError):
    """The dataset cannot be trained on as it is; the message names the folder and the fix."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file, with the SHA-256 of the bytes that were checked."""

    path: Path
    label: int
    sha256: str = ""


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of training, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ScannedFolder:
    """The usable samples of a dataset folder and the files that were skipped."""

    samples: list[Sample]
    skipped: list[SkippedFile]

    def fingerprint(self) -> str:
        """Hash of every used file's relative path, label and content: same data, same fingerprint."""
        digest = hashlib.sha256()
        for sample in sorted(self.samples, key=lambda s: str(s.path)):
            digest.update(f"{sample.path.parent.name}/{sample.path.name}:{sample.label}:".encode())
            digest.update(bytes.fromhex(sample.sha256))
        return digest.hexdigest()


def _class_folder(root: Path, name: str) -> Path:
    matches = [child for child in root.iterdir() if child.is_dir() and child.name.lower() == name]
    if not matches:
        raise DatasetError(f"{root} has no '{name}/' folder; expected {root}/real/ and {root}/fake/ with images")
    return matches[0]


def scan_image_folder(root: Path, max_image_pixels: int = PreprocessConfig.max_image_pixels) -> ScannedFolder:
    """Finds root/real/* and root/fake/*, decoding each image once to weed out unreadable files.

    Raises:
        DatasetError: the folder or a class folder is missing, or a class has no readable image.

    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    folders = [_class_folder(root, name) for name in CLASS_NAMES]  # both must exist before any decoding
    for label, (name, folder) in enumerate(zip(CLASS_NAMES, folders, strict=True)):
        found = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                data = path.read_bytes()
                decode_rgb(data, max_image_pixels)
            except (ImageDecodeError, OSError) as error:
                skipped.append(SkippedFile(path, str(error)))
                continue
            samples.append(Sample(path, label, hashlib.sha256(data).hexdigest()))
            found += 1
        if found == 0:
            raise DatasetError(
                f"class '{name}' has no readable image in {folder} "
                f"({sum(1 for s in skipped if folder in s.path.parents)} unreadable); a detector needs both classes"
            )
    return ScannedFolder(samples, skipped)


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Train/validation split that keeps the real:fake ratio in both parts."""
    labels = [sample.label for sample in samples]
    train, val = train_test_split(samples, test_size=val_fraction, random_state=seed, stratify=labels)
    return list(train), list(val)


class FaceImageDataset(Dataset):
    """Yields (tensor [4, H, W], label). Without augmentation the tensor is exactly what the handler builds."""

    def __init__(self, samples: list[Sample], preprocess: PreprocessConfig, horizontal_flip: bool = False) -> None:
        self.samples = samples
        self.preprocess = preprocess
        self.horizontal_flip = horizontal_flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        data = sample.path.read_bytes()
        if not self.horizontal_flip:
            return model_input_from_bytes(data, self.preprocess), sample.label
        rgb = decode_rgb(data, self.preprocess.max_image_pixels)
        # torch's RNG, not a private one: DataLoader seeds it per worker, so workers do not repeat each other.
        if torch.rand(()) < 0.5:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        return model_input_from_rgb(rgb, self.preprocess), sample.label
