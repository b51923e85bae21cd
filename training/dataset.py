"""Labelled images → model inputs, through the same preprocessing the handler uses.

Three dataset layouts are accepted (see :data:`LAYOUTS`); :func:`scan_dataset` detects which one
it is given. Bad files are found once, up front, and reported; they never stop a run mid-epoch.
:func:`split_dataset` then makes train/val/test splits that keep every person (subject) on one
side only whenever subjects are known, because a detector that has seen a face in training
scores that face too well in validation.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from torch.utils.data import Dataset

from handler.forensics import (
    ImageDecodeError,
    PreprocessConfig,
    decode_rgb,
    model_input_from_bytes,
    model_input_from_rgb,
)

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

    """

    path: Path
    label: int
    sha256: str = ""
    subject: str | None = None
    split: str | None = None


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
            entry: dict[str, Any] = {"path": _relative_key(sample.path, self.root), "label": sample.label}
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


def _relative_key(path: Path, root: Path) -> str:
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
    root: Path, max_image_pixels: int, split: str | None = None
) -> tuple[list[Sample], list[SkippedFile]]:
    """Reads root/real/** and root/fake/**; both must exist and hold a readable image."""
    folders: list[Path] = []
    for name in CLASS_NAMES:  # both must exist before any decoding
        folder = _child_folder(root, name)
        if folder is None:
            raise DatasetError(f"{root} has no '{name}/' folder; expected {root}/real/ and {root}/fake/ with images")
        folders.append(folder)
    samples: list[Sample] = []
    skipped: list[SkippedFile] = []
    for label, (name, folder) in enumerate(zip(CLASS_NAMES, folders, strict=True)):
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
        if found == 0:
            raise DatasetError(
                f"class '{name}' has no readable image in {folder} ({unreadable} unreadable); "
                "a detector needs images of both classes"
            )
    return samples, skipped


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
    return source.is_dir() and all(_child_folder(source, name) is not None for name in CLASS_NAMES)


def _is_split_folders(source: Path) -> bool:
    if not source.is_dir():
        return False
    splits = _split_folders(source)
    return "train" in splits and ("val" in splits or "test" in splits)


def _is_manifest(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() == ".csv"


def _scan_folders(source: Path, max_image_pixels: int) -> ScannedDataset:
    if not source.is_dir():
        raise DatasetError(f"dataset folder {source} does not exist; the 'folders' layout needs real/ and fake/ in it")
    samples, skipped = _scan_class_folders(source, max_image_pixels)
    return ScannedDataset(samples, skipped, source, "folders")


def _scan_split_folders(source: Path, max_image_pixels: int) -> ScannedDataset:
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
            split_samples, split_skipped = _scan_class_folders(splits[split], max_image_pixels, split)
            samples += split_samples
            skipped += split_skipped
    return ScannedDataset(samples, skipped, source, "split_folders")


def _manifest_value(row: dict[str, str | None], column: str | None) -> str:
    return (row.get(column) or "").strip() if column else ""


def _scan_manifest(source: Path, max_image_pixels: int) -> ScannedDataset:
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
    for label, name in enumerate(CLASS_NAMES):
        if not any(sample.label == label for sample in samples):
            raise DatasetError(
                f"manifest {source} has no readable '{name}' image ({len(skipped)} rows skipped); "
                "a detector needs images of both classes"
            )
    return ScannedDataset(samples, skipped, root, "manifest")


class Layout(NamedTuple):
    """One way a dataset can be laid out on disk; a tuple whose last item is the description, like other registries.

    Attributes:
        detect: whether a source looks like this layout (used by layout="auto", in :data:`LAYOUTS` order).
        scan: reads the source into a :class:`ScannedDataset`, given the pixel limit.
        description: one line for `--help` and error messages.

    """

    detect: Callable[[Path], bool]
    scan: Callable[[Path, int], ScannedDataset]
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
        "a folder with real/ and fake/ sub-folders of images (any depth, any letter case)",
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
    source: Path, max_image_pixels: int = PreprocessConfig.max_image_pixels, layout: str = "auto"
) -> ScannedDataset:
    """Finds every labelled image of a dataset, decoding each once to weed out unreadable files.

    Args:
        source: the dataset folder, or the manifest CSV file itself.
        max_image_pixels: larger images are skipped as the handler would refuse them.
        layout: a name in :data:`LAYOUTS`, or "auto" to detect it.

    Raises:
        DatasetError: the layout is not recognised, a class folder is missing, the manifest lacks the path or
            label column, or a class has no readable image; the message names the folder or CSV file.

    """
    source = Path(source)
    if layout == "auto":
        layout = detect_layout(source)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; use 'auto' or one of:\n{describe_layouts()}")
    return LAYOUTS[layout].scan(source, max_image_pixels)


