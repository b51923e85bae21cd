"""Labelled images → model inputs, through the same preprocessing the handler uses.

Three dataset layouts are accepted (see :data:`LAYOUTS`); :func:`scan_dataset` detects which one
it is given. Bad files are found once, up front, and reported; they never stop a run mid-epoch.
:func:`training.splits.split_dataset` then divides the samples without putting a person in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from handler.forensics import (
    ImageDecodeError,
    PreprocessConfig,
    decode_for_model,
    decode_rgb,
    model_input_from_bytes,
    model_input_from_rgb,
)
from training.blend_map import BLEND_MAP_TARGETS, blend_map_target

CLASS_NAMES = ("real", "fake")
SPLIT_NAMES = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Folder names and manifest values that mean a split; datasets in the wild spell them all of these ways.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
LABEL_ALIASES = {"real": 0, "fake": 1, "0": 0, "1": 1}


class DatasetError(ValueError):
    """The dataset cannot be trained on as it is; the message names the folder or file and the fix."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file.

    Attributes:
        path: the image file.
        label: index into :data:`CLASS_NAMES` (0 real, 1 fake).
        sha256: SHA-256 of the bytes that were checked during the scan.
        subject: the person shown, when the dataset says; images of one subject never straddle splits.
        split: "train", "val" or "test" when the dataset prescribes it, else None.
        pseudo_fake: the item is a self-blended fake made from the real image at `path` when it is loaded
            (training.pseudo_fakes); its label is then fake.

    """

    path: Path
    label: int
    sha256: str = ""
    subject: str | None = None
    split: str | None = None
    pseudo_fake: bool = False


@dataclass(frozen=True)
class SkippedFile:
    """A file (or manifest row) left out of training, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ScannedDataset:
    """The usable samples of a dataset and the files that were skipped.

    Attributes:
        samples: readable, labelled images, in a deterministic order.
        skipped: unreadable files and bad manifest rows, with the reason for each.
        root: the folder sample paths are reported relative to (the dataset folder, or the CSV's folder).
        layout: the name in :data:`LAYOUTS` the dataset was read as.

    """

    samples: list[Sample]
    skipped: list[SkippedFile]
    root: Path
    layout: str

    def fingerprint(self) -> str:
        """Hash of every used file's relative path, label, subject, split and content: same data, same fingerprint.

        Paths are taken relative to :attr:`root`, so moving or copying the dataset keeps the fingerprint;
        only manifest rows with absolute paths outside the CSV's folder contribute their absolute path.
        """
        entries = []
        for sample in self.samples:
            entry: dict[str, Any] = {"path": relative_key(sample.path, self.root), "label": sample.label}
            if sample.subject is not None:
                entry["subject"] = sample.subject
            if sample.split is not None:
                entry["split"] = sample.split
            entries.append((json.dumps(entry, sort_keys=True), sample.sha256))
        digest = hashlib.sha256()
        for description, sha256 in sorted(entries):
            digest.update(description.encode())
            digest.update(bytes.fromhex(sha256))
        return digest.hexdigest()


def relative_key(path: Path, root: Path) -> str:
    """A file's name within its dataset: relative to `root` when inside it, else the full path.

    The fingerprint and the fixed self-blended fakes (training.pseudo_fakes, training.evaluate) key files by
    it, so a moved dataset keeps both.
    """
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# ---------------------------------------------------------------------------------------------------------------------
# Scanning


def _checked_sha256(path: Path, max_image_pixels: int) -> str:
    """Decodes the file once, so that unreadable images are found now rather than mid-epoch.

    Raises:
        ImageDecodeError: the bytes are not a readable image.
        OSError: the file cannot be read.

    """
    data = path.read_bytes()
    decode_rgb(data, max_image_pixels)
    return hashlib.sha256(data).hexdigest()


def _child_folder(parent: Path, name: str) -> Path | None:
    """The sub-folder called `name` in any letter case, as datasets from different sources capitalise differently."""
    matches = sorted(child for child in parent.iterdir() if child.is_dir() and child.name.lower() == name)
    return matches[0] if matches else None


