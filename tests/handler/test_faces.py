"""handler.faces on the shared real photos: where faces are found, and how the crop around one is cut."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from handler import mtcnn
from handler.faces import (
    CASCADES,
    DETECTORS,
    FaceBox,
    FaceConfig,
    crop_box,
    crop_face,
    detect_faces,
    detect_faces_with_landmarks,
)
from handler.forensics import decode_rgb
from tests.handler.face_images import ONE_FACE_PHOTOS, exif_rotated, no_face, photo_rgb, two_faces

EYES = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_eye.xml"))


def eyes_in(rgb: np.ndarray) -> list[FaceBox]:
    found = EYES.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(20, 20))
    return [FaceBox(*map(int, box)) for box in (found if len(found) else [])]


def inside(inner: FaceBox, outer: FaceBox) -> bool:
    return (outer.x <= inner.x and inner.x + inner.width <= outer.x + outer.width
            and outer.y <= inner.y and inner.y + inner.height <= outer.y + outer.height)


@pytest.mark.parametrize("name", ONE_FACE_PHOTOS)
def test_one_face_is_found_and_covers_the_face(face_photos_dir, name):
    rgb = photo_rgb(face_photos_dir, name)
    [face] = detect_faces(rgb, FaceConfig())
    height, width = rgb.shape[:2]
    # The eye cascade, another detector, finds both eyes inside the box's upper part: the box is on the face.
    upper = FaceBox(face.x, face.y, face.width, round(face.height * 0.65))
    assert sum(inside(eye, upper) for eye in eyes_in(rgb)) == 2
    # These portraits are centred, head and shoulders: the face is in the middle and a sizeable part of the photo.
    assert abs(face.x + face.width / 2 - width / 2) < 0.1 * width
    assert 0.25 < face.width / min(height, width) < 0.8 and face.width == face.height


def test_a_blank_or_faceless_image_has_no_face():
    assert detect_faces(np.full((480, 640, 3), 200, np.uint8), FaceConfig()) == []
    assert detect_faces(no_face(), FaceConfig()) == []


def test_two_people_give_two_faces_largest_first(face_photos_dir):
    canvas = two_faces(face_photos_dir)
    faces = detect_faces(canvas, FaceConfig())
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    left_photo_width = 600  # two_faces puts the 768x768 photo, shrunk to 600 px, on the left
    assert faces[0].x + faces[0].width <= left_photo_width < faces[1].x  # the larger face is the left person's
    assert detect_faces(canvas, FaceConfig(max_faces=1)) == faces[:1]


def test_boxes_are_in_full_resolution_pixels_whatever_the_detection_size(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    [coarse] = detect_faces(rgb, FaceConfig(detection_size=256))
    [fine] = detect_faces(rgb, FaceConfig(detection_size=768))
    centre = np.array([fine.x + fine.width / 2, fine.y + fine.height / 2])
    assert np.abs(np.array([coarse.x + coarse.width / 2, coarse.y + coarse.height / 2]) - centre).max() < 0.05 * 768
    assert abs(coarse.width - fine.width) < 0.15 * fine.width


def test_a_face_too_small_for_the_settings_is_ignored(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    assert len(detect_faces(rgb, FaceConfig())) == 1
    assert detect_faces(rgb, FaceConfig(min_face_pixels=700)) == []  # the face is ~350 px in a 768 px photo
    assert detect_faces(rgb, FaceConfig(min_face_fraction=0.9)) == []


def test_exif_rotation_is_undone_before_detection(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    assert detect_faces(decode_rgb(exif_rotated(rgb)), FaceConfig()) == detect_faces(rgb, FaceConfig())


@pytest.mark.parametrize("margin", [0.0, 0.3, 0.5])
def test_crop_box_is_a_square_centred_on_the_face(margin):
    face = FaceBox(300, 200, 100, 120)
    region = crop_box(face, (1000, 1000, 3), margin)
    assert region.width == region.height == round(120 * (1 + 2 * margin))
    assert abs(region.x + region.width / 2 - 350) <= 0.5 and abs(region.y + region.height / 2 - 260) <= 0.5


@pytest.mark.parametrize(("face", "expected"), [
    (FaceBox(0, 0, 100, 100), FaceBox(0, 0, 160, 160)),          # top-left corner: shifted right and down
    (FaceBox(520, 370, 100, 100), FaceBox(480, 320, 160, 160)),  # bottom-right corner: shifted left and up
    (FaceBox(250, 0, 100, 100), FaceBox(220, 0, 160, 160)),      # top edge: centred across, shifted down
])
def test_crop_box_shifts_inside_the_image_and_keeps_its_size(face, expected):
    assert crop_box(face, (480, 640, 3), 0.3) == expected


def test_crop_box_of_an_image_smaller_than_the_square_is_clipped_to_the_image():
    region = crop_box(FaceBox(10, 10, 80, 80), (100, 300, 3), 0.5)
    assert region.width == region.height == 100 and region.y == 0 and 0 <= region.x <= 200


def test_crop_face_cuts_the_crop_box(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    [face] = detect_faces(rgb, FaceConfig())
    region = crop_box(face, rgb.shape, 0.3)
    crop = crop_face(rgb, face, 0.3)
    assert crop.shape == (region.height, region.width, 3) and crop.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(crop, rgb[region.y:region.y + region.height, region.x:region.x + region.width])


@pytest.mark.parametrize(("field", "value"), [
    ("cascade", "profileface"), ("margin", -0.1), ("margin", 2.5), ("min_face_fraction", 1.0),
    ("min_face_pixels", 0), ("detection_size", 32), ("scale_factor", 1.0), ("min_neighbors", -1), ("max_faces", 0),
    ("detector", "dlib"), ("min_confidence", 1.0), ("min_confidence", -0.1),
])
def test_face_config_refuses_values_out_of_range_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"face setting '{field}'"):
        FaceConfig(**{field: value})


def test_face_config_round_trips_and_refuses_unknown_keys():
    config = FaceConfig(cascade=sorted(CASCADES)[0], margin=0.5, max_faces=3)
    assert FaceConfig.from_dict(config.to_dict()) == config
    assert FaceConfig.from_dict({}) == FaceConfig()
    with pytest.raises(ValueError, match=r"unknown face settings \['marign'\]"):
        FaceConfig.from_dict({**config.to_dict(), "marign": 0.2})


def test_an_unknown_detector_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"face setting 'detector' must be one of \['haar', 'mtcnn'\], got 'retina'"):
        FaceConfig.from_dict({"detector": "retina"})
    assert sorted(DETECTORS) == ["haar", "mtcnn"]


def test_metadata_written_before_the_detector_setting_loads_as_haar():
    # The faces section every export carried before `detector` and `min_confidence` existed.
    older = {"cascade": "frontalface_alt2", "margin": 0.3, "min_face_fraction": 0.1, "min_face_pixels": 40,
             "detection_size": 640, "scale_factor": 1.1, "min_neighbors": 5, "max_faces": 8}
    config = FaceConfig.from_dict(older)
    assert config.detector == "haar" and config.cascade == "frontalface_alt2"
    assert FaceConfig.from_dict(config.to_dict()) == config
    assert {"detector", "min_confidence"} <= set(config.to_dict())


@pytest.mark.parametrize("name", ONE_FACE_PHOTOS)
def test_mtcnn_finds_the_same_one_face_as_haar(face_photos_dir, name):
    rgb = photo_rgb(face_photos_dir, name)
    [haar] = detect_faces(rgb, FaceConfig())
    [face] = detect_faces(rgb, FaceConfig(detector="mtcnn"))
    # Each box holds the other's centre: one face, though MTCNN's box is tighter and taller than Haar's square.
    for box, other in ((haar, face), (face, haar)):
        centre_x, centre_y = other.x + other.width / 2, other.y + other.height / 2
        assert box.x < centre_x < box.x + box.width and box.y < centre_y < box.y + box.height


def test_haar_gives_no_landmarks_and_mtcnn_gives_them_in_full_resolution_pixels(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    [haar] = detect_faces_with_landmarks(rgb, FaceConfig())
    assert haar.landmarks is None and haar.score is None and [haar.box] == detect_faces(rgb, FaceConfig())
    [coarse] = detect_faces_with_landmarks(rgb, FaceConfig(detector="mtcnn", detection_size=256))
    [fine] = detect_faces_with_landmarks(rgb, FaceConfig(detector="mtcnn", detection_size=768))
    assert coarse.landmarks.shape == (5, 2) and fine.score >= 0.9
    assert np.abs(coarse.landmarks - fine.landmarks).max() < 0.03 * 768  # mapped back from the 256 px search
    assert abs(coarse.box.width - fine.box.width) < 0.15 * fine.box.width


def test_mtcnn_two_people_largest_first_and_nothing_on_faceless_images(face_photos_dir):
    config = FaceConfig(detector="mtcnn")
    faces = detect_faces(two_faces(face_photos_dir), config)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert faces[0].x + faces[0].width <= 600 < faces[1].x  # the larger face is the left person's (see two_faces)
    assert detect_faces(np.full((480, 640, 3), 200, np.uint8), config) == []
    assert detect_faces(no_face(), config) == []


def test_mtcnn_faces_below_min_confidence_or_the_minimum_size_are_dropped(monkeypatch):
    box = FaceBox(100, 100, 120, 150)
    found = [mtcnn.DetectedFace(box, np.zeros((5, 2), np.float32), 0.8)]
    monkeypatch.setattr(mtcnn, "detect", lambda rgb, config: list(found))
    rgb = np.zeros((480, 640, 3), np.uint8)
    assert detect_faces(rgb, FaceConfig(detector="mtcnn", min_confidence=0.7)) == [box]
    assert detect_faces(rgb, FaceConfig(detector="mtcnn", min_confidence=0.9)) == []
    # The minimum applies to the longer side, the one the crop is sized on (MTCNN's boxes are taller than wide).
    assert detect_faces(rgb, FaceConfig(detector="mtcnn", min_confidence=0.7, min_face_pixels=150)) == [box]
    assert detect_faces(rgb, FaceConfig(detector="mtcnn", min_confidence=0.7, min_face_pixels=151)) == []
