"""End to end: the handler's whole contract as a real TorchServe serves it from the built .mar.

Input forms and formats, the uncalibrated option on every route that can carry it, hostile uploads
that must not cost a worker, and the handler's own Prometheus metrics on :8082/metrics. The server
is the session's shared `torchserve`, so metric checks compare counts before and after.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from handler.calibration import Calibration
from handler.forensics import decode_rgb, model_input_from_bytes
from handler.metadata import ModelMetadata
from handler.torchscript import load_torchscript
from scripts.serve import TorchServe, model_workers
from tests.conftest import BATCH_MODEL, BATCH_MODEL_SIZE
from tests.handler.hostile_images import png_header_claiming

pytestmark = pytest.mark.e2e

SAMPLE = re.compile(r"^(?P<name>\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
Samples = dict[tuple[str, frozenset], float]


def post(server: TorchServe, path: str = "/predictions/deepfake", **kwargs) -> requests.Response:
    return requests.post(f"{server.config.inference_url}{path}", timeout=60, **kwargs)


def worker_identities(server: TorchServe, model: str) -> list[tuple]:
    return sorted((w["id"], w["pid"], w["startTime"]) for w in model_workers(server.config, model))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def prometheus_samples(server: TorchServe) -> Samples:
    """Every sample of /metrics, keyed by name and label set (Hostname dropped)."""
    text = requests.get(f"{server.config.metrics_url}/metrics", timeout=10).text
    samples: Samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = frozenset((k, v) for k, v in LABEL.findall(match["labels"]) if k != "Hostname")
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_samples(server: TorchServe, done: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Polls /metrics until `done` holds: the worker logs metric lines that the frontend picks up a moment later."""
    deadline = time.monotonic() + timeout
    samples = prometheus_samples(server)
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval of the condition, not a stand-in for it
        samples = prometheus_samples(server)
    return samples


@pytest.fixture(scope="module")
def face(tiny_dataset: Path) -> np.ndarray:
    """A dataset image's pixels, to be re-encoded in every format."""
    return decode_rgb((tiny_dataset / "fake" / "fake_00005.jpg").read_bytes())


@pytest.fixture(scope="module")
def in_process(tiny_export: Path) -> Callable[[bytes], tuple[float, float]]:
    """(raw, calibrated) probability of fake for image bytes, computed here from the export the .mar was built of."""
    metadata = ModelMetadata.load(tiny_export / "metadata.json")
    model = load_torchscript(tiny_export / "model.torchscript.pt", torch.device("cpu"))
    calibration = Calibration.load(tiny_export / "calibration.json")
    fake = metadata.fake_index

    def score(data: bytes) -> tuple[float, float]:
        with torch.inference_mode():
            logits = model(model_input_from_bytes(data, metadata.preprocessing)[None]).numpy()
        return (float(Calibration.none().probabilities(logits, fake)[0, fake]),
                float(calibration.probabilities(logits, fake)[0, fake]))

    return score


def test_every_input_form_gives_the_same_verdict(torchserve, face):
    data = encode(Image.fromarray(face), "PNG")
    b64 = base64.b64encode(data).decode()
    responses = {
        "raw": post(torchserve, data=data),
        "raw octet-stream": post(torchserve, data=data, headers={"Content-Type": "application/octet-stream"}),
        "multipart data": post(torchserve, files={"data": ("face.png", data, "image/png")}),
        "multipart other name": post(torchserve, files={"upload": ("face.png", data, "image/png")}),
        "json base64": post(torchserve, json={"data": b64}),
        "json wrapped base64": post(torchserve, json={"image": base64.encodebytes(data).decode()}),
        "json data url": post(torchserve, json={"data": f"data:image/png;base64,{b64}"}),
    }
    assert {form: r.status_code for form, r in responses.items()} == dict.fromkeys(responses, 200)
    probabilities = {form: r.json()["probability_fake"] for form, r in responses.items()}
    assert len(set(probabilities.values())) == 1, probabilities
    # Each answer names its request as TorchServe's x-request-id header and its logs do: one id to grep for.
    assert all(r.json()["request_id"] == r.headers["x-request-id"] for r in responses.values())
    assert len({r.json()["request_id"] for r in responses.values()}) == len(responses)