def _scan_class_folders(
    root: Path, max_image_pixels: int, required: tuple[str, ...], split: str | None = None
) -> tuple[list[Sample], list[SkippedFile]]:
    """Reads root/real/** and root/fake/**; each class in `required` must exist and hold a readable image."""
    folders: dict[str, Path] = {}
    for name in CLASS_NAMES:  # required ones must exist before any decoding
        folder = _child_folder(root, name)
        if folder is None and name in required:
            expected = " and ".join(f"{root}/{n}/" for n in required)
            raise DatasetError(f"{root} has no '{name}/' folder; expected {expected} with images")
        if folder is not None:
            folders[name] = folder
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    for name, folder in folders.items():
        label = CLASS_NAMES.index(name)
        found, unreadable = 0, 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                sha256 = _checked_sha256(path, max_image_pixels)
            except (ImageDecodeError, OSError) as error:
                skipped.append(SkippedFile(path, str(error)))
                unreadable += 1
                continue
            samples.append(Sample(path, label, sha256, split=split))
            found += 1
        if found == 0 and name in required:
            raise DatasetError(
                f"class '{name}' has no readable image in {folder} ({unreadable} unreadable); "
                f"{_need(required)}"
            )
    return samples, skipped


def _need(required: tuple[str, ...]) -> str:
    """Why a class is required, for error messages."""
    if set(required) == set(CLASS_NAMES):
        return "a detector needs images of both classes"
    return f"this run needs {' and '.join(required)} images"


def _split_folders(root: Path) -> dict[str, Path]:
    """Sub-folders of root that name a split (Train, valid, Test, ...), by canonical split name."""
    found: dict[str, list[Path]] = {}
    for child in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split is not None and child.is_dir():
            found.setdefault(split, []).append(child)
    ambiguous = {split: folders for split, folders in found.items() if len(folders) > 1}
    if ambiguous:
        split, folders = next(iter(ambiguous.items()))
        raise DatasetError(
            f"{root} has several folders for the {split} split ({', '.join(f.name for f in folders)}); keep one"
        )
    return {split: folders[0] for split, folders in found.items()}


def _is_folders(source: Path) -> bool:
    return source.is_dir() and any(_child_folder(source, name) is not None for name in CLASS_NAMES)


def _is_split_folders(source: Path) -> bool:
    if not source.is_dir():
        return False
    splits = _split_folders(source)
    return "train" in splits and ("val" in splits or "test" in splits)


def _is_manifest(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() == ".csv"


def _scan_folders(source: Path, max_image_pixels: int, required: tuple[str, ...]) -> ScannedDataset:
    if not source.is_dir():
        raise DatasetError(f"dataset folder {source} does not exist; the 'folders' layout needs real/ and fake/ in it")
    samples, skipped = _scan_class_folders(source, max_image_pixels, required)
    return ScannedDataset(samples, skipped, source, "folders")


def _scan_split_folders(source: Path, max_image_pixels: int, required: tuple[str, ...]) -> ScannedDataset:
    if not source.is_dir():
        raise DatasetError(f"dataset folder {source} does not exist")
    splits = _split_folders(source)
    if "train" not in splits or not ({"val", "test"} & set(splits)):
        raise DatasetError(
            f"{source} needs a train folder (train/training) and a val (val/valid/validation) or test (test/testing) "
            f"folder, each with real/ and fake/ inside; found {sorted(p.name for p in source.iterdir() if p.is_dir())}"
        )
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    for split in SPLIT_NAMES:
        if split in splits:
            split_samples, split_skipped = _scan_class_folders(splits[split], max_image_pixels, required, split)
            samples += split_samples
            skipped += split_skipped
    return ScannedDataset(samples, skipped, source, "split_folders")


def _manifest_value(row: dict[str, str | None], column: str | None) -> str:
    return (row.get(column) or "").strip() if column else ""


def _scan_manifest(source: Path, max_image_pixels: int, required: tuple[str, ...]) -> ScannedDataset:
    """Reads the CSV; bad rows are skipped with their row number (the header is row 1, as in a spreadsheet)."""
    if not source.is_file():
        raise DatasetError(f"manifest {source} does not exist; the 'manifest' layout needs the CSV file itself")
    root = source.parent
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    first_row: dict[Path, int] = {}
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: spreadsheets add a BOM
            reader = csv.DictReader(handle)
            found = [name.strip() for name in reader.fieldnames or [] if name is not None]
            columns = {name.strip().lower(): name for name in reader.fieldnames or [] if name is not None}
            missing = [name for name in ("path", "label") if name not in columns]
            if missing:
                raise DatasetError(
                    f"manifest {source} has no {' or '.join(repr(m) for m in missing)} column; found columns "
                    f"{found}; expected a header with path,label and optionally subject,split"
                )
            for number, row in enumerate(reader, start=2):
                cell = _manifest_value(row, columns["path"])
                path = Path(os.path.normpath(root / cell))  # normalised so ./a.jpg and a.jpg are one file
                label_text = _manifest_value(row, columns["label"])
                split_text = _manifest_value(row, columns.get("split"))
                problem = None
                if not cell:
                    problem, path = "the path is empty", source
                elif label_text.lower() not in LABEL_ALIASES:
                    problem = f"label {label_text!r} is not one of real, fake, 0, 1"
                elif split_text and split_text.lower() not in SPLIT_ALIASES:
                    problem = f"split {split_text!r} is not one of train, val, validation, test"
                elif not path.is_file():
                    problem = f"file {cell} not found"
                elif path in first_row:
                    problem = f"the file is listed again (first on row {first_row[path]})"
                if problem is None:
                    try:
                        sha256 = _checked_sha256(path, max_image_pixels)
                    except (ImageDecodeError, OSError) as error:
                        problem = str(error)
                if problem is not None:
                    skipped.append(SkippedFile(path, f"{source.name} row {number}: {problem}"))
                    continue
                first_row[path] = number
                subject = _manifest_value(row, columns.get("subject")) or None
                split = SPLIT_ALIASES[split_text.lower()] if split_text else None
                samples.append(Sample(path, LABEL_ALIASES[label_text.lower()], sha256, subject, split))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"manifest {source} is not a readable UTF-8 CSV file: {error}") from error
    for name in required:
        if not any(sample.label == CLASS_NAMES.index(name) for sample in samples):
            raise DatasetError(
                f"manifest {source} has no readable '{name}' image ({len(skipped)} rows skipped); {_need(required)}"
            )
    return ScannedDataset(samples, skipped, root, "manifest")


