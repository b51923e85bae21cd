"""handler.scoring: which regions of an image are scored, how their logits become scores, and which one decides."""

import json

import numpy as np
import pytest
import torch

from handler.calibration import CALIBRATION_FILENAME, Calibration, softmax
from handler.faces import FaceConfig, crop_face, detect_faces
from handler.forensics import PreprocessConfig, decode_rgb, model_input_from_rgb
from handler.metadata import METADATA_FILENAME, ModelMetadata
from handler.scoring import (
    REGION_FACES,
    REGION_NO_FACE,
    REGION_WHOLE_IMAGE,
    ExportedDetector,
    load_calibration,
    most_fake,
    regions_to_score,
    scores_from_logits,
)
from handler.verdict import ItemScores
from tests.handler.face_images import ONE_FACE_PHOTOS, no_face, photo_rgb, two_faces

PREPROCESS = PreprocessConfig(input_size=(64, 64))


def test_a_face_photo_is_scored_on_its_face_crop(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    config = FaceConfig(margin=0.4)
    regions = regions_to_score(rgb, PREPROCESS, config)
    assert regions.scored == REGION_FACES and regions.boxes == tuple(detect_faces(rgb, config))
    [face] = regions.boxes
    [tensor] = regions.inputs
    assert torch.equal(tensor, model_input_from_rgb(crop_face(rgb, face, 0.4), PREPROCESS))
    assert not torch.equal(tensor, model_input_from_rgb(rgb, PREPROCESS))


def test_two_faces_give_two_inputs_in_box_order(face_photos_dir):
    canvas = two_faces(face_photos_dir)
    regions = regions_to_score(canvas, PREPROCESS, FaceConfig())
    assert regions.scored == REGION_FACES and len(regions.boxes) == len(regions.inputs) == 2
    for box, tensor in zip(regions.boxes, regions.inputs, strict=True):
        assert torch.equal(tensor, model_input_from_rgb(crop_face(canvas, box, FaceConfig().margin), PREPROCESS))


def test_no_face_scores_the_whole_image_and_says_why():
    rgb = no_face()
    regions = regions_to_score(rgb, PREPROCESS, FaceConfig())
    assert (regions.scored, regions.boxes) == (REGION_NO_FACE, ())
    [tensor] = regions.inputs
    assert torch.equal(tensor, model_input_from_rgb(rgb, PREPROCESS))


def test_faces_off_scores_the_whole_image_even_with_a_face(face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])
    regions = regions_to_score(rgb, PREPROCESS, None)
    assert (regions.scored, regions.boxes) == (REGION_WHOLE_IMAGE, ())
    [tensor] = regions.inputs
    assert torch.equal(tensor, model_input_from_rgb(rgb, PREPROCESS))


@pytest.mark.parametrize(("calibrated", "expected"), [
    ([0.1, 0.8, 0.3], 1),
    ([0.9, 0.2], 0),
    ([0.4, 0.7, 0.7], 1),  # a tie goes to the first (the larger face)
    ([0.5], 0),
])
def test_the_most_fake_region_decides(calibrated, expected):
    # Raw scores ranked the other way: the decision follows the calibrated probability only.
    scores = [ItemScores(value, 1.0 - value) for value in calibrated]
    assert most_fake(scores) == expected


def test_most_fake_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one scored region"):
        most_fake([])


LOGITS = np.array([[0.3, -1.2], [2.0, 2.0], [-4.0, 5.5], [10.0, -10.0]], dtype=np.float32)


@pytest.mark.parametrize("temperature", [None, 2.5])
@pytest.mark.parametrize("fake_index", [0, 1])
def test_scores_from_logits_are_the_calibration_and_the_softmax(temperature, fake_index):
    calibration = Calibration.none() if temperature is None else Calibration(method="temperature",
                                                                             temperature=temperature)
    scores = scores_from_logits(LOGITS, calibration, fake_index)
    logits = torch.as_tensor(LOGITS, dtype=torch.float64)
    expected = torch.softmax(logits / (temperature or 1.0), dim=1)[:, fake_index].numpy()
    np.testing.assert_allclose([s.calibrated for s in scores], expected, rtol=0, atol=1e-9)
    served = calibration.probabilities(LOGITS, fake_index)[:, fake_index]
    np.testing.assert_array_equal([s.calibrated for s in scores], served)  # exactly what Calibration serves
    np.testing.assert_array_equal([s.uncalibrated for s in scores], softmax(LOGITS)[:, fake_index])
    np.testing.assert_allclose([s.uncalibrated for s in scores], torch.softmax(logits, dim=1)[:, fake_index].numpy(),
                               rtol=0, atol=1e-9)
    assert all(type(s.calibrated) is float and type(s.uncalibrated) is float for s in scores)
    assert all(type(s.calibrated) is float and type(s.uncalibrated) is float for s in scores)


def test_load_calibration_reads_the_file_or_refuses_a_missing_one(tiny_export, tmp_path):
    metadata = ModelMetadata.load(tiny_export / METADATA_FILENAME)
    assert load_calibration(tiny_export, metadata) == Calibration.load(tiny_export / CALIBRATION_FILENAME)
    assert metadata.training["calibration"] == "temperature"
    with pytest.raises(FileNotFoundError, match=f"{CALIBRATION_FILENAME} is missing from .*'temperature'"):
        load_calibration(tmp_path, metadata)
    whole_image = ModelMetadata(architecture="resnet18", training={"calibration": "none"})
    assert load_calibration(tmp_path, whole_image) == Calibration.none()


def test_exported_detector_scores_like_the_handler(tiny_export, tiny_dataset, handler_and_context):
    paths = [tiny_dataset / "real" / "real_00001.jpg", tiny_dataset / "fake" / "fake_00001.jpg"]
    detector = ExportedDetector.load(tiny_export)
    inputs = torch.stack([model_input_from_rgb(decode_rgb(path.read_bytes()), detector.metadata.preprocessing)
                          for path in paths])
    scores = detector.score(inputs)
    handler, context = handler_and_context(len(paths))
    responses = handler.handle([{"body": path.read_bytes()} for path in paths], context)
    assert [r["scored"] for r in responses] == [REGION_WHOLE_IMAGE] * 2  # the tiny export is a whole-image model
    # Same prepared model and inputs; oneDNN's channels_last kernels sum in an order that depends on the thread count
    # (the handler sizes its own pool), so the scores agree to float32 rounding, not bit for bit.
    assert [r["probability_fake"] for r in responses] == pytest.approx([s.calibrated for s in scores], abs=1e-5)
    assert json.loads((tiny_export / METADATA_FILENAME).read_text()).get("faces") is None
