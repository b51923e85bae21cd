"""The handler serving a face model: each face scored in one forward pass per batch, the most-fake face decides.

The face model is the tiny export with `faces` written into its metadata.json (the `face_export` fixture):
its weights were trained on whole demo images, so its scores mean nothing about these photos, but every
number in a response can still be checked against the same model run here on the same crops. Its fitted
temperature flattens every probability to ~0.496, so tests that must tell regions apart by their scores
swap in BrightnessModel, whose fake logit follows the crop's brightness, with a moderate temperature.
"""

import json
import logging

import numpy as np
import pytest
import torch
from ts.utils.util import PredictionException

from handler.calibration import Calibration
from handler.faces import FaceConfig, crop_face, detect_faces
from handler.forensics import decode_rgb, model_input_from_rgb
from handler.metadata import METADATA_FILENAME
from handler.scoring import REGION_FACES, REGION_NO_FACE, REGION_WHOLE_IMAGE, decode_for_scoring
from handler.verdict import NO_FACE_NOTE
from tests.handler.face_images import ONE_FACE_PHOTOS, encode, exif_rotated, no_face, photo_rgb, two_faces
from tests.handler.metric_log import metric_lines
from tests.handler.test_deepfake_handler import FailsOnBatchesOfTwo, NanAfterTheFirst, statuses, torchscript_bytes

IMAGE_FIELDS = ("label", "probability_fake", "confidence", "borderline")


class BrightnessModel(torch.nn.Module):
    """A real TorchScript model whose fake logit is 4 × the input's mean normalised RGB: regions score far apart."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fake = 4.0 * x[:, :3].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(fake), fake], dim=1)


CONTRASTING = {"model.torchscript.pt": torchscript_bytes(BrightnessModel()),
               "calibration.json": Calibration(method="temperature", temperature=2.0).to_dict()}


@pytest.fixture
def face_handler(handler_and_context, face_export):
    """handler_and_context over the face variant of the tiny export (same weights, metadata.json with `faces`)."""
    metadata = json.loads((face_export / METADATA_FILENAME).read_text())
    assert metadata["class_names"] == ["real", "fake"]  # BrightnessModel's column order

    def build(batch_size, replace_files=None, **settings):
        return handler_and_context(batch_size, replace_files={METADATA_FILENAME: metadata, **(replace_files or {})},
                                   **settings)

    return build


@pytest.fixture
def face_photo(face_photos_dir) -> bytes:
    return (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()


@pytest.fixture
def two_face_png(face_photos_dir) -> bytes:
    return encode(two_faces(face_photos_dir))


def scores_of(handler, rgb_regions: list[np.ndarray]) -> list[tuple[float, float]]:
    """(calibrated, raw) probability of fake of each RGB region, from the handler's own model run here."""
    inputs = handler.serving.batch([model_input_from_rgb(rgb, handler.metadata.preprocessing) for rgb in rgb_regions],
                                   handler.device)  # in the layout and dtype the handler feeds its prepared model
    with torch.inference_mode():
        logits = handler.model(inputs).numpy()
    fake = handler.metadata.fake_index
    return list(zip(handler.calibration.probabilities(logits, fake)[:, fake],
                    Calibration.none().probabilities(logits, fake)[:, fake], strict=True))


def face_crops(handler, rgb: np.ndarray, config: FaceConfig | None = None) -> tuple[list, list[np.ndarray]]:
    """The faces detect_faces finds and the crops cut around them, with the handler's face settings (or `config`)."""
    config = config or handler.face_config
    boxes = detect_faces(rgb, config)
    return boxes, [crop_face(rgb, box, config.margin) for box in boxes]


class CountingModel:
    """Wraps the loaded TorchScript model to record the size of every forward pass."""

    def __init__(self, model) -> None:
        self.model = model
        self.batch_sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(batch))
        return self.model(batch)


def test_a_face_model_detects_faces_by_default(face_handler):
    handler, _ = face_handler(1)
    assert handler.settings.faces == "auto" and handler.face_config == FaceConfig()


