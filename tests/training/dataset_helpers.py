"""Small builders shared by the dataset and split tests."""

import csv
from pathlib import Path

from training.splits import DatasetSplit

SPLITS = ("train", "val", "test")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def images(root: Path, class_name: str) -> list[Path]:
    return sorted((root / class_name).glob("*.jpg"))


def subjects_by_split(split: DatasetSplit) -> dict[str, set[str]]:
    return {name: {s.subject for s in part} for name, part in split.parts().items()}