class Layout(NamedTuple):
    """One way a dataset can be laid out on disk; a tuple whose last item is the description, like other registries.

    Attributes:
        detect: whether a source looks like this layout (used by layout="auto", in :data:`LAYOUTS` order).
        scan: reads the source into a :class:`ScannedDataset`, given the pixel limit and the classes that must
            have a readable image.
        description: one line for `--help` and error messages.

    """

    detect: Callable[[Path], bool]
    scan: Callable[[Path, int, tuple[str, ...]], ScannedDataset]
    description: str


LAYOUTS: dict[str, Layout] = {
    "manifest": Layout(
        _is_manifest,
        _scan_manifest,
        "a CSV file with columns path,label[,subject][,split]; paths relative to the CSV or absolute, "
        "labels real/fake or 0/1, splits train/val/test",
    ),
    "split_folders": Layout(
        _is_split_folders,
        _scan_split_folders,
        "a folder with Train/ and Validation/ (or val/, valid/) and/or Test/, each holding Real/ and Fake/ "
        "(any letter case); a missing val or test split is carved out of train",
    ),
    "folders": Layout(
        _is_folders,
        _scan_folders,
        "a folder with real/ and fake/ sub-folders of images (any depth, any letter case); real/ alone for "
        "real photos + SBI training",
    ),
}


def describe_layouts() -> str:
    """The accepted layouts, one per line, for `--help` and for errors on unrecognised datasets."""
    return "\n".join(f"  {name}: {layout.description}" for name, layout in LAYOUTS.items())


def detect_layout(source: Path) -> str:
    """The name of the layout `source` is in.

    Raises:
        DatasetError: source does not exist or matches no layout; the message lists the accepted ones.

    """
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"dataset {source} does not exist; expected one of these layouts:\n{describe_layouts()}")
    for name, layout in LAYOUTS.items():
        if layout.detect(source):
            return name
    found = sorted(child.name for child in source.iterdir()) if source.is_dir() else []
    contents = f" (it contains {found[:20]})" if source.is_dir() else ""
    raise DatasetError(f"{source} is not a dataset in a known layout{contents}; expected one of:\n{describe_layouts()}")


def scan_dataset(
    source: Path, max_image_pixels: int = PreprocessConfig.max_image_pixels, layout: str = "auto",
    required_classes: tuple[str, ...] = CLASS_NAMES,
) -> ScannedDataset:
    """Finds every labelled image of a dataset, decoding each once to weed out unreadable files.

    Args:
        source: the dataset folder, or the manifest CSV file itself.
        max_image_pixels: larger images are skipped as the handler would refuse them.
        layout: a name in :data:`LAYOUTS`, or "auto" to detect it.
        required_classes: classes that must have a readable image: both for a real-vs-fake dataset, ("real",)
            when the fakes are made on the fly (self-blended images).

    Raises:
        DatasetError: the layout is not recognised, a class folder is missing, the manifest lacks the path or
            label column, or a class has no readable image; the message names the folder or CSV file.

    """
    source = Path(source)
    if layout == "auto":
        layout = detect_layout(source)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; use 'auto' or one of:\n{describe_layouts()}")
    unknown = set(required_classes) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"required_classes must be names in {CLASS_NAMES}, got {sorted(unknown)}")
    return LAYOUTS[layout].scan(source, max_image_pixels, tuple(required_classes))


