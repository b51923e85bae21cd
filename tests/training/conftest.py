"""Fixtures shared by the dataset and split tests: copies and re-arrangements of the tiny demo set."""

import shutil
from pathlib import Path

import pytest

from tests.training.dataset_helpers import images, write_csv


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


@pytest.fixture(scope="module")
def subject_manifest(tiny_dataset, tmp_path_factory) -> Path:
    """40 subjects × 3 images (120 files, 60 real + 60 fake); every subject has both real and fake images."""
    root = tmp_path_factory.mktemp("subjects")
    (root / "img").mkdir()
    sources = {0: images(tiny_dataset, "real"), 1: images(tiny_dataset, "fake")}
    rows, used = [], {0: 0, 1: 0}
    for subject in range(40):
        for label in (0, 0, 1) if subject % 2 else (0, 1, 1):
            source = sources[label][used[label] % 12]
            used[label] += 1
            name = f"img/s{subject:02d}_{len(rows):03d}.jpg"
            shutil.copyfile(source, root / name)
            rows.append([name, ("real", "fake")[label], f"person-{subject:02d}"])
    return write_csv(root / "faces.csv", ["path", "label", "subject"], rows)
