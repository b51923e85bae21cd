import numpy as np
import pytest

from handler.faces import FaceBox, FaceConfig, detect_faces
from handler.forensics import decode_rgb
from tests.shared_faces import face_crop, face_photo
from training.landmarks import (
    EYES,
    JAW,
    LANDMARK_COUNT,
    LANDMARK_GROUPS,
    LEFT_EYE,
    MOUTH,
    NOSE,
    RIGHT_EYE,
    face_landmarks,
    predictor_path,
)
from training.sbi import inner_face_box

PHOTOS = ["london/L001_neutral.jpg", "amfd/A1001_neutral.jpg", "london/L002_neutral.jpg"]


@pytest.fixture(scope="module", params=PHOTOS)
def photo(request) -> np.ndarray:
    return decode_rgb(face_photo(request.param).read_bytes())


def assert_face_layout(points: np.ndarray, shape: tuple[int, ...]) -> None:
    """What any plausible upright frontal face satisfies."""
    assert points.shape == (LANDMARK_COUNT, 2) and points.dtype == np.float32
    height, width = shape[:2]
    assert (points[:, 0] >= 0).all() and (points[:, 0] < width).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] < height).all()
    eyes_y, mouth_y, nose_y = points[EYES, 1].mean(), points[MOUTH, 1].mean(), points[NOSE, 1].mean()
    assert eyes_y < nose_y < mouth_y
    # Subject's right eye and jaw start appear on the image's left.
    assert points[RIGHT_EYE, 0].mean() < points[NOSE, 0].mean() < points[LEFT_EYE, 0].mean()
    assert points[JAW][0, 0] < points[JAW][-1, 0]
    # The face is a face-sized thing: eye distance between a tenth and a half of the face width.
    eye_distance = points[LEFT_EYE, 0].mean() - points[RIGHT_EYE, 0].mean()
    face_width = points[JAW, 0].max() - points[JAW, 0].min()
    assert 0.25 * face_width < eye_distance < 0.6 * face_width


def test_the_predictor_file_is_found_without_importing_its_package():
    assert predictor_path().name == "shape_predictor_68_face_landmarks.dat" and predictor_path().is_file()


def test_groups_cover_the_68_points_once():
    parts = ["jaw", "brows", "nose", "eyes", "mouth"]
    covered = np.concatenate([np.arange(LANDMARK_COUNT)[LANDMARK_GROUPS[name]] for name in parts])
    assert sorted(covered.tolist()) == list(range(LANDMARK_COUNT))


def test_whole_photo_points_lie_on_the_detected_face(photo):
    points = face_landmarks(photo)
    assert points is not None
    assert_face_layout(points, photo.shape)
    haar = detect_faces(photo, FaceConfig())[0]
    centre = points[EYES].mean(axis=0)
    assert haar.x < centre[0] < haar.x + haar.width and haar.y < centre[1] < haar.y + haar.height


def test_a_box_gives_the_same_points_as_the_detector(photo):
    free = face_landmarks(photo)
    haar = detect_faces(photo, FaceConfig())[0]
    boxed = face_landmarks(photo, haar)
    assert free is not None and boxed is not None
    eye_distance = np.linalg.norm(free[LEFT_EYE].mean(axis=0) - free[RIGHT_EYE].mean(axis=0))
    assert np.linalg.norm(boxed - free, axis=1).mean() < 0.05 * eye_distance


def test_a_precropped_crop_with_its_central_box_gives_a_face():
    crop = face_crop(PHOTOS[1])
    points = face_landmarks(crop, inner_face_box(crop.shape, FaceConfig().margin))
    assert points is not None
    assert_face_layout(points, crop.shape)


def test_an_off_centre_box_still_finds_the_face_near_it():
    crop = face_crop(PHOTOS[0])
    reference = face_landmarks(crop)
    centred = inner_face_box(crop.shape, FaceConfig().margin)
    shifted = FaceBox(centred.x + centred.width // 8, centred.y - centred.height // 10, centred.width, centred.height)
    points = face_landmarks(crop, shifted)
    assert reference is not None and points is not None
    eye_distance = np.linalg.norm(reference[LEFT_EYE].mean(axis=0) - reference[RIGHT_EYE].mean(axis=0))
    assert np.linalg.norm(points - reference, axis=1).mean() < 0.05 * eye_distance


def test_a_blank_grey_image_has_no_face():
    assert face_landmarks(np.full((300, 260, 3), 128, dtype=np.uint8)) is None