def test_same_pixels_in_any_lossless_format_give_the_same_probability(torchserve, face, in_process):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated a quarter turn anticlockwise, displayed upright: the same picture
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    sixteen_bit_bgr = face[..., ::-1].astype(np.uint16) * 257  # v·257 >> 8 == v: the same 8-bit pixels
    files = {
        "PNG": encode(Image.fromarray(face), "PNG"),
        "BMP": encode(Image.fromarray(face), "BMP"),
        "TIFF": encode(Image.fromarray(face), "TIFF"),
        "WebP lossless": encode(Image.fromarray(face), "WEBP", lossless=True),
        "opaque RGBA PNG": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "16-bit RGB PNG": cv2.imencode(".png", sixteen_bit_bgr)[1].tobytes(),
        "EXIF-rotated PNG": encode(Image.fromarray(np.ascontiguousarray(np.rot90(face))), "PNG", exif=exif.tobytes()),
    }
    served = {}
    for name, data in files.items():
        response = post(torchserve, data=data)
        assert response.status_code == 200, (name, response.text)
        served[name] = response.json()["probability_fake"]
    _, expected = in_process(files["PNG"])
    assert served == pytest.approx(dict.fromkeys(files, expected), abs=1e-6)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "WEBP", "16-bit grey PNG", "palette PNG with transparency",
                                 "CMYK JPEG", "animated GIF"])
def test_every_other_format_is_served(torchserve, face, in_process, fmt):
    image = Image.fromarray(face)
    if fmt == "16-bit grey PNG":
        data = cv2.imencode(".png", np.asarray(image.convert("L")).astype(np.uint16) * 257)[1].tobytes()
    elif fmt == "palette PNG with transparency":
        data = encode(image.convert("P"), "PNG", transparency=0)
    elif fmt == "CMYK JPEG":
        data = encode(image.convert("CMYK"), "JPEG")
    elif fmt == "animated GIF":
        data = encode(image, "GIF", save_all=True, append_images=[Image.new("RGB", image.size, (0, 0, 255))])
    else:
        data = encode(image, fmt)
    response = post(torchserve, data=data)
    assert response.status_code == 200, response.text
    _, expected = in_process(data)  # the served score is the score of what decode_rgb makes of the file
    assert response.json()["probability_fake"] == pytest.approx(expected, abs=1e-6)


def test_uncalibrated_is_served_on_every_route_that_carries_it(torchserve, face, in_process):
    data = encode(Image.fromarray(face), "PNG")
    raw, calibrated = in_process(data)
    plain = post(torchserve, data=data).json()
    asking = {
        "header": post(torchserve, data=data, headers={"X-Uncalibrated": "true"}),
        "multipart field": post(torchserve, files={"data": ("f.png", data, "image/png")}, data={"uncalibrated": "yes"}),
        "json key": post(torchserve, json={"data": base64.b64encode(data).decode(), "uncalibrated": True}),
        "query on /{model}/predict": post(torchserve, "/deepfake/predict?uncalibrated=true", data=data),
        "query on /invocations": post(torchserve, "/invocations?model_name=deepfake&uncalibrated=1", data=data),
    }
    for route, response in asking.items():
        assert response.status_code == 200, (route, response.text)
        body = response.json()
        assert body["uncalibrated"]["probability_fake"] == pytest.approx(raw, abs=1e-6), route
        assert body["uncalibrated"]["probabilities"]["real"] == pytest.approx(1 - raw, abs=1e-6), route
        # The verdict stays calibrated: the threshold was chosen on calibrated scores.
        for key in ("label", "probability_fake", "confidence", "borderline", "threshold", "calibrated"):
            assert body[key] == plain[key], (route, key)
    assert plain["probability_fake"] == pytest.approx(calibrated, abs=1e-6) and abs(raw - calibrated) > 1e-4


def test_predictions_route_drops_query_parameters_before_the_handler(torchserve, face):
    # TorchServe 0.12 hands /predictions/{model} requests to the worker without their query string, so
    # ?uncalibrated=true cannot reach the handler there (header, form field or JSON key do). Should a
    # TorchServe upgrade start passing it on, this fails and the option works on /predictions too.
    response = post(torchserve, "/predictions/deepfake?uncalibrated=true", data=encode(Image.fromarray(face), "PNG"))
    assert response.status_code == 200 and "uncalibrated" not in response.json()


