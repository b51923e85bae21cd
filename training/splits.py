"""Train / validation / test splits that keep every person (subject) on one side only.

A detector that has seen a face in training scores that face too well in validation, so whenever
subjects are known whole subjects are assigned to a split (scikit-learn's StratifiedGroupKFold);
predefined splits are used as given, and otherwise the split is stratified by class.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from training.dataset import CLASS_NAMES, SPLIT_NAMES, DatasetError, Sample


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
    samples: Sequence[Sample], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
    classes: Sequence[str] = CLASS_NAMES,
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
        classes: the classes every split must contain: both, or ("real",) when fakes are made per split later
            (self-blended images, see training.pseudo_fakes).

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
    _check_classes(result, required=("train", "val", *(("test",) if test_fraction > 0 else ())), classes=classes)
    return result


def _check_classes(split: DatasetSplit, required: Sequence[str], classes: Sequence[str]) -> None:
    for name, part in split.parts().items():
        if not part and name not in required:
            continue
        counts = Counter(sample.label for sample in part)
        missing = [class_name for label, class_name in enumerate(CLASS_NAMES)
                   if counts[label] == 0 and class_name in classes]
        if missing:
            have = ", ".join(f"{counts[label]} {class_name}" for label, class_name in enumerate(CLASS_NAMES))
            raise DatasetError(
                f"the {name} split ({split.method}) has no {' and no '.join(missing)} image ({have}); "
                "add images (or subjects) of that class, or change val_fraction/test_fraction"
            )


SPLITS_FILENAME = "splits.csv"
SPLIT_COLUMNS = ("path", "label", "subject", "split")


def _source_columns(manifest: Path | None) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Extra columns of the source manifest (groups such as dataset or expression), by normalised file path."""
    if manifest is None or not manifest.is_file() or manifest.suffix.lower() != ".csv":
        return [], {}
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        extra = [name for name in reader.fieldnames or [] if name and name.strip().lower() not in SPLIT_COLUMNS]
        path_column = next((name for name in reader.fieldnames or [] if name and name.strip().lower() == "path"), None)
        rows = {}
        for row in reader:
            if path_column and row.get(path_column):
                key = os.path.normpath(manifest.parent / row[path_column].strip())
                rows[key] = {name: row.get(name) or "" for name in extra}
    return extra, rows


def write_split_manifest(split: DatasetSplit, path: Path, source_manifest: Path | None = None) -> Path:
    """Writes the run's split as a manifest (path,label,subject,split + the source manifest's other columns).

    `python -m training.evaluate --dataset RUN/splits.csv --split test` then scores exactly the images the
    run held out, with their groups. Self-blended twins are not files, so they are left out; evaluate
    makes them again with --sbi.
    """
    extra, source_rows = _source_columns(source_manifest)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*SPLIT_COLUMNS, *extra])
        for name, part in split.parts().items():
            for sample in part:
                if sample.pseudo_fake:
                    continue
                groups = source_rows.get(os.path.normpath(sample.path), {})
                writer.writerow([sample.path.resolve().as_posix(), CLASS_NAMES[sample.label], sample.subject or "",
                                 name, *(groups.get(column, "") for column in extra)])
    return path
