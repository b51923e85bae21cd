import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from handler.faces import FaceBox, FaceConfig, detect_faces
from handler.forensics import PreprocessConfig, decode_rgb
from tests.shared_faces import face_crop, face_photo
from training import pseudo_fakes
from training.dataset import FaceImageDataset, Sample
from training.pseudo_fakes import (
    LandmarkCache,
    PseudoFakeMaker,
    blend_landmarks,
    split_with_twins,
    twin,
    with_twins,
)
from training.sbi import SbiConfig, inner_face_box
from training.splits import DatasetSplit, assert_subject_disjoint

SBI = SbiConfig(enabled=True)


def reals(count: int, prefix: str = "r") -> list[Sample]:
    return [Sample(Path(f"/data/{prefix}{index}.png"), 0, subject=f"{prefix}-person{index // 2}")
            for index in range(count)]


@pytest.fixture(scope="module")
def crop_file(tmp_path_factory) -> Path:
    """A prepared crop (what training.prepare writes) of a shared photo, as a lossless PNG."""
    path = tmp_path_factory.mktemp("crops") / "real" / "face.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), cv2.cvtColor(face_crop("london/L002_neutral.jpg"), cv2.COLOR_RGB2BGR))
    return path


def test_a_twin_is_the_same_file_and_person_labelled_fake():
    real = Sample(Path("/d/a.png"), 0, "abc", "p1", "val")
    fake = twin(real)
    assert (fake.path, fake.sha256, fake.subject, fake.split) == (real.path, "abc", "p1", "val")
    assert fake.label == 1 and fake.pseudo_fake and not real.pseudo_fake


@pytest.mark.parametrize("share, expected", [(1.0, 10), (0.5, 5), (2.0, 20)])
def test_twins_per_real_follow_the_share(share, expected):
    fakes = [Sample(Path("/data/fake.png"), 1)]
    samples = with_twins(reals(10) + fakes, share, seed=0)
    twins = [s for s in samples if s.pseudo_fake]
    assert len(twins) == expected and samples[:11] == reals(10) + fakes  # real fakes are kept, never twinned
    assert {s.path for s in twins} <= {s.path for s in reals(10)}
    if share >= 1:
        assert {s.path for s in twins} == {s.path for s in reals(10)}  # every real at least once
    assert with_twins(reals(10), share, seed=0) == with_twins(reals(10), share, seed=0)


def test_each_split_gets_the_twins_of_its_own_reals():
    split = DatasetSplit(reals(8, "t"), reals(4, "v"), reals(4, "s"), "subject")
    twinned = split_with_twins(split, SbiConfig(enabled=True, fake_share=2.0), seed=0)
    assert twinned.method == "subject+sbi"
    assert sum(s.pseudo_fake for s in twinned.train) == 16
    for part, source in ((twinned.val, split.val), (twinned.test, split.test)):  # exactly one per real
        assert sorted(s.path for s in part if s.pseudo_fake) == sorted(s.path for s in source)
    assert_subject_disjoint(twinned)
    summary = twinned.summary()["splits"]
    assert summary["val"]["real"] == summary["val"]["fake"] == 4


def test_fixed_fakes_do_not_change_when_the_dataset_moves(crop_file, tmp_path):
    moved = tmp_path / "elsewhere" / "real" / "face.png"
    moved.parent.mkdir(parents=True)
    shutil.copyfile(crop_file, moved)
    rgb = decode_rgb(crop_file.read_bytes())
    here = PseudoFakeMaker(SBI, 0.3, fixed_seed=0, root=crop_file.parent.parent)
    there = PseudoFakeMaker(SBI, 0.3, fixed_seed=0, root=moved.parent.parent)
    first = here(rgb, twin(Sample(crop_file, 0)))
    assert np.array_equal(first, here(rgb, twin(Sample(crop_file, 0))))
    assert np.array_equal(first, there(rgb, twin(Sample(moved, 0))))
    other_seed = PseudoFakeMaker(SBI, 0.3, fixed_seed=1, root=crop_file.parent.parent)
    assert not np.array_equal(first, other_seed(rgb, twin(Sample(crop_file, 0))))


def test_training_fakes_are_new_every_time_yet_reproducible_from_the_torch_seed(crop_file):
    rgb = decode_rgb(crop_file.read_bytes())
    maker = PseudoFakeMaker(SBI, 0.3)
    sample = twin(Sample(crop_file, 0))
    torch.manual_seed(5)
    first, second = maker(rgb, sample), maker(rgb, sample)
    assert not np.array_equal(first, second)
    torch.manual_seed(5)
    assert np.array_equal(first, maker(rgb, sample))


