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
    DEGENERATE_IMAGE,
    NO_FACE_FOUND,
    NO_FACE_REFUSE,
    REGION_FACES,
    REGION_NO_FACE,
    REGION_NONE,
    REGION_WHOLE_IMAGE,
    ExportedDetector,
    GeometryLimits,
    ScoredRegions,
    load_calibration,
    most_fake,
    no_face_found,
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


def test_no_face_under_refuse_gives_nothing_to_score(face_photos_dir):
    assert regions_to_score(no_face(), PREPROCESS, FaceConfig(), NO_FACE_REFUSE) == ScoredRegions(REGION_NONE, (), ())
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0])  # a face is scored whatever the setting
    refusing = regions_to_score(rgb, PREPROCESS, FaceConfig(), NO_FACE_REFUSE)
    assert refusing.scored == REGION_FACES and refusing.boxes == regions_to_score(rgb, PREPROCESS, FaceConfig()).boxes
    whole = regions_to_score(no_face(), PREPROCESS, None, NO_FACE_REFUSE)  # nothing looked for: nothing to refuse
    assert whole.scored == REGION_WHOLE_IMAGE and len(whole.inputs) == 1
    with pytest.raises(ValueError, match="no_face must be one of"):
        regions_to_score(no_face(), PREPROCESS, FaceConfig(), "skip")


def test_no_face_found_says_why_and_what_to_send():
    image, video = no_face_found(), no_face_found(frames=16)
    assert image.code == video.code == NO_FACE_FOUND and image.field is None
    assert str(image).startswith("no face was found in the image") and "any of the video's 16 sampled" in str(video)
    assert all(words in str(image) for words in ("faces only", "crop the image to the face"))


@pytest.mark.parametrize(("size", "says"), [
    ((16, 16), ["16x16 pixels", "shorter side (16 px) is under the minimum of 32 px"]),
    ((2000, 20), ["2000x20 pixels", "shorter side (20 px)", "aspect ratio (100:1) is over the maximum of 4:1"]),
    ((20, 2000), ["20x2000 pixels", "aspect ratio (100:1)"]),
    ((401, 100), ["401x100 pixels", "aspect ratio (4.01:1)"]),
    ((1, 1), ["1x1 pixels", "shorter side (1 px)"]),
])
def test_degenerate_shapes_are_refused_with_the_measured_size(size, says):
    refusal = GeometryLimits().refusal(size)
    assert refusal is not None and refusal.code == DEGENERATE_IMAGE
    assert all(words in str(refusal) for words in says), str(refusal)
    assert ("aspect" in str(refusal)) == (max(size) / min(size) > 4)


@pytest.mark.parametrize("size", [(32, 32), (128, 32), (32, 128), (400, 100), (4000, 3000), (33, 132)])
def test_photo_shapes_pass_the_geometry_limits(size):
    assert GeometryLimits().refusal(size) is None


def test_geometry_limits_follow_their_settings_and_check_them():
    assert GeometryLimits(min_side=8, max_aspect_ratio=20).refusal((160, 8)) is None
    assert GeometryLimits(min_side=8, max_aspect_ratio=20).refusal((161, 7)) is not None
    for invalid in ({"min_side": 0}, {"max_aspect_ratio": 0.9}):
        with pytest.raises(ValueError):
            GeometryLimits(**invalid)


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