def test_bad_or_lonely_options_are_refused(torchserve, face):
    data = encode(Image.fromarray(face), "PNG")
    typo = post(torchserve, data=data, headers={"X-Uncalibrated": "ture"})
    assert typo.status_code == 400 and typo.json()["error"]["code"] == "invalid_option"
    only_the_option = post(torchserve, files={"uncalibrated": (None, "true")})
    assert only_the_option.status_code == 400 and only_the_option.json()["error"]["code"] == "missing_image"
    json_only_the_option = post(torchserve, json={"uncalibrated": True})
    assert json_only_the_option.status_code == 400 and json_only_the_option.json()["error"]["code"] == "missing_image"
    empty_body = post(torchserve, "/deepfake/predict?uncalibrated=true")
    assert empty_body.status_code == 400 and empty_body.json()["error"]["code"] == "empty_input"


def test_hostile_uploads_get_their_own_status_and_field_and_never_restart_a_worker(torchserve, face):
    frames = [Image.new("RGB", (48, 40), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    cases = {  # request, status, code, field (the full corpus is scripts/reliability/bad_inputs.py)
        "PNG header claiming 100000x100000": (dict(data=png_header_claiming(100_000, 100_000)), 413, "image_too_large",
                                              "body"),
        "PNG header claiming 10000x10000": (dict(data=png_header_claiming(10_000, 10_000)), 413, "image_too_large",
                                            "body"),
        "1x1 image": (dict(data=encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")), 422, "degenerate_image", "body"),
        "1x5000 image": (dict(data=encode(Image.new("RGB", (1, 5000), (9, 9, 9)), "PNG")), 422, "degenerate_image",
                         "body"),
        "multi-frame GIF": (dict(data=encode(frames[0], "GIF", save_all=True, append_images=frames[1:])), 200, None,
                            None),
        "float TIFF": (dict(data=encode(Image.new("F", (48, 36), 0.7), "TIFF")), 200, None, None),
        "LAB TIFF": (dict(data=encode(Image.new("LAB", (48, 36)), "TIFF")), 200, None, None),
        "random bytes": (dict(data=np.random.default_rng(5).bytes(5000)), 415, "not_an_image", "body"),
        "random bytes in a file field": (dict(files={"upload": ("x.bin", np.random.default_rng(6).bytes(500))}), 415,
                                         "not_an_image", "upload"),
        "truncated PNG": (dict(data=encode(Image.fromarray(face), "PNG")[:300]), 400, "corrupt_image", "body"),
        "JSON list": (dict(json=[1, 2, 3]), 400, "invalid_json", "body"),
        "JSON non-string data": (dict(json={"data": 12345}), 400, "invalid_json", "data"),
        "JSON bad base64": (dict(json={"data": "%%%"}), 400, "bad_base64", "data"),
        "truncated JSON": (dict(data=b'{"data": "iVBOR', headers={"Content-Type": "application/json"}), 400,
                           "invalid_json", "body"),
        "text body": (dict(data="hello", headers={"Content-Type": "text/plain"}), 415, "not_an_image", "body"),
        "form without a file": (dict(files={"caption": (None, "hello")}), 415, "not_an_image", "caption"),
    }
    before = worker_identities(torchserve, "deepfake")
    for name, (kwargs, status, code, field) in cases.items():
        response = post(torchserve, **kwargs)
        assert response.status_code == status, (name, response.text)
        error = response.json().get("error", {})
        assert (error.get("code"), error.get("field")) == (code, field), (name, error)
        assert not error or (error["message"] and error["accepted"] and error["status"] == status), (name, error)
    assert worker_identities(torchserve, "deepfake") == before  # same worker ids, pids and start times
    assert post(torchserve, data=encode(Image.fromarray(face), "PNG")).status_code == 200


def test_bodies_over_the_two_size_limits(torchserve, face):
    # Under max_request_size (9 MiB) but over the handler's max_upload_bytes (6 MiB): the handler's JSON 413,
    # raw or as base64 JSON. Over max_request_size: the frontend's bare 413, with an empty body.
    image = encode(Image.fromarray(face), "PNG")
    over_upload = image + bytes(6 * 2**20 + 1 - len(image))
    as_json = {"data": base64.b64encode(over_upload).decode()}
    for kwargs, field in ((dict(data=over_upload), "body"), (dict(json=as_json), "data")):
        response = post(torchserve, **kwargs)
        assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
        assert response.json()["error"]["field"] == field and "6291456" in response.json()["error"]["accepted"]
    over_request = post(torchserve, data=image + bytes(9 * 2**20 + 1 - len(image)))
    assert over_request.status_code == 413 and over_request.content == b""
    assert over_request.headers["content-length"] == "0"
    assert post(torchserve, data=image).status_code == 200  # the connection pool and the worker carry on


def test_handler_metrics_count_what_was_sent(torchserve, tiny_dataset):
    bodies = [(tiny_dataset / "real" / f"real_{i:05d}.jpg").read_bytes() for i in range(3)]
    bodies += [(tiny_dataset / "fake" / f"fake_{i:05d}.jpg").read_bytes() for i in range(3)]
    bodies += [b"not an image", b"still not an image", b"", png_header_claiming(100_000, 100_000)]
    before = prometheus_samples(torchserve)
    responses = [post(torchserve, data=body) for body in bodies]  # one at a time: one batch each
    labels = [r.json()["label"] for r in responses if r.status_code == 200]
    codes = [r.json()["error"]["code"] for r in responses if r.status_code != 200]
    assert len(labels) == 6 and codes == ["not_an_image", "not_an_image", "empty_input", "image_too_large"]
    expected = {
        ("DeepfakePredictions", "real"): labels.count("real"),
        ("DeepfakePredictions", "fake"): labels.count("fake"),
        ("DeepfakeItemErrors", "not_an_image"): 2,
        ("DeepfakeItemErrors", "empty_input"): 1,
        ("DeepfakeItemErrors", "image_too_large"): 1,
        ("DeepfakeBatches", None): len(bodies),
        ("DeepfakeBatchItems", None): len(bodies),
        ("DeepfakePreprocessSeconds_count", None): len(bodies),
        ("DeepfakeInferenceSeconds_count", None): len(labels),  # only batches with an image reach the model
    }

    def delta(samples: Samples, name: str, dimension: str | None) -> float:
        extra = {"Label": dimension} if name == "DeepfakePredictions" else (
            {"ErrorCode": dimension} if name == "DeepfakeItemErrors" else {})
        return value(samples, name, ModelName="deepfake", **extra) - value(before, name, ModelName="deepfake", **extra)

    def measured(samples: Samples) -> dict:
        return {key: delta(samples, *key) for key in expected}

    after = wait_for_samples(torchserve, lambda samples: measured(samples) == expected)
    assert measured(after) == expected
    for histogram in ("DeepfakePreprocessSeconds", "DeepfakeInferenceSeconds"):
        assert delta(after, f"{histogram}_sum", None) > 0
        assert value(after, f"{histogram}_bucket", ModelName="deepfake", le="+Inf") == value(
            after, f"{histogram}_count", ModelName="deepfake")


def test_batch_metrics_show_batching(torchserve, tiny_dataset):
    bodies = [(tiny_dataset / "real" / f"real_{i:05d}.jpg").read_bytes() for i in range(BATCH_MODEL_SIZE)]
    before = prometheus_samples(torchserve)
    statuses: list[int] = [0] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        barrier.wait()
        statuses[index] = post(torchserve, f"/predictions/{BATCH_MODEL}", data=bodies[index]).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * len(bodies)

    def counts(samples: Samples) -> tuple[float, float]:
        return tuple(value(samples, name, ModelName=BATCH_MODEL) - value(before, name, ModelName=BATCH_MODEL)
                     for name in ("DeepfakeBatchItems", "DeepfakeBatches"))

    after = wait_for_samples(torchserve, lambda samples: counts(samples) == (BATCH_MODEL_SIZE, 1))
    assert counts(after) == (BATCH_MODEL_SIZE, 1)  # six items in one batch: items > batches means batching


def test_customized_describe_reports_the_settings_in_force(torchserve, tiny_export):
    # GET /models/NAME?customized=true runs the handler's describe_handle (scripts/ops describe --handler-info).
    response = requests.get(f"{torchserve.config.management_url}/models/deepfake", params={"customized": "true"},
                            timeout=30)
    assert response.status_code == 200, response.text
    described = response.json()[0]["customizedMetadata"]
    described = json.loads(described) if isinstance(described, str) else described
    metadata = ModelMetadata.load(tiny_export / "metadata.json")
    assert described["threshold"] == metadata.threshold
    assert described["model"]["name"] == "deepfake" and described["model"]["version"] == "1.0"
    assert described["borderline_band"] == [0.5, 0.7]
    assert described["max_upload_bytes"] == 6 * 2**20
    assert described["training"]["calibration"] == "temperature"
    assert described["training"]["test_metrics"]["roc_auc"] == metadata.training["evaluation"]["calibrated"]["roc_auc"]
    # The describe call is not a prediction: the worker still answers predictions afterwards.
    assert post(torchserve, data=b"plain text, not an image").status_code == 415