# ---------------------------------------------------------------------------------------------------------------------
# Model inputs


class FaceImageDataset(Dataset):
    """Yields (tensor [4, H, W], label). Without augmentation the tensor is exactly what the handler builds.

    Args:
        samples: the images to serve.
        preprocess: the preprocessing exported with the model.
        augment: RGB uint8 [H, W, 3] → RGB uint8 [H, W, 3], applied to the decoded image; the Laplacian channel
            is computed afterwards, so the edge map sees what it would see in a served image of that kind.
            It should draw randomness from torch's RNG, which DataLoader seeds per worker.
        labels: per-index labels that replace the samples' own, for fault injection (shuffled or noisy labels)
            without touching the samples.
        pseudo_fakes: makes the self-blended fake of a decoded real image for samples marked `pseudo_fake`
            (training.pseudo_fakes.PseudoFakeMaker); applied before `augment`, as a real fake arrives.
        blend_maps: a training.blend_map target ("boundary" or "region"): items become (tensor, label, map), the map
            float32 [H, W] at the model input's size, where the self-blend was pasted (zeros for other images). Needs
            a PseudoFakeMaker (its `with_mask`) and, when augmenting, an RgbAugmenter (its `with_map`).

    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: PreprocessConfig,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        labels: Sequence[int] | None = None,
        pseudo_fakes: Callable[[np.ndarray, Sample], np.ndarray] | None = None,
        blend_maps: str | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(samples):
            raise ValueError(f"got {len(labels)} labels for {len(samples)} samples; give one label per sample")
        if pseudo_fakes is None and any(sample.pseudo_fake for sample in samples):
            raise ValueError("samples include pseudo-fakes but no pseudo_fakes maker was given")
        self.samples = list(samples)
        self.preprocess = preprocess
        self.augment = augment
        self.labels = None if labels is None else [int(label) for label in labels]
        self.pseudo_fakes = pseudo_fakes
        if blend_maps is not None and blend_maps not in BLEND_MAP_TARGETS:  # fails here, not in a DataLoader worker
            raise ValueError(f"blend_map_target must be one of {list(BLEND_MAP_TARGETS)}, got {blend_maps!r}")
        self.blend_maps = blend_maps

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
        sample = self.samples[index]
        label = sample.label if self.labels is None else self.labels[index]
        data = sample.path.read_bytes()
        if self.blend_maps is not None:
            return self._with_blend_map(sample, label, data)
        if self.augment is None and not sample.pseudo_fake:
            return model_input_from_bytes(data, self.preprocess), label
        # Pseudo-fakes blend inside the face, so they need every pixel; augmented whole images decode as served.
        rgb = (decode_rgb(data, self.preprocess.max_image_pixels) if sample.pseudo_fake
               else decode_for_model(data, self.preprocess))
        if sample.pseudo_fake:
            assert self.pseudo_fakes is not None  # checked in __init__
            rgb = self.pseudo_fakes(rgb, sample)
        if self.augment is not None:
            rgb = self.augment(rgb)
        return self._model_input(rgb), label

    def _model_input(self, rgb: Any) -> torch.Tensor:
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise TypeError(f"augment must return a uint8 RGB array [H, W, 3]; got {getattr(rgb, 'shape', type(rgb))}"
                            f" {getattr(rgb, 'dtype', '')}")
        return model_input_from_rgb(np.ascontiguousarray(rgb), self.preprocess)

    def _with_blend_map(self, sample: Sample, label: int, data: bytes) -> tuple[torch.Tensor, int, torch.Tensor]:
        """The item and where its self-blend was pasted, moved through the same augmentation as the image."""
        assert self.blend_maps is not None
        rgb = (decode_rgb(data, self.preprocess.max_image_pixels) if sample.pseudo_fake
               else decode_for_model(data, self.preprocess))
        blend_map = np.zeros(rgb.shape[:2], dtype=np.float32)
        if sample.pseudo_fake:
            assert self.pseudo_fakes is not None  # checked in __init__
            rgb, mask = self.pseudo_fakes.with_mask(rgb, sample)  # type: ignore[attr-defined]
            blend_map = blend_map_target(mask, self.blend_maps)
        if self.augment is not None:
            rgb, blend_map = self.augment.with_map(rgb, blend_map)  # type: ignore[attr-defined]
        height, width = self.preprocess.input_size
        if blend_map.shape != (height, width):
            blend_map = cv2.resize(blend_map, (width, height), interpolation=cv2.INTER_AREA)
        return self._model_input(rgb), label, torch.from_numpy(np.ascontiguousarray(blend_map, dtype=np.float32))
