"""benchmarks/naive_server.py through Flask's test client: the project's verdicts, coded errors, a health check."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.naive_server import create_app
from handler.scoring import ExportedDetector, decode_for_scoring, most_fake, regions_to_score
from handler.torchscript import ServingOptions


@pytest.fixture(scope="module")
def client(tiny_export):
    return create_app(tiny_export).test_client()


@pytest.fixture(scope="module")
def reference(tiny_export) -> ExportedDetector:
    """The export scored the way the handler scores it, with the naive server's model preparation."""
    return ExportedDetector.load(tiny_export, "cpu", ServingOptions(optimization="none"))


def handler_probability(detector: ExportedDetector, data: bytes) -> float:
    """Calibrated probability of fake through the handler's own decode → regions → score path."""
    preprocessing, faces = detector.metadata.preprocessing, detector.metadata.faces
    regions = regions_to_score(decode_for_scoring(data, preprocessing, faces), preprocessing, faces)
    scores = detector.score(detector.serving.batch(list(regions.inputs), detector.device))
    return scores[most_fake(scores)].calibrated


def photos(tiny_dataset: Path) -> list[Path]:
    return sorted((tiny_dataset / "real").glob("*.jpg"))[:2] + sorted((tiny_dataset / "fake").glob("*.jpg"))[:2]


def test_a_jpeg_gets_the_verdict_the_handler_would_give(client, reference, tiny_dataset):
    for path in photos(tiny_dataset):
        data = path.read_bytes()
        response = client.post("/predict", data=data, content_type="application/octet-stream")
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        expected = round(handler_probability(reference, data), 6)
        assert body["probability_fake"] == pytest.approx(expected, abs=1e-6), path.name
        assert body["label"] == ("fake" if body["probability_fake"] >= reference.metadata.threshold else "real")
        assert body["timing_ms"]["batch_size"] == 1  # the load client reads it: one image per forward pass


def test_the_same_image_twice_gets_the_same_answer(client, tiny_dataset):
    data = photos(tiny_dataset)[0].read_bytes()
    first, second = (client.post("/predict", data=data).get_json() for _ in range(2))
    assert first == second


@pytest.mark.parametrize(("damage", "code"), [
    ("first half of a JPEG", "corrupt_image"),
    ("JPEG signature then zeros", "corrupt_image"),
    ("plain text", "not_an_image"),
    ("empty body", "empty_input"),
])
def test_unreadable_bodies_get_400_with_the_decode_error_code(client, tiny_dataset, damage, code):
    jpeg = photos(tiny_dataset)[0].read_bytes()
    data = {"first half of a JPEG": jpeg[:len(jpeg) // 2], "JPEG signature then zeros": b"\xff\xd8\xff" + bytes(200),
            "plain text": b"this is a note, not a picture", "empty body": b""}[damage]
    response = client.post("/predict", data=data, content_type="application/octet-stream")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]


def test_ping_answers_healthy(client):
    response = client.get("/ping")
    assert response.status_code == 200 and response.get_json() == {"status": "Healthy"}
