"""End to end: POST /explanations/deepfake on a real TorchServe serving the built .mar (with model.explain.pt).

TorchServe routes /explanations/{model} to the same handler with the request header `explain: True`; these tests
check that the header arrives, that the answer is the prediction plus a Grad-CAM heat map the shape of the image,
that bad items get their own 4xx without harming the worker, and that a .mar packaged from an export without the
explain model answers 501. That archive is registered on the session's shared `torchserve` for this module and
unregistered afterwards, so no second server is started.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from handler.metadata import EXPLAIN_FILENAME
from scripts.ops import ManagementClient, Target
from scripts.package_model import PackageConfig, package_model
from scripts.predict import ClientConfig, run_predictions
from scripts.serve import TorchServe
from tests.conftest import link_export
from tests.handler.face_images import encode
from tests.handler.test_handler_served import post

pytestmark = pytest.mark.e2e

NO_EXPLAIN_MODEL = "deepfake_noexplain"
PREDICTION_FIELDS = ("label", "probability_fake", "confidence", "probabilities", "threshold", "calibrated",
                     "borderline", "scored", "model")


@pytest.fixture(scope="module")
def no_explain_model(torchserve: TorchServe, tiny_export: Path, one_worker_model_config: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny export packaged without model.explain.pt (an export from before explanations), registered."""
    export = link_export(tiny_export, tmp_path_factory.mktemp("no_explain") / "export", ignore={EXPLAIN_FILENAME})
    archive = package_model(PackageConfig(export_dir=export, model_store=torchserve.config.model_store,
                                          model_name=NO_EXPLAIN_MODEL, model_config=one_worker_model_config))
    client = ManagementClient(Target(url=torchserve.config.management_url, model_store=torchserve.config.model_store))
    registered = client.register(archive.name, NO_EXPLAIN_MODEL, workers=1)
    yield NO_EXPLAIN_MODEL
    client.unregister(NO_EXPLAIN_MODEL, registered["modelVersion"])


@pytest.fixture(scope="module")
def demo_jpeg(tiny_dataset: Path) -> bytes:
    return sorted((tiny_dataset / "fake").iterdir())[0].read_bytes()


def test_explanation_is_the_prediction_plus_an_aligned_heat_map(torchserve, demo_jpeg):
    explained = post(torchserve, "/explanations/deepfake", data=demo_jpeg)
    predicted = post(torchserve, "/predictions/deepfake", data=demo_jpeg)
    assert explained.status_code == 200 and predicted.status_code == 200, explained.text
    explained, predicted = explained.json(), predicted.json()
    assert "explanation" not in predicted
    assert {key: explained[key] for key in PREDICTION_FIELDS} == {key: predicted[key] for key in PREDICTION_FIELDS}
    explanation = explained["explanation"]
    width, height = Image.open(io.BytesIO(demo_jpeg)).size
    assert explanation["image_size"] == [width, height] == explanation["heatmap_size"]
    with Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"]))) as png:
        assert png.mode == "RGBA" and png.size == (width, height)
    [region] = explanation["regions"]
    assert region["box"] == [0, 0, width, height] and region["probability_fake"] == explained["probability_fake"]
    assert explanation["method"] == "grad-cam" and explanation["target"] == "fake" and explanation["layer"] == "layer4"


def test_every_input_form_can_be_explained(torchserve, demo_jpeg):
    wide = encode(np.asarray(Image.open(io.BytesIO(demo_jpeg)).resize((1024, 256))), "PNG")
    forms = {"multipart": {"files": {"data": ("wide.png", wide, "image/png")}},
             "json": {"json": {"data": base64.b64encode(wide).decode("ascii")}}}
    for name, arguments in forms.items():
        response = post(torchserve, "/explanations/deepfake", **arguments)
        assert response.status_code == 200, (name, response.text)
        explanation = response.json()["explanation"]
        assert explanation["image_size"] == [1024, 256] and explanation["heatmap_size"] == [512, 128], name


def test_bad_uploads_get_their_own_errors_and_the_worker_keeps_explaining(torchserve, demo_jpeg):
    corrupt = post(torchserve, "/explanations/deepfake", data=demo_jpeg[:300])
    assert corrupt.status_code == 400 and corrupt.json()["error"]["code"] == "corrupt_image"
    video = post(torchserve, "/explanations/deepfake", data=b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200)
    assert video.status_code == 400, video.text
    assert video.json()["error"]["code"] == "explanation_needs_image"
    again = post(torchserve, "/explanations/deepfake", data=demo_jpeg)
    assert again.status_code == 200 and "explanation" in again.json()


def test_a_model_without_the_explain_file_answers_501_and_still_predicts(torchserve, no_explain_model, demo_jpeg):
    refused = post(torchserve, f"/explanations/{no_explain_model}", data=demo_jpeg)
    assert refused.status_code == 501, refused.text
    assert refused.json()["error"]["code"] == "explanations_unavailable"
    assert post(torchserve, f"/predictions/{no_explain_model}", data=demo_jpeg).status_code == 200


@pytest.mark.parametrize(("model", "available"), [("deepfake", True), (NO_EXPLAIN_MODEL, False)])
def test_describe_says_whether_explanations_are_available(torchserve, no_explain_model, model, available):
    response = requests.get(f"{torchserve.config.management_url}/models/{model}", params={"customized": "true"},
                            timeout=30)
    assert response.status_code == 200, response.text
    described = response.json()[0]["customizedMetadata"]
    described = json.loads(described) if isinstance(described, str) else described
    assert described["explanations"]["available"] is available


def test_predict_explain_saves_the_image_with_its_heat_map(torchserve, demo_jpeg, tmp_path):
    """scripts/predict.py --explain --overlay-dir: the answer's heat map drawn over the image, at the image's size."""
    image = tmp_path / "sample.jpg"
    image.write_bytes(demo_jpeg)
    config = ClientConfig(url=torchserve.config.inference_url, explain=True, overlay_dir=tmp_path / "overlays")
    [record] = run_predictions([image], config).records
    assert record.ok and config.endpoint.endswith("/explanations/deepfake")
    with Image.open(tmp_path / "overlays" / "sample.explain.png") as overlay:
        drawn = np.asarray(overlay.convert("RGB")).astype(int)
    original = np.asarray(Image.open(io.BytesIO(demo_jpeg)).convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    explained = post(torchserve, "/explanations/deepfake", data=demo_jpeg).json()["explanation"]
    with Image.open(io.BytesIO(base64.b64decode(explained["heatmap_png"]))) as png:
        alpha = np.asarray(png)[..., 3]
    assert alpha.max() == round(0.6 * 255)  # the tiny model's map has a hottest cell
    assert np.all(drawn[alpha == 0] == original[alpha == 0]) and np.any(drawn[alpha > 0] != original[alpha > 0])
