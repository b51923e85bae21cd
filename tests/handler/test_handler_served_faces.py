"""End to end: a face model's .mar on a real TorchServe answers per face and counts what it scored.

The face-model archive (the tiny export with `faces` in its metadata.json, packaged by scripts/package_model.py)
is registered on the session's shared `torchserve` for this module and unregistered afterwards, so no second
server is started.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

from handler.faces import FaceConfig, detect_faces
from handler.forensics import decode_rgb
from handler.scoring import REGION_FACES, REGION_NO_FACE, REGION_WHOLE_IMAGE, ExportedDetector, regions_to_score
from handler.verdict import NO_FACE_NOTE
from scripts.ops import ManagementClient, Target
from scripts.serve import TorchServe
from tests.conftest import FACE_MODEL
from tests.handler.face_images import ONE_FACE_PHOTOS, encode, no_face, two_faces
from tests.handler.test_handler_served import post, prometheus_samples, value, wait_for_samples

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def face_model(torchserve: TorchServe, face_model_archive: Path) -> Iterator[str]:
    """deepfake_faces registered (one worker, READY) on the shared server for this module's tests."""
    client = ManagementClient(Target(url=torchserve.config.management_url, model_store=torchserve.config.model_store))
    registered = client.register(face_model_archive.name, FACE_MODEL, workers=1)
    yield FACE_MODEL
    client.unregister(FACE_MODEL, registered["modelVersion"])


@pytest.fixture(scope="module")
def in_process(face_export: Path):
    """Each region's calibrated probability of fake, computed here from the export the .mar was built of."""
    detector = ExportedDetector.load(face_export)

    def score(data: bytes) -> tuple[str, list[list[int]], list[float]]:
        regions = regions_to_score(decode_rgb(data), detector.metadata.preprocessing, detector.metadata.faces)
        scores = detector.score(torch.stack(regions.inputs))
        return regions.scored, [box.to_list() for box in regions.boxes], [s.calibrated for s in scores]

    return score


def test_a_face_photo_and_a_two_face_image_are_scored_per_face(torchserve, face_model, face_photos_dir, in_process):
    photo = (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()
    pair = encode(two_faces(face_photos_dir))
    for data, faces in ((photo, 1), (pair, 2)):
        response = post(torchserve, f"/predictions/{face_model}", data=data)
        assert response.status_code == 200, response.text
        body = response.json()
        scored, boxes, expected = in_process(data)
        assert body["scored"] == scored == REGION_FACES and body["model"]["name"] == FACE_MODEL
        assert [face["box"] for face in body["faces"]] == boxes == [
            box.to_list() for box in detect_faces(decode_rgb(data), FaceConfig())] and len(boxes) == faces
        assert [face["probability_fake"] for face in body["faces"]] == pytest.approx(expected, abs=1e-6)
        deciding = body["faces"][body["decided_by_face"]]
        assert body["probability_fake"] == deciding["probability_fake"] == max(f["probability_fake"]
                                                                               for f in body["faces"])
        assert (body["label"], body["confidence"], body["borderline"]) == (
            deciding["label"], deciding["confidence"], deciding["borderline"])


def test_no_face_is_scored_whole_with_a_note(torchserve, face_model):
    response = post(torchserve, f"/predictions/{face_model}", data=encode(no_face()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["scored"], body["faces"], body["note"]) == (REGION_NO_FACE, [], NO_FACE_NOTE)


def test_scored_images_and_faces_are_counted_on_the_metrics_endpoint(torchserve, face_model, face_photos_dir):
    photo = (face_photos_dir / ONE_FACE_PHOTOS[1]).read_bytes()
    pair = encode(two_faces(face_photos_dir))
    before = prometheus_samples(torchserve)
    sent = [(face_model, photo), (face_model, pair), (face_model, encode(no_face())), ("deepfake", photo)]
    for model, data in sent:
        assert post(torchserve, f"/predictions/{model}", data=data).status_code == 200
    expected = {
        ("DeepfakeScoredImages", face_model, REGION_FACES): 2,
        ("DeepfakeScoredImages", face_model, REGION_NO_FACE): 1,
        ("DeepfakeScoredFaces", face_model, None): 3,
        ("DeepfakeScoredImages", "deepfake", REGION_WHOLE_IMAGE): 1,  # the whole-image model beside it
    }

    def measured(samples) -> dict:
        def labels(model, scored):
            return {"ModelName": model, **({"Scored": scored} if scored else {})}
        return {key: value(samples, key[0], **labels(*key[1:])) - value(before, key[0], **labels(*key[1:]))
                for key in expected}

    after = wait_for_samples(torchserve, lambda samples: measured(samples) == expected)
    assert measured(after) == expected


def test_describe_shows_the_face_settings_in_force(torchserve, face_model):
    response = requests.get(f"{torchserve.config.management_url}/models/{face_model}", params={"customized": "true"},
                            timeout=30)
    assert response.status_code == 200, response.text
    described = response.json()[0]["customizedMetadata"]
    described = json.loads(described) if isinstance(described, str) else described
    assert described["faces"] == {"mode": "auto", "face_model": True, "config": FaceConfig().to_dict()}