# ---------------------------------------------------------------------------------------------------------------------
# Splitting


@dataclass(frozen=True)
class DatasetSplit:
    """Train, validation and test samples, and how they were chosen.

    Attributes:
        method: "predefined" (the dataset's own splits), "subject" (no person in two splits), "stratified"
            (by class only, when subjects are unknown), or "predefined+subject" / "predefined+stratified"
            when the dataset prescribed some splits and the missing one(s) were carved out of its train split.

    """

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    method: str

    def parts(self) -> dict[str, list[Sample]]:
        """The three splits by name."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts per split and class.

        "subjects" is None where the data names no subjects; otherwise an image without one counts as one subject.
        """
        subjects_known = any(sample.subject is not None for part in self.parts().values() for sample in part)
        splits = {}
        for name, part in self.parts().items():
            counts = Counter(sample.label for sample in part)
            splits[name] = {
                "images": len(part),
                **{class_name: counts[label] for label, class_name in enumerate(CLASS_NAMES)},
                "subjects": len({_subject_key(sample) for sample in part}) if subjects_known else None,
            }
        return {"method": self.method, "images": sum(len(part) for part in self.parts().values()), "splits": splits}


def _subject_key(sample: Sample) -> str:
    """The group a sample is split with: its subject, or the file itself when the subject is unknown."""
    return f"subject:{sample.subject}" if sample.subject is not None else f"file:{sample.path.as_posix()}"


def _sort_key(sample: Sample) -> tuple[str, int, str, str]:
    return sample.path.as_posix(), sample.label, sample.subject or "", sample.split or ""


def assert_subject_disjoint(split: DatasetSplit) -> None:
    """Checks that no subject is in two splits, which would let validation and test reward memorised faces.

    Raises:
        DatasetError: naming up to five shared subjects and the splits they appear in.

    """
    where: dict[str, set[str]] = {}
    for name, part in split.parts().items():
        for sample in part:
            if sample.subject is not None:
                where.setdefault(sample.subject, set()).add(name)
    shared = sorted((subject, names) for subject, names in where.items() if len(names) > 1)
    if shared:
        examples = "; ".join(f"{subject!r} in {', '.join(n for n in SPLIT_NAMES if n in names)}"
                             for subject, names in shared[:5])
        raise DatasetError(
            f"{len(shared)} subject(s) appear in more than one split ({examples}); "
            "give each subject one split in the dataset, or leave splits out so they are made by subject"
        )


def _count(fraction: float, total: int) -> int:
    """Images for a split of `fraction`: at least one per class, so a small non-empty split can hold both."""
    return 0 if fraction == 0 else max(len(CLASS_NAMES), round(fraction * total))


def _stratified_split(
    samples: list[Sample], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    n_test, n_val = _count(test_fraction, len(samples)), _count(val_fraction, len(samples))
    try:
        rest, test = samples, []
        if n_test:
            rest, test = train_test_split(samples, test_size=n_test, random_state=seed,
                                          stratify=[s.label for s in samples])
        train, val = rest, []
        if n_val:
            train, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=[s.label for s in rest])
    except ValueError as error:
        raise DatasetError(
            f"cannot split {len(samples)} images into val {val_fraction:g} and test {test_fraction:g} with both "
            f"classes in each ({error}); add images or change the fractions"
        ) from error
    return list(train), list(val), list(test)