def test_the_face_is_the_crop_centre_or_detected_in_a_whole_photo(crop_file):
    crop = decode_rgb(crop_file.read_bytes())
    assert PseudoFakeMaker(SBI, 0.3).face_box(crop) == inner_face_box(crop.shape, 0.3)
    photo = decode_rgb(face_photo("london/L002_neutral.jpg").read_bytes())
    assert PseudoFakeMaker(SBI, None).face_box(photo) == detect_faces(photo, FaceConfig())[0]
    blank = np.full((300, 300, 3), 128, np.uint8)  # no face: the centre, as a crop's face would be
    assert PseudoFakeMaker(SBI, None).face_box(blank) == inner_face_box(blank.shape, FaceConfig().margin)


def test_the_dataset_serves_a_twin_as_a_fake_tensor_of_the_same_file(crop_file):
    real = Sample(crop_file, 0)
    preprocess = PreprocessConfig(input_size=(64, 64))
    dataset = FaceImageDataset([real, twin(real)], preprocess,
                               pseudo_fakes=PseudoFakeMaker(SBI, 0.3, fixed_seed=0, root=crop_file.parent))
    (real_tensor, real_label), (fake_tensor, fake_label) = dataset[0], dataset[1]
    assert (real_label, fake_label) == (0, 1)
    assert real_tensor.shape == fake_tensor.shape and not torch.equal(real_tensor, fake_tensor)
    assert torch.equal(fake_tensor, dataset[1][0])  # fixed seed: the same fake every epoch
    with pytest.raises(ValueError, match="pseudo-fakes but no pseudo_fakes maker"):
        FaceImageDataset([twin(real)], preprocess)


LANDMARKS = SbiConfig(enabled=True, mask="landmarks")


def test_landmark_masks_look_the_landmarks_up_once_per_file(crop_file):
    rgb = decode_rgb(crop_file.read_bytes())
    maker = PseudoFakeMaker(LANDMARKS, 0.3, fixed_seed=0, root=crop_file.parent)
    sample = twin(Sample(crop_file, 0))
    first = maker(rgb, sample)
    assert np.array_equal(first, maker(rgb, sample))
    assert maker.landmarks.stats() == {"blends": 2, "fallbacks": 0, "computed": 1}
    ellipse = PseudoFakeMaker(SBI, 0.3, fixed_seed=0, root=crop_file.parent)
    assert not np.array_equal(first, ellipse(rgb, sample))  # the hull, not the ellipse, was pasted
    assert ellipse.landmarks.stats()["blends"] == 0  # the ellipse never asks for landmarks


def test_a_face_without_landmarks_is_blended_through_the_ellipse_and_counted(crop_file, monkeypatch):
    monkeypatch.setattr(pseudo_fakes, "face_landmarks", lambda rgb, box: None)
    rgb = decode_rgb(crop_file.read_bytes())
    sample = twin(Sample(crop_file, 0))
    maker = PseudoFakeMaker(LANDMARKS, 0.3, fixed_seed=0, root=crop_file.parent)
    fake = maker(rgb, sample)
    maker(rgb, sample)
    assert maker.landmarks.stats() == {"blends": 2, "fallbacks": 2, "computed": 1}
    assert np.array_equal(fake, PseudoFakeMaker(SBI, 0.3, fixed_seed=0, root=crop_file.parent)(rgb, sample))


def test_the_landmark_cache_drops_the_least_recently_used_file(monkeypatch):
    calls = []
    monkeypatch.setattr(pseudo_fakes, "blend_landmarks", lambda rgb, box, config: calls.append(rgb) or None)
    cache = LandmarkCache(capacity=2)
    box = FaceBox(0, 0, 4, 4)
    for key in ("a", "b", "a", "c", "a", "b"):  # "b" is dropped when "c" arrives; "a" stays in use
        cache.landmarks(key, np.zeros((4, 4, 3), np.uint8), box, LANDMARKS)
    assert len(calls) == cache.computed == 4 and cache.blends == cache.fallbacks == 6


def test_blend_landmarks_finds_the_face_points_only_for_landmark_masks(crop_file):
    rgb = decode_rgb(crop_file.read_bytes())
    box = inner_face_box(rgb.shape, 0.3)
    points = blend_landmarks(rgb, box, LANDMARKS)
    assert points is not None and points.shape == (68, 2)
    assert box.x < points[30, 0] < box.x + box.width and box.y < points[30, 1] < box.y + box.height  # the nose tip
    assert blend_landmarks(rgb, box, SBI) is None
