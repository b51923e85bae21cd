"""End to end: a face model's .mar on a real TorchServe answers per face and counts what it scored.

The face-model archive (the tiny export with `faces` in its metadata.json, packaged by scripts/package_model.py)
is registered on the session's shared `torchserve` for this module and unregistered afterwards, so no second
server is started. So is a batching variant of it (batchSize 4, a long maxBatchDelay), for one batch of four
requests whose items are answered one by one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml

from handler.faces import FaceConfig, detect_faces
from handler.forensics import decode_rgb
from handler.scoring import REGION_FACES, REGION_WHOLE_IMAGE, ExportedDetector, regions_to_score
from scripts.ops import ManagementClient, Target
from scripts.package_model import PackageConfig, package_model
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


FACE_BATCH_MODEL, FACE_BATCH_SIZE = "deepfake_faces_batch4", 4


@pytest.fixture(scope="module")
def face_batch_model(torchserve: TorchServe, face_export: Path, one_worker_model_config: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The face export packaged with batchSize 4 and a 5 s maxBatchDelay: four concurrent requests make one batch."""
    settings = yaml.safe_load(one_worker_model_config.read_text())
    settings.update(batchSize=FACE_BATCH_SIZE, maxBatchDelay=5000)
    model_config = tmp_path_factory.mktemp("face_batch_config") / "model-config.yaml"
    model_config.write_text(yaml.safe_dump(settings, sort_keys=False))
    archive = package_model(PackageConfig(export_dir=face_export, model_store=torchserve.config.model_store,
                                          model_name=FACE_BATCH_MODEL, model_config=model_config))
    client = ManagementClient(Target(url=torchserve.config.management_url, model_store=torchserve.config.model_store))
    registered = client.register(archive.name, FACE_BATCH_MODEL, workers=1)
    yield FACE_BATCH_MODEL
    client.unregister(FACE_BATCH_MODEL, registered["modelVersion"])


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


def test_one_batch_answers_422_for_each_image_it_cannot_judge_and_scores_the_face(torchserve, face_batch_model,
                                                                                  face_photos_dir):
    strip, icon = np.full((20, 2000, 3), 128, np.uint8), np.full((16, 16, 3), 128, np.uint8)
    bodies = [encode(no_face()), encode(strip), encode(icon), (face_photos_dir / ONE_FACE_PHOTOS[0]).read_bytes()]
    responses: list[requests.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        barrier.wait()
        responses[index] = post(torchserve, f"/predictions/{face_batch_model}", data=bodies[index])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [response.status_code for response in responses] == [422, 422, 422, 200], [r.text for r in responses]
    faceless, thin, tiny, good = (response.json() for response in responses)
    assert [(item["error"]["code"], item["error"]["status"], item["error"]["field"]) for item in (faceless, thin, tiny)
            ] == [("no_face_found", 422, "body"), ("degenerate_image", 422, "body"), ("degenerate_image", 422, "body")]
    assert "no face was found" in faceless["error"]["message"] and faceless["error"]["accepted"]
    assert "2000x20 pixels" in thin["error"]["message"] and "16x16 pixels" in tiny["error"]["message"]
    assert good["scored"] == REGION_FACES and len(good["faces"]) == 1 and good["label"] in {"real", "fake"}
    assert good["timing_ms"]["batch_size"] == FACE_BATCH_SIZE  # the four requests were one batch
    assert len({item["request_id"] for item in (faceless, thin, tiny, good)}) == 4


def test_scored_images_and_faces_are_counted_on_the_metrics_endpoint(torchserve, face_model, face_photos_dir):
    photo = (face_photos_dir / ONE_FACE_PHOTOS[1]).read_bytes()
    pair = encode(two_faces(face_photos_dir))
    before = prometheus_samples(torchserve)
    sent = [(face_model, photo, 200), (face_model, pair, 200), (face_model, encode(no_face()), 422),
            ("deepfake", photo, 200)]
    for model, data, status in sent:
        assert post(torchserve, f"/predictions/{model}", data=data).status_code == status
    expected = {
        ("DeepfakeScoredImages", face_model, REGION_FACES): 2,
        ("DeepfakeItemErrors", face_model, "no_face_found"): 1,  # refused: an error, not a scored image
        ("DeepfakeScoredFaces", face_model, None): 3,
        ("DeepfakeScoredImages", "deepfake", REGION_WHOLE_IMAGE): 1,  # the whole-image model beside it
    }

    def measured(samples) -> dict:
        def labels(model, scored):
            dimension = "ErrorCode" if scored == "no_face_found" else "Scored"
            return {"ModelName": model, **({dimension: scored} if scored else {})}
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
    assert described["faces"] == {"mode": "auto", "face_model": True, "no_face": "refuse",
                                  "config": FaceConfig().to_dict()}
    assert (described["min_image_side"], described["max_aspect_ratio"]) == (32, 4.0)
