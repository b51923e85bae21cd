"""The handler's explanation path (requests carrying TorchServe's `explain: True` header), on a real ts Context.

Explanations of the tiny export are checked against predictions of the same handler, and a TorchScript explain model
whose Grad-CAM is known in closed form (BrightExplainModel: the map is the image's brightness) checks that the heat
lands where the evidence is, in the client's image pixels.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from ts.context import RequestProcessor

from handler.explain import EXPLAIN_METHOD, EXPLAIN_TARGET
from handler.faces import FaceConfig, crop_box, detect_faces
from handler.forensics import decode_rgb
from handler.metadata import EXPLAIN_FILENAME, METADATA_FILENAME
from handler.scoring import REGION_FACES, REGION_NO_FACE, REGION_WHOLE_IMAGE
from tests.handler.face_images import ONE_FACE_PHOTOS, encode, exif_rotated, no_face, two_faces
from tests.handler.test_deepfake_handler import statuses, torchscript_bytes

PREDICTION_FIELDS = ("label", "probability_fake", "confidence", "probabilities", "threshold", "calibrated",
                     "borderline", "scored")


class BrightExplainModel(torch.nn.Module):
    """forward(x) → (logits, features) where features = relu(brightness) pooled to 4x4 and fake logit = their mean.

    The fake logit's gradient is the same positive number on every cell, so Grad-CAM is the feature map itself:
    zero where the image is dark (normalised value below 0), growing with brightness elsewhere.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-1] // 4
        features = torch.nn.functional.avg_pool2d(torch.relu(x[:, :3].mean(dim=1, keepdim=True)), size)
        fake = features.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(fake), fake], dim=1), features


def explaining(context, *indices: int) -> None:
    """Marks batch items as explanation requests, as TorchServe's frontend does for POST /explanations/{model}."""
    for index in indices:
        context.request_processor[index] = RequestProcessor({"explain": "True"})


def heatmap(response: dict) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(response["explanation"]["heatmap_png"]))) as png:
        assert png.format == "PNG" and png.mode == "RGBA"
        return np.asarray(png)


def half_dark_half_bright(demo_rgb: np.ndarray) -> np.ndarray:
    """600x300: black on the left half, a brightened demo image on the right half."""
    canvas = np.zeros((300, 600, 3), np.uint8)
    canvas[:, 300:] = np.clip(np.asarray(Image.fromarray(demo_rgb).resize((300, 300))).astype(int) + 150, 0, 255)
    return canvas


@pytest.fixture
def demo_real(tiny_dataset) -> np.ndarray:
    return decode_rgb(sorted((tiny_dataset / "real").iterdir())[0].read_bytes())


def test_an_explanation_is_the_prediction_plus_a_heat_map_the_shape_of_the_image(handler_and_context, tiny_dataset):
    data = sorted((tiny_dataset / "real").iterdir())[0].read_bytes()
    wide = encode(np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((400, 160))))
    handler, context = handler_and_context(2)
    explaining(context, 0)
    explained, predicted = handler.handle([{"body": wide}, {"body": wide}], context)
    assert statuses(context) == [200, 200]
    assert "explanation" not in predicted
    assert {key: explained[key] for key in PREDICTION_FIELDS} == {key: predicted[key] for key in PREDICTION_FIELDS}
    explanation = explained["explanation"]
    assert explanation["method"] == EXPLAIN_METHOD and explanation["target"] == EXPLAIN_TARGET
    assert explanation["layer"] == "layer4"  # resnet18's last stage, as export found it
    assert explanation["image_size"] == [400, 160] and explanation["heatmap_size"] == [400, 160]
    assert heatmap(explained).shape == (160, 400, 4)
    [region] = explanation["regions"]
    assert region["box"] == [0, 0, 400, 160] and region["probability_fake"] == explained["probability_fake"]
    grid = np.asarray(region["grid"])
    assert grid.shape == (2, 2) and grid.min() >= 0 and grid.max() <= 1  # 64 px input: resnet18's 2x2 map
    assert explained["timing_ms"]["explain"] > 0


def test_the_heat_is_where_the_evidence_is(handler_and_context, demo_real):
    """With a model whose Grad-CAM is the brightness, a black left half stays cold and the bright right half is hot."""
    handler, context = handler_and_context(1, replace_files={EXPLAIN_FILENAME: torchscript_bytes(BrightExplainModel())})
    explaining(context, 0)
    [response] = handler.handle([{"body": encode(half_dark_half_bright(demo_real), "PNG")}], context)
    explanation = response["explanation"]
    assert explanation["image_size"] == [600, 300] and explanation["heatmap_size"] == [512, 256]
    rgba = heatmap(response)
    assert rgba.shape == (256, 512, 4)
    alpha = rgba[..., 3].astype(int)
    assert alpha[:, :190].max() == 0  # the black half up to its last cell centre (x = 192): bilinear from there
    assert alpha[:, 312:].min() > 0 and alpha.max() == round(0.6 * 255)
    grid = np.asarray(explanation["regions"][0]["grid"])
    assert np.all(grid[:, :2] == 0) and np.all(grid[:, 2:] > 0)