def test_a_face_photo_is_scored_on_its_face(face_handler, face_photo):
    handler, context = face_handler(1, replace_files=CONTRASTING)
    response = handler.handle([{"body": face_photo}], context)[0]
    rgb = decode_rgb(face_photo)
    boxes, crops = face_crops(handler, rgb)
    assert response["scored"] == REGION_FACES and len(boxes) == 1
    [face] = response["faces"]
    assert face["box"] == boxes[0].to_list() and response["decided_by_face"] == 0 and "note" not in response
    [(calibrated, _)] = scores_of(handler, crops)
    assert response["probability_fake"] == face["probability_fake"] == pytest.approx(calibrated, abs=1e-6)
    [(whole, _)] = scores_of(handler, [rgb])
    assert abs(whole - calibrated) > 0.01  # the crop, not the whole photo, was scored
    assert {key: response[key] for key in IMAGE_FIELDS} == {key: face[key] for key in IMAGE_FIELDS}


@pytest.mark.parametrize("contrast", [False, True], ids=["exported model", "brightness model"])
def test_two_faces_the_most_fake_decides(face_handler, two_face_png, contrast):
    handler, context = face_handler(1, replace_files=CONTRASTING if contrast else None)
    response = handler.handle([{"body": two_face_png}], context)[0]
    boxes, crops = face_crops(handler, decode_rgb(two_face_png))
    assert response["scored"] == REGION_FACES
    assert [face["box"] for face in response["faces"]] == [box.to_list() for box in boxes] and len(boxes) == 2
    assert boxes[0].area > boxes[1].area  # largest first
    probabilities = [face["probability_fake"] for face in response["faces"]]
    expected = [calibrated for calibrated, _ in scores_of(handler, crops)]
    assert probabilities == pytest.approx(expected, abs=1e-6)
    assert abs(expected[0] - expected[1]) > (0.01 if contrast else 1e-5)  # so the most-fake one is well defined
    decided_by = response["decided_by_face"]
    assert decided_by == int(np.argmax(expected))
    assert response["probability_fake"] == max(probabilities) == probabilities[decided_by]
    deciding = response["faces"][decided_by]
    assert {key: response[key] for key in IMAGE_FIELDS} == {key: deciding[key] for key in IMAGE_FIELDS}


def test_an_image_without_a_face_is_scored_whole_and_says_so_under_no_face_whole_image(face_handler):
    rgb = no_face()
    handler, context = face_handler(1, no_face="whole_image")
    response = handler.handle([{"body": encode(rgb)}], context)[0]
    assert response["scored"] == REGION_NO_FACE and response["faces"] == [] and response["note"] == NO_FACE_NOTE
    assert "decided_by_face" not in response
    [(whole, _)] = scores_of(handler, [rgb])
    assert response["probability_fake"] == pytest.approx(whole, abs=1e-6)


def unjudgeable_batch(face_photo: bytes) -> list[dict]:
    """A faceless image, a 2000x20 strip and a 16x16 icon, then a good face photo: one batch of four."""
    strip, icon = np.full((20, 2000, 3), 128, np.uint8), np.full((16, 16, 3), 128, np.uint8)
    return [{"body": encode(no_face())}, {"data": encode(strip)}, {"body": encode(icon)}, {"body": face_photo}]


def test_a_face_model_refuses_what_it_cannot_judge_and_scores_the_rest_of_the_batch(face_handler, face_photo,
                                                                                     caplog):
    caplog.set_level(logging.INFO)
    handler, context = face_handler(4)
    assert handler.settings.no_face == "refuse"  # the default
    handler.model = counting = CountingModel(handler.model)
    faceless, strip, icon, good = handler.handle(unjudgeable_batch(face_photo), context)
    assert statuses(context) == [422, 422, 422, 200]
    assert faceless["error"]["code"] == "no_face_found" and faceless["error"]["status"] == 422
    assert faceless["error"]["field"] == "body" and "no face was found in the image" in faceless["error"]["message"]
    assert "faces only" in faceless["error"]["message"] and "crop" in faceless["error"]["accepted"]
    assert (strip["error"]["code"], strip["error"]["field"]) == ("degenerate_image", "data")
    assert "2000x20 pixels" in strip["error"]["message"] and "16x16 pixels" in icon["error"]["message"]
    assert all("label" not in item and "scored" not in item for item in (faceless, strip, icon))
    assert [item["request_id"] for item in (faceless, strip, icon, good)] == [f"request-{i}" for i in range(4)]
    assert good["scored"] == REGION_FACES and len(good["faces"]) == 1 and good["label"] in {"real", "fake"}
    assert counting.batch_sizes == [1] and good["timing_ms"]["model_inputs"] == 1  # only the face went through
    lines = metric_lines(caplog)
    assert sorted((line.dimensions["ErrorCode"], line.value) for line in lines if line.name == "DeepfakeItemErrors"
                  ) == [("degenerate_image", 2.0), ("no_face_found", 1.0)]
    assert [(line.dimensions["Scored"], line.value) for line in lines if line.name == "DeepfakeScoredImages"] == [
        ("faces", 1.0)]  # refused images are errors, not "scored"