def _subject_split(
    samples: list[Sample], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Whole subjects per split, via stratified group folds: folds keep the class ratio, whole folds go to a split."""
    groups = [_subject_key(sample) for sample in samples]
    n_splits = max(2, round(1 / min(f for f in (val_fraction, test_fraction) if f > 0)))
    n_test = max(1, round(test_fraction * n_splits)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n_splits)) if val_fraction > 0 else 0
    if n_test + n_val >= n_splits:
        raise DatasetError(f"val {val_fraction:g} + test {test_fraction:g} leave no subjects for training")
    if len(set(groups)) < n_splits:
        raise DatasetError(
            f"only {len(set(groups))} subjects; a subject split with val {val_fraction:g} and test "
            f"{test_fraction:g} needs at least {n_splits}; add subjects or raise the fractions"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold_indices = [held for _, held in folds.split(np.zeros(len(samples)), [s.label for s in samples], groups)]
    bounds = (0, n_test, n_test + n_val, n_splits)
    test, val, train = (
        [samples[i] for i in sorted(i for fold in fold_indices[start:stop] for i in fold)]
        for start, stop in pairwise(bounds)
    )
    return train, val, test


def _split_by_method(
    samples: list[Sample], val_fraction: float, test_fraction: float, seed: int
) -> tuple[tuple[list[Sample], list[Sample], list[Sample]], str]:
    if any(sample.subject is not None for sample in samples):
        return _subject_split(samples, val_fraction, test_fraction, seed), "subject"
    return _stratified_split(samples, val_fraction, test_fraction, seed), "stratified"


def _predefined_split(
    samples: list[Sample], val_fraction: float, test_fraction: float, seed: int
) -> tuple[tuple[list[Sample], list[Sample], list[Sample]], str]:
    """The dataset's own splits; a val or test split it lacks is carved out of its train split."""
    given = {name: [s for s in samples if s.split == name] for name in SPLIT_NAMES}
    # Fractions are of the whole dataset, so a carved test split is as large as it would have been otherwise.
    carve = {name: fraction * len(samples) / max(1, len(given["train"]))
             for name, fraction in (("val", val_fraction), ("test", test_fraction)) if not given[name] and fraction > 0}
    if not carve:
        return (given["train"], given["val"], given["test"]), "predefined"
    if sum(carve.values()) >= 1:
        raise DatasetError(
            f"the dataset's train split ({len(given['train'])} images) is too small to carve "
            f"{' and '.join(carve)} out of it; add a {' and a '.join(carve)} split to the dataset"
        )
    (train, val, test), method = _split_by_method(given["train"], carve.get("val", 0.0), carve.get("test", 0.0), seed)
    return (train, given["val"] or val, given["test"] or test), f"predefined+{method}"


def split_dataset(
    samples: Sequence[Sample], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> DatasetSplit:
    """Train/val/test split that never puts one subject in two splits and keeps the real:fake ratio.

    The method depends on what the data says: its own splits if every sample has one ("predefined"; a
    missing val or test split is carved out of train, see :class:`DatasetSplit`); else whole subjects per
    split if any sample names its subject ("subject"; a sample without one is its own subject); else a
    split stratified by class ("stratified"). Samples are sorted first, so the result depends only on
    the samples and the seed, not on their order.

    Args:
        samples: the scanned samples.
        val_fraction: share of all images for validation, in (0, 1).
        test_fraction: share of all images for the final test, in [0, 1); 0 leaves test empty.
        seed: the same seed and samples give the same split.

    Raises:
        ValueError: the fractions are out of range.
        DatasetError: some samples have a split and others not, or a split would lack a class.

    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need 0 < val_fraction < 1, 0 <= test_fraction < 1 and a sum below 1; got {val_fraction}, {test_fraction}"
        )
    ordered = sorted(samples, key=_sort_key)
    with_split = sum(sample.split is not None for sample in ordered)
    if with_split == len(ordered):
        (train, val, test), method = _predefined_split(ordered, val_fraction, test_fraction, seed)
    elif with_split:
        example = next(sample.path for sample in ordered if sample.split is None)
        raise DatasetError(
            f"{with_split} of {len(ordered)} images have a split and the others not (e.g. {example}); "
            "give every manifest row a split, or none so that splits are made by subject"
        )
    else:
        (train, val, test), method = _split_by_method(ordered, val_fraction, test_fraction, seed)
    result = DatasetSplit(train, val, test, method)
    _check_both_classes(result, required=("train", "val", *(("test",) if test_fraction > 0 else ())))
    return result


def _check_both_classes(split: DatasetSplit, required: Sequence[str]) -> None:
    for name, part in split.parts().items():
        if not part and name not in required:
            continue
        counts = Counter(sample.label for sample in part)
        missing = [class_name for label, class_name in enumerate(CLASS_NAMES) if counts[label] == 0]
        if missing:
            have = ", ".join(f"{counts[label]} {class_name}" for label, class_name in enumerate(CLASS_NAMES))
            raise DatasetError(
                f"the {name} split ({split.method}) has no {' and no '.join(missing)} image ({have}); "
                "add images (or subjects) of that class, or change val_fraction/test_fraction"
            )


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

    """

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: PreprocessConfig,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        labels: Sequence[int] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(samples):
            raise ValueError(f"got {len(labels)} labels for {len(samples)} samples; give one label per sample")
        self.samples = list(samples)
        self.preprocess = preprocess
        self.augment = augment
        self.labels = None if labels is None else [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        label = sample.label if self.labels is None else self.labels[index]
        data = sample.path.read_bytes()
        if self.augment is None:
            return model_input_from_bytes(data, self.preprocess), label
        rgb = self.augment(decode_rgb(data, self.preprocess.max_image_pixels))
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise TypeError(f"augment must return a uint8 RGB array [H, W, 3]; got {getattr(rgb, 'shape', type(rgb))}"
                            f" {getattr(rgb, 'dtype', '')}")
        return model_input_from_rgb(np.ascontiguousarray(rgb), self.preprocess), label