def test_big_images_get_a_heat_map_of_at_most_512_pixels(handler_and_context):
    handler, context = handler_and_context(1, replace_files={EXPLAIN_FILENAME: torchscript_bytes(BrightExplainModel())})
    explaining(context, 0)
    rgb = np.full((1500, 700, 3), 200, np.uint8)
    [response] = handler.handle([{"body": exif_rotated(rgb)}], context)  # stored 1500x700, shown 700x1500
    assert response["explanation"]["image_size"] == [700, 1500]
    assert response["explanation"]["heatmap_size"] == [239, 512]
    assert response["explanation"]["regions"][0]["box"] == [0, 0, 700, 1500]


def test_face_regions_are_the_face_crops(handler_and_context, face_export, face_photos_dir):
    metadata = json.loads((face_export / METADATA_FILENAME).read_text())
    handler, context = handler_and_context(1, replace_files={METADATA_FILENAME: metadata})
    explaining(context, 0)
    rgb = two_faces(face_photos_dir)
    [response] = handler.handle([{"body": encode(rgb)}], context)
    assert response["scored"] == REGION_FACES and len(response["faces"]) == 2
    regions = response["explanation"]["regions"]
    margin = FaceConfig().margin
    assert [region["box"] for region in regions] == [
        crop_box(box, rgb.shape, margin).to_list() for box in detect_faces(rgb, FaceConfig())]
    assert [region["probability_fake"] for region in regions] == [face["probability_fake"]
                                                                  for face in response["faces"]]
    assert response["explanation"]["image_size"] == [rgb.shape[1], rgb.shape[0]]


@pytest.mark.parametrize("no_face_setting", ["refuse", "whole_image"])
def test_a_face_model_explains_what_it_would_predict_and_refuses_what_it_would_refuse(
        handler_and_context, face_export, face_photos_dir, no_face_setting):
    metadata = json.loads((face_export / METADATA_FILENAME).read_text())
    handler, context = handler_and_context(3, replace_files={METADATA_FILENAME: metadata}, no_face=no_face_setting)
    explaining(context, 0, 1, 2)
    blank, strip = no_face(), np.full((20, 2000, 3), 128, np.uint8)
    faceless, thin, photo = handler.handle([{"body": encode(blank)}, {"body": encode(strip)},
                                            {"body": (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()}], context)
    assert thin["error"]["code"] == "degenerate_image" and "explanation" not in thin
    assert photo["scored"] == REGION_FACES and len(photo["explanation"]["regions"]) == 1
    if no_face_setting == "refuse":
        assert statuses(context) == [422, 422, 200]
        assert faceless["error"]["code"] == "no_face_found" and "explanation" not in faceless
    else:  # the whole image is scored, so the whole image is explained
        assert statuses(context) == [200, 422, 200]
        assert faceless["scored"] == REGION_NO_FACE
        [region] = faceless["explanation"]["regions"]
        assert region["box"] == [0, 0, blank.shape[1], blank.shape[0]]
        assert region["probability_fake"] == faceless["probability_fake"]


def test_bad_items_get_their_own_errors_and_the_rest_are_explained(handler_and_context, face_photos_dir):
    photo = (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()
    video = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64
    handler, context = handler_and_context(4)
    explaining(context, 0, 1, 2)
    good, corrupt, movie, predicted = handler.handle(
        [{"body": photo}, {"body": photo[:200]}, {"data": video}, {"body": photo}], context)
    assert statuses(context) == [200, 400, 400, 200]
    assert good["scored"] == REGION_WHOLE_IMAGE and "explanation" in good and "explanation" not in predicted
    assert corrupt["error"]["code"] == "corrupt_image"
    assert movie["error"]["code"] == "explanation_needs_image" and movie["error"]["field"] == "data"
    assert "mp4" in movie["error"]["message"] and "predictions" in movie["error"]["accepted"]


def test_a_model_exported_without_the_explain_file_answers_501(handler_and_context, face_photos_dir):
    photo = (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()
    handler, context = handler_and_context(2, replace_files={EXPLAIN_FILENAME: None})
    explaining(context, 0)
    refused, predicted = handler.handle([{"body": photo}, {"body": photo}], context)
    assert statuses(context) == [501, 200]
    assert refused["error"]["code"] == "explanations_unavailable" and refused["error"]["status"] == 501
    assert "model.explain.pt" in refused["error"]["message"] and "label" in predicted
    assert handler.describe_handle()["explanations"]["available"] is False


def test_describe_says_explanations_are_available(handler_and_context):
    handler, _ = handler_and_context(1)
    described = handler.describe_handle()["explanations"]
    assert described["available"] is True and described["method"] == "grad-cam"
    assert described["export"]["file"] == EXPLAIN_FILENAME and described["export"]["layer"] == "layer4"