def test_no_face_whole_image_scores_the_faceless_image_but_still_refuses_degenerate_shapes(face_handler,
                                                                                          face_photo):
    handler, context = face_handler(4, no_face="whole_image")
    faceless, strip, icon, good = handler.handle(unjudgeable_batch(face_photo), context)
    assert statuses(context) == [200, 422, 422, 200]
    assert faceless["scored"] == REGION_NO_FACE and faceless["note"] == NO_FACE_NOTE
    [(whole, _)] = scores_of(handler, [no_face()])
    assert faceless["probability_fake"] == pytest.approx(whole, abs=1e-6)
    assert strip["error"]["code"] == icon["error"]["code"] == "degenerate_image"
    assert good["scored"] == REGION_FACES


@pytest.mark.parametrize("value", ["skip", True, None])
def test_an_invalid_no_face_setting_stops_the_worker(face_handler, value):
    with pytest.raises(ValueError, match="handler setting 'no_face'"):
        face_handler(1, no_face=value)


@pytest.mark.parametrize("off", ["off", False])  # False: what an unquoted `faces: off` is in YAML
def test_faces_off_scores_the_whole_photo(face_handler, face_photo, off, caplog):
    caplog.set_level(logging.WARNING)
    handler, context = face_handler(1, replace_files=CONTRASTING, faces=off)
    assert handler.face_config is None
    assert any("faces: off" in record.getMessage() for record in caplog.records)  # a face model judging whole images
    response = handler.handle([{"body": face_photo}], context)[0]
    assert response["scored"] == REGION_WHOLE_IMAGE
    assert "faces" not in response and "decided_by_face" not in response and "note" not in response
    rgb = decode_rgb(face_photo)
    as_scored_whole = decode_for_scoring(face_photo, handler.metadata.preprocessing, None)  # reduced when exported so
    [(whole, _), (crop, _)] = scores_of(handler, [as_scored_whole, face_crops(handler, rgb, FaceConfig())[1][0]])
    assert response["probability_fake"] == pytest.approx(whole, abs=1e-6) and abs(whole - crop) > 0.01


def test_faces_on_finds_faces_for_a_whole_image_model(handler_and_context, face_photo):
    handler, context = handler_and_context(1, faces="on")
    assert handler.metadata.faces is None and handler.face_config == FaceConfig()
    response = handler.handle([{"body": face_photo}], context)[0]
    assert response["scored"] == REGION_FACES and len(response["faces"]) == 1


def test_a_whole_image_model_keeps_scoring_whole_images(handler_and_context, face_photo):
    handler, context = handler_and_context(1)
    assert handler.face_config is None
    response = handler.handle([{"body": face_photo}], context)[0]
    assert response["scored"] == REGION_WHOLE_IMAGE and "faces" not in response


def test_boxes_are_in_the_upright_image(face_handler, face_photos_dir):
    rgb = photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[2])  # 768 x 540: a turn changes every coordinate
    handler, context = face_handler(1)
    response = handler.handle([{"body": exif_rotated(rgb)}], context)[0]
    assert [face["box"] for face in response["faces"]] == [box.to_list() for box in detect_faces(rgb, FaceConfig())]


def test_a_mixed_batch_goes_through_one_forward_pass(face_handler, face_photo, two_face_png):
    handler, context = face_handler(4, no_face="whole_image")  # the faceless image adds its whole-image row
    handler.model = counting = CountingModel(handler.model)
    rows = [{"body": face_photo}, {"body": b"\xff\xd8\xff broken jpeg"}, {"body": encode(no_face())},
            {"body": two_face_png}]
    responses = handler.handle(rows, context)
    assert statuses(context) == [200, 400, 200, 200]
    assert [r.get("scored") for r in responses] == [REGION_FACES, None, REGION_NO_FACE, REGION_FACES]
    assert responses[1]["error"]["code"] == "corrupt_image"
    assert [len(r["faces"]) for r in responses if "faces" in r] == [1, 0, 2]
    assert counting.batch_sizes == [4]  # 1 face + 1 whole image + 2 faces, all in one pass
    assert {(r["timing_ms"]["batch_size"], r["timing_ms"]["model_inputs"]) for r in responses if "error" not in r} == {
        (4, 4)}
    # Each item is scored as it would be alone: regrouping the pass's scores put every score back on its item.
    for row, response in zip(rows, responses, strict=True):
        if "error" not in response:
            alone, alone_context = face_handler(1, no_face="whole_image")
            assert alone.handle([row], alone_context)[0]["probability_fake"] == response["probability_fake"]


