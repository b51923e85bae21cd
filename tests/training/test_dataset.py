import shutil

import pytest
import torch

from handler.forensics import PreprocessConfig, model_input_from_bytes
from training.dataset import DatasetError, FaceImageDataset, scan_image_folder, stratified_split


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def test_scan_finds_both_classes_and_ignores_non_images(tiny_dataset):
    scanned = scan_image_folder(tiny_dataset)
    assert sorted(s.label for s in scanned.samples) == [0] * 12 + [1] * 12
    assert scanned.skipped == []  # manifest.csv and the stamp are not images, not "skipped"


def test_corrupt_and_empty_files_are_skipped_counted_and_named(dataset_copy):
    (dataset_copy / "fake" / "truncated.jpg").write_bytes((dataset_copy / "fake" / "fake_00000.jpg").read_bytes()[:300])
    (dataset_copy / "real" / "empty.png").write_bytes(b"")
    (dataset_copy / "real" / "text.jpg").write_text("not an image")
    scanned = scan_image_folder(dataset_copy)
    assert len(scanned.samples) == 24
    assert sorted(s.path.name for s in scanned.skipped) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all(s.reason for s in scanned.skipped)


def test_a_class_without_readable_images_stops_at_once_naming_the_folder(dataset_copy):
    for path in (dataset_copy / "fake").glob("*.jpg"):
        path.write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"class 'fake' has no readable image in .*fake"):
        scan_image_folder(dataset_copy)


def test_missing_class_folder_is_named(tmp_path):
    (tmp_path / "real").mkdir()
    with pytest.raises(DatasetError, match="has no 'fake/' folder"):
        scan_image_folder(tmp_path)


def test_fingerprint_changes_with_content(dataset_copy):
    before = scan_image_folder(dataset_copy).fingerprint()
    assert scan_image_folder(dataset_copy).fingerprint() == before
    target = dataset_copy / "real" / "real_00003.jpg"
    target.write_bytes((dataset_copy / "real" / "real_00004.jpg").read_bytes())
    assert scan_image_folder(dataset_copy).fingerprint() != before


def test_split_is_stratified_disjoint_and_seeded(tiny_dataset):
    samples = scan_image_folder(tiny_dataset).samples
    train, val = stratified_split(samples, 0.25, seed=0)
    assert len(val) == 6 and sum(s.label for s in val) == 3
    assert not {s.path for s in train} & {s.path for s in val}
    assert stratified_split(samples, 0.25, seed=0)[1] == val


def test_dataset_item_is_the_shared_preprocessing_output(tiny_dataset):
    config = PreprocessConfig(input_size=(64, 64))
    samples = scan_image_folder(tiny_dataset).samples
    tensor, label = FaceImageDataset(samples, config)[3]
    assert label == samples[3].label
    assert torch.equal(tensor, model_input_from_bytes(samples[3].path.read_bytes(), config))


def test_flip_augmentation_mirrors_rgb(tiny_dataset):
    config = PreprocessConfig(input_size=(64, 64))
    sample = scan_image_folder(tiny_dataset).samples[:1]
    plain = FaceImageDataset(sample, config)[0][0]
    flipped = plain.flip(-1)
    augmented = FaceImageDataset(sample, config, horizontal_flip=True)
    torch.manual_seed(0)
    seen = {bool(torch.allclose(augmented[0][0], flipped, atol=1e-5)) for _ in range(12)}
    assert seen == {True, False}
