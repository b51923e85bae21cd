"""End to end: videos on the real dev TorchServe (the session's `torchserve`), over REST and gRPC.

Every input form carries a video, a batch the frontend assembled mixes a corrupt video with good items, and an
unreadable video never costs the worker its life.
"""

from __future__ import annotations

import base64
import threading

import pytest
import requests

from scripts.grpc_client import GrpcTarget, PredictionError, TorchServeGrpc
from scripts.serve import TorchServe, model_workers
from tests.conftest import BATCH_MODEL, BATCH_MODEL_SIZE
from tests.handler.test_handler_video import assert_consistent_video_answer
from tests.handler.video_files import AVI, MOV, MP4, WEBM, demo_frames, write_video

pytestmark = pytest.mark.e2e


def post(server: TorchServe, model: str = "deepfake", **kwargs) -> requests.Response:
    return requests.post(f"{server.config.inference_url}/predictions/{model}", timeout=60, **kwargs)


def worker_identities(server: TorchServe, model: str) -> list[tuple]:
    return sorted((w["id"], w["pid"], w["startTime"]) for w in model_workers(server.config, model))


@pytest.fixture(scope="module")
def clip(tiny_dataset) -> list:
    """20 demo frames, fake then real (4 s at 5 fps)."""
    return demo_frames(tiny_dataset, "fake", 10) + demo_frames(tiny_dataset, "real", 10)


def test_every_input_form_and_container_gets_the_same_kind_of_video_answer(torchserve, clip):
    mp4, webm, avi, mov = (write_video(clip, fmt, fps=5.0) for fmt in (MP4, WEBM, AVI, MOV))
    answers = {
        "raw mp4": post(torchserve, data=mp4, headers={"Content-Type": "video/mp4"}),
        "multipart webm": post(torchserve, files={"data": ("clip.webm", webm, "video/webm")}),
        "base64 JSON avi": post(torchserve, json={"data": base64.b64encode(avi).decode()}),
        "raw mov, no type": post(torchserve, data=mov),
    }
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.text)
        answer = response.json()
        assert_consistent_video_answer(answer, frames_sampled=16, frame_count=20, fps=5.0)
        assert answer["model"]["name"] == "deepfake"
    containers = [response.json()["video"]["container"] for response in answers.values()]
    assert containers == ["mp4", "webm", "avi", "mov"]


def test_an_unreadable_video_is_a_400_and_the_worker_keeps_serving(torchserve, clip):
    before = worker_identities(torchserve, "deepfake")
    mp4 = write_video(clip, MP4, fps=5.0)
    for damaged in (mp4[: len(mp4) // 2], mp4[:12] + bytes(4000), b"\x1a\x45\xdf\xa3" + bytes(100)):
        response = post(torchserve, data=damaged)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "unreadable_video"
    assert worker_identities(torchserve, "deepfake") == before  # same worker ids, pids and start times
    assert post(torchserve, data=mp4).status_code == 200


def test_a_corrupt_video_in_a_served_batch_fails_alone(torchserve, clip, tiny_dataset):
    good_video = write_video(clip[:8], WEBM, fps=5.0)
    bodies = [good_video, write_video(clip[:8], MP4)[:500], (tiny_dataset / "real" / "real_00002.jpg").read_bytes()]
    bodies += [(tiny_dataset / "fake" / f"fake_{i:05d}.jpg").read_bytes() for i in range(BATCH_MODEL_SIZE - 3)]
    responses: list[requests.Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        barrier.wait()
        responses[index] = post(torchserve, BATCH_MODEL, data=bodies[index])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [response.status_code for response in responses] == [200, 400] + [200] * (BATCH_MODEL_SIZE - 2)
    answers = [response.json() for response in responses]
    assert answers[1]["error"]["code"] == "unreadable_video"
    assert answers[0]["scored"] == "video" and len(answers[0]["timeline"]) == 8
    assert all(answer["scored"] == "whole_image" for answer in answers[2:])
    assert {answer["timing_ms"]["batch_size"] for answer in answers if "timing_ms" in answer} == {BATCH_MODEL_SIZE}


def test_grpc_gives_the_rest_answer_and_error_for_videos(torchserve, clip):
    ports = torchserve.config.ports
    target = GrpcTarget(inference_port=ports.grpc_inference, management_port=ports.grpc_management, timeout=60)
    video = write_video(clip, AVI, fps=5.0)
    rest = post(torchserve, data=video).json()
    with TorchServeGrpc(target) as client:
        over_grpc = client.predict("deepfake", video)
        with pytest.raises(PredictionError) as damaged:
            client.predict("deepfake", video[:300])
    for answer in (rest, over_grpc):
        del answer["timing_ms"], answer["request_id"]
    assert over_grpc == rest
    assert damaged.value.status == 400 and damaged.value.body["error"]["code"] == "unreadable_video"