def test_uncalibrated_adds_each_faces_raw_probability(face_handler, two_face_png):
    handler, context = face_handler(2, replace_files=CONTRASTING)
    plain, asking = handler.handle([{"body": two_face_png}, {"data": two_face_png, "uncalibrated": b"true"}], context)
    _, crops = face_crops(handler, decode_rgb(two_face_png))
    raw = [r for _, r in scores_of(handler, crops)]
    assert all(abs(face["probability_fake"] - r) > 0.01 for face, r in zip(asking["faces"], raw, strict=True))
    assert [face["uncalibrated"]["probability_fake"] for face in asking["faces"]] == pytest.approx(raw, abs=1e-6)
    assert asking["uncalibrated"] == asking["faces"][asking["decided_by_face"]]["uncalibrated"]
    assert all("uncalibrated" not in face for face in plain["faces"]) and "uncalibrated" not in plain
    assert [{k: v for k, v in face.items() if k != "uncalibrated"} for face in asking["faces"]] == plain["faces"]


def test_face_metrics_count_images_by_what_was_scored(face_handler, face_photo, two_face_png, caplog):
    caplog.set_level(logging.INFO)
    handler, context = face_handler(4, no_face="whole_image")
    handler.handle([{"body": face_photo}, {"body": two_face_png}, {"body": encode(no_face())}, {"body": b""}],
                   context)
    lines = metric_lines(caplog)
    assert [(line.dimensions["Scored"], line.value) for line in lines if line.name == "DeepfakeScoredImages"] == [
        ("faces", 2.0), ("whole_image_no_face", 1.0)]  # one line per kind and batch
    assert [line.value for line in lines if line.name == "DeepfakeScoredFaces"] == [3.0]  # 1 + 2 faces
    assert sum(line.value for line in lines if line.name == "DeepfakePredictions") == 3


def test_describe_shows_the_face_mode_and_settings(face_handler):
    handler, _ = face_handler(1)
    assert handler.describe_handle()["faces"] == {"mode": "auto", "face_model": True, "no_face": "refuse",
                                                  "config": FaceConfig().to_dict()}
    handler, _ = face_handler(1, faces="off", no_face="whole_image")
    assert handler.describe_handle()["faces"] == {"mode": "off", "face_model": True, "no_face": "whole_image",
                                                  "config": None}


def test_describe_of_a_whole_image_model(handler_and_context):
    handler, _ = handler_and_context(1)
    assert handler.describe_handle()["faces"] == {"mode": "auto", "face_model": False, "no_face": "refuse",
                                                  "config": None}
    handler, _ = handler_and_context(1, faces="on")
    assert handler.describe_handle()["faces"] == {"mode": "on", "face_model": False, "no_face": "refuse",
                                                  "config": FaceConfig().to_dict()}


def test_a_failing_forward_pass_names_the_face_crops(face_handler, two_face_png):
    handler, context = face_handler(1, replace_files={"model.torchscript.pt": torchscript_bytes(
        FailsOnBatchesOfTwo("CUDA out of memory. Tried to allocate 2 GiB"))})
    with pytest.raises(PredictionException) as raised:
        handler.handle([{"body": two_face_png}], context)  # one image, two crops: a forward pass of two
    assert raised.value.error_code == 507
    assert "a batch of 1 image(s) (2 model inputs: one per face) on cpu" in raised.value.message
    assert "max_faces" in raised.value.message


def test_a_non_finite_face_score_is_that_images_error(face_handler, face_photo, two_face_png):
    handler, context = face_handler(2, replace_files={"model.torchscript.pt": torchscript_bytes(NanAfterTheFirst())})
    responses = handler.handle([{"body": face_photo}, {"body": two_face_png}], context)  # rows: face, face, NaN face
    assert statuses(context) == [200, 500]
    assert responses[0]["scored"] == REGION_FACES and responses[1]["error"]["code"] == "non_finite_score"


@pytest.mark.parametrize("value", ["yes", "Auto", 1])
def test_an_invalid_face_mode_stops_the_worker(face_handler, value):
    with pytest.raises(ValueError, match="handler setting 'faces'"):
        face_handler(1, faces=value)
