import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.shared_faces import face_crop
from training.dataset import Sample, scan_dataset
from training.evaluate import read_manifest_columns
from training.make_swaps import (
    MANIFEST_COLUMNS,
    FaceFacts,
    MakeSwapsConfig,
    SwapsError,
    choose_targets,
    donor_order,
    main,
    make_swaps,
)

from .dataset_helpers import write_csv

SIDE = 160
# (shared photo, subject, dataset, expression); the last row is a faceless grey image.
PHOTOS = [
    ("london/L001_neutral.jpg", "L001", "london", "neutral"),
    ("london/L002_neutral.jpg", "L002", "london", "neutral"),
    ("amfd/A1001_neutral.jpg", "A1001", "amfd", "neutral"),
    ("amfd/A1002_neutral.jpg", "A1002", "amfd", "neutral"),
    ("amfd/A1001_smiling.jpg", "A1001", "amfd", "smiling"),
]
FACELESS = "crops/blank.png"


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """A prepare-like manifest of five small real face crops (4 subjects, 2 sources) and one faceless image."""
    root = tmp_path_factory.mktemp("swap_source")
    (root / "crops").mkdir()
    rows = []
    for name, subject, dataset, expression in PHOTOS:
        path = f"crops/{Path(name).stem}.png"
        crop = cv2.resize(face_crop(name), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        rows.append([path, "real", subject, dataset, expression])
    cv2.imwrite(str(root / FACELESS), np.full((SIDE, SIDE, 3), 128, np.uint8))
    rows.append([FACELESS, "real", "nobody", "london", "neutral"])
    return write_csv(root / "manifest.csv", ["path", "label", "subject", "dataset", "expression"], rows)


@pytest.fixture(scope="module")
def made(crops, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("swaps")
    return output, make_swaps(MakeSwapsConfig(dataset=crops, output_dir=output, seed=3))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_face_gets_one_swap_per_family_from_another_subject(made, crops):
    output, report = made
    rows = read_rows(output / "manifest.csv")
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    reals = [row for row in rows if row["label"] == "real"]
    fakes = [row for row in rows if row["label"] == "fake"]
    assert len(reals) == 5 and len(fakes) == 10
    assert {row["family"] for row in fakes} == {"faceswap_poisson", "faceswap_feather"}
    subjects = {row[0]: row[2] for row in csv.reader(crops.open())}
    for fake in fakes:
        assert fake["donor"] != fake["subject"]
        assert subjects[str(Path(fake["donor_path"]).relative_to(crops.parent))] == fake["donor"]
        assert (output / fake["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # a donor from the target's own photo source and expression: the two London neutrals swap with each other
        if fake["subject"] in ("L001", "L002"):
            assert fake["donor"] == {"L001": "L002", "L002": "L001"}[fake["subject"]]
    # the reals are the originals, read in place by absolute path
    assert all(Path(row["path"]).is_absolute() and Path(row["path"]).parent == crops.parent / "crops" for row in reals)
    assert report["counts"]["swaps"] == {"faceswap_poisson": 5, "faceswap_feather": 5}


def test_a_swap_has_its_targets_size_and_differs_from_it(made):
    output, _ = made
    for fake in read_rows(output / "manifest.csv"):
        if fake["label"] == "fake":
            swapped, target = cv2.imread(str(output / fake["path"])), cv2.imread(fake["target_path"])
            assert swapped.shape == target.shape and np.abs(swapped.astype(int) - target).mean() > 1.0


def test_the_faceless_image_is_skipped_and_counted(made):
    output, report = made
    report_file = json.loads((output / "swaps.json").read_text())
    assert report_file["counts"]["skipped_by_reason"] == {"no_target_landmarks": 1}
    assert report_file["counts"]["images_not_used_as_donors"] == {"no_landmarks": 1}
    assert report_file["skipped"][0]["path"].endswith("blank.png")
    assert not any(row["path"].endswith("blank.png") or row["donor_path"].endswith("blank.png")
                   for row in read_rows(output / "manifest.csv"))
    assert report == report_file | {"seconds": report["seconds"]}


def test_the_manifest_is_read_by_the_dataset_and_evaluation_code(made):
    output, _ = made
    scanned = scan_dataset(output / "manifest.csv")
    assert [sum(sample.label == label for sample in scanned.samples) for label in (0, 1)] == [5, 10]
    families = read_manifest_columns(output / "manifest.csv", ["family", "dataset"])
    assert {values["family"] for values in families.values()} == {"real", "faceswap_poisson", "faceswap_feather"}
    assert all(sample.path in families for sample in scanned.samples)
    one_family = read_rows(output / "manifest_faceswap_feather.csv")
    assert {row["family"] for row in one_family} == {"real", "faceswap_feather"} and len(one_family) == 10


def test_the_same_seed_gives_identical_swaps(made, crops, tmp_path):
    output, _ = made
    make_swaps(MakeSwapsConfig(dataset=crops, output_dir=tmp_path, seed=3, families=("faceswap_feather",)))
    again = [row for row in read_rows(tmp_path / "manifest.csv") if row["label"] == "fake"]
    first = {row["path"]: row for row in read_rows(output / "manifest.csv")}
    for row in again:
        assert row == first[row["path"]]
        assert (tmp_path / row["path"]).read_bytes() == (output / row["path"]).read_bytes()


def test_donors_are_other_subjects_best_matched_first_and_fixed_by_the_seed():
    def sample(name: str, subject: str) -> Sample:
        return Sample(Path(f"/d/{name}.png"), 0, subject=subject)

    target = sample("t", "A")
    pool = [target, sample("a2", "A"), sample("b", "B"), sample("c", "C"), sample("d", "D"), sample("e", "E")]
    values = {Path("/d/t.png"): {"dataset": "x", "expression": "smile"}, Path("/d/b.png"): {"dataset": "y"},
              Path("/d/c.png"): {"dataset": "x", "expression": "neutral"},
              Path("/d/d.png"): {"dataset": "x", "expression": "smile"}, Path("/d/e.png"): {"dataset": "x"}}
    order = donor_order(target, pool, values, ("dataset", "expression"), seed=0)
    assert [s.subject for s in order][:1] == ["D"] and {s.subject for s in order[1:3]} == {"C", "E"}
    assert order[-1].subject == "B" and "A" not in {s.subject for s in order}
    assert donor_order(target, pool, values, ("dataset", "expression"), seed=0) == order
    unmatched = [donor_order(target, pool, {}, (), seed=seed)[0].subject for seed in range(20)]
    assert len(set(unmatched)) > 1  # the seed draws among equals


def test_limit_takes_a_seed_fixed_subset():
    reals = [Sample(Path(f"/d/{index}.png"), 0, subject=str(index)) for index in range(10)]
    assert choose_targets(reals, 4, seed=1) == choose_targets(reals, 4, seed=1)
    assert len(choose_targets(reals, 4, seed=1)) == 4 and choose_targets(reals, None, seed=1) == reals


def test_bad_requests_are_refused_by_name(crops, made, tmp_path):
    output, _ = made
    with pytest.raises(SwapsError, match="has no split column"):
        make_swaps(MakeSwapsConfig(dataset=crops, output_dir=tmp_path / "a", split="test"))
    with pytest.raises(SwapsError, match="already holds swaps.*--overwrite"):
        make_swaps(MakeSwapsConfig(dataset=crops, output_dir=output))
    with pytest.raises(SwapsError, match="--families deepfacelab: choose from"):
        MakeSwapsConfig(dataset=crops, output_dir=tmp_path, families=("deepfacelab",))
    no_subjects = write_csv(tmp_path / "plain.csv", ["path", "label"], [[str(crops.parent / "crops/L001_neutral.png"),
                                                                         "real"]])
    with pytest.raises(SwapsError, match="without a subject"):
        make_swaps(MakeSwapsConfig(dataset=no_subjects, output_dir=tmp_path / "b"))


def test_the_command_line_prints_a_summary(crops, tmp_path, capsys):
    main(["--dataset", str(crops), "--output-dir", str(tmp_path), "--limit", "2", "--families", "faceswap_poisson"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("2 targets → ") and "faceswap_poisson" in line and len(line.splitlines()) == 1


def test_a_donor_needs_landmarks_and_a_bare_forehead():
    points = np.zeros((68, 2), np.float32)
    assert FaceFacts(None, 0.0).donor_problem == "no_landmarks"
    assert FaceFacts(points, 0.4).donor_problem == "forehead_under_hair"
    assert FaceFacts(points, 0.95).donor_problem is None
