"""Videos through the handler on a real ts Context: answers, aggregation, limits, batches mixed with images, faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from handler.faces import FaceConfig, detect_faces
from handler.video import top_k, uniform_indices
from scripts.serve import read_properties
from tests.handler.face_images import ONE_FACE_PHOTOS, at_height, encode, no_face, photo_rgb
from tests.handler.video_files import AVI, FORMATS, LOSSLESS_AVI, MP4, WEBM, demo_frames, image_rgb, write_video

VIDEO_FIELDS = ("label", "probability_fake", "confidence", "probabilities", "threshold", "calibrated", "borderline",
                "model", "timing_ms", "request_id", "scored", "video", "timeline")


def statuses(context) -> list[int]:
    return [processor.get_response_status_code() for processor in context.request_processor]


def assert_consistent_video_answer(answer: dict, frames_sampled: int, frame_count: int, fps: float) -> None:
    """What every video answer must satisfy, whatever the model says."""
    assert all(name in answer for name in VIDEO_FIELDS), sorted(answer)
    assert answer["scored"] == "video"
    video, timeline = answer["video"], answer["timeline"]
    assert video["frames_sampled"] == frames_sampled == video["frames_scored"] == len(timeline)
    assert video["frame_count"] == frame_count and video["fps"] == pytest.approx(fps)
    assert video["duration_s"] == pytest.approx(frame_count / fps)
    assert [entry["frame"] for entry in timeline] == uniform_indices(frame_count, frames_sampled)
    assert [entry["time_s"] for entry in timeline] == pytest.approx([entry["frame"] / fps for entry in timeline])
    # The verdict is the mean of the top-k frame scores, judged by the image threshold.
    scores = [entry["probability_fake"] for entry in timeline]
    k = top_k(len(scores), video["aggregation"]["top_fraction"])
    assert video["aggregation"]["rule"] == "top_k_mean" and video["aggregation"]["k"] == k
    assert answer["probability_fake"] == pytest.approx(float(np.mean(sorted(scores)[-k:])), abs=2e-6)
    top = sorted(timeline, key=lambda entry: -entry["probability_fake"])[:k]
    assert sorted(video["aggregation"]["decided_by_frames"]) == video["aggregation"]["decided_by_frames"]
    assert {entry["probability_fake"] for entry in top} == {
        entry["probability_fake"] for entry in timeline if entry["frame"] in video["aggregation"]["decided_by_frames"]}
    assert answer["label"] == ("fake" if answer["probability_fake"] >= answer["threshold"] else "real")
    for entry in timeline:
        assert entry["label"] == ("fake" if entry["probability_fake"] >= answer["threshold"] else "real")


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.container)
def test_a_video_in_each_container_gets_a_video_verdict_and_a_uniform_timeline(handler_and_context, tiny_dataset,
                                                                               fmt):
    frames = demo_frames(tiny_dataset, "fake", 10) + demo_frames(tiny_dataset, "real", 10)
    handler, context = handler_and_context(1, video_frames=8)
    [answer] = handler.handle([{"body": write_video(frames, fmt, fps=5.0)}], context)
    assert statuses(context) == [200], answer
    assert_consistent_video_answer(answer, frames_sampled=8, frame_count=20, fps=5.0)
    assert answer["video"]["container"] == fmt.container
    assert (answer["video"]["width"], answer["video"]["height"]) == (128, 128)
    assert all(entry["scored"] == "whole_image" and "faces" not in entry for entry in answer["timeline"])
    assert answer["timing_ms"]["model_inputs"] == 8


def test_a_video_of_one_repeated_frame_scores_as_that_frame_sent_as_an_image(handler_and_context, tiny_dataset):
    frame = image_rgb(tiny_dataset / "fake" / "fake_00003.jpg")
    other = image_rgb(tiny_dataset / "real" / "real_00003.jpg")
    handler, context = handler_and_context(3)
    asking = {"uncalibrated": bytearray(b"true")}  # the raw softmax too: the tiny model's calibration flattens
    video, image, other_image = handler.handle([{"data": write_video([frame] * 12, LOSSLESS_AVI), **asking},
                                                {"data": encode(frame, "PNG"), **asking},
                                                {"data": encode(other, "PNG"), **asking}], context)
    assert statuses(context) == [200, 200, 200]
    assert {entry["probability_fake"] for entry in video["timeline"]} == {image["probability_fake"]}
    assert video["probability_fake"] == pytest.approx(image["probability_fake"], abs=1e-6)
    raw = video["uncalibrated"]["probability_fake"]
    assert raw == pytest.approx(image["uncalibrated"]["probability_fake"], abs=1e-5)
    assert abs(raw - other_image["uncalibrated"]["probability_fake"]) > 1e-4  # a different frame scores differently
    assert (video["label"], video["confidence"], video["borderline"]) == (
        image["label"], image["confidence"], image["borderline"])


def test_a_corrupt_video_in_a_batch_of_three_fails_alone(handler_and_context, tiny_dataset):
    image = (tiny_dataset / "real" / "real_00001.jpg").read_bytes()
    good = write_video(demo_frames(tiny_dataset, "real", 6), WEBM)
    corrupt = write_video(demo_frames(tiny_dataset, "real", 6), MP4)[:400]  # its index (moov) is at the end
    handler, context = handler_and_context(3)
    answers = handler.handle([{"body": image}, {"data": corrupt}, {"body": good}], context)
    assert statuses(context) == [200, 400, 200]
    assert answers[0]["scored"] == "whole_image" and answers[2]["scored"] == "video"
    error = answers[1]["error"]
    assert error["code"] == "unreadable_video" and error["field"] == "data" and "MP4" in error["accepted"]
    assert answers[1]["request_id"] == "request-1"
    # The worker goes on: the same handler answers the next batch.
    [again] = handler.handle([{"body": good}], context)
    assert again["scored"] == "video"


@pytest.mark.parametrize(("settings", "code", "status", "says"), [
    ({"video_max_bytes": 5000}, "video_too_large", 413, "5000 bytes"),
    ({"video_max_seconds": 2.5}, "video_too_long", 413, "2.5 s"),
    ({"video_max_frames": 10}, "video_too_long", 413, "10 frames"),
    ({"max_image_pixels": 128 * 127}, "video_frame_too_large", 413, "128x128"),
])
def test_videos_over_a_limit_get_its_code_and_status(handler_and_context, tiny_dataset, settings, code, status, says):
    data = write_video(demo_frames(tiny_dataset, "fake", 12), AVI, fps=4.0)  # 3 s, 12 frames, 128x128
    assert len(data) > 5000
    handler, context = handler_and_context(1, **settings)
    [answer] = handler.handle([{"body": data}], context)
    assert statuses(context) == [status]
    assert answer["error"]["code"] == code and answer["error"]["status"] == status
    assert says in answer["error"]["message"] and answer["error"]["field"] == "body"
    assert answer["error"]["accepted"].endswith(".") and "{" not in answer["error"]["accepted"]


def test_chunked_forward_passes_give_the_same_scores(handler_and_context, tiny_dataset):
    data = write_video(demo_frames(tiny_dataset, "fake", 12) + demo_frames(tiny_dataset, "real", 12), MP4)
    whole, context = handler_and_context(1, video_frames=24)
    [one_pass] = whole.handle([{"body": data}], context)
    chunked, context = handler_and_context(1, video_frames=24, max_batch_inputs=5)
    [in_chunks] = chunked.handle([{"body": data}], context)
    assert [entry["probability_fake"] for entry in in_chunks["timeline"]] == pytest.approx(
        [entry["probability_fake"] for entry in one_pass["timeline"]], abs=1e-5)
    assert one_pass["timing_ms"]["model_inputs"] == in_chunks["timing_ms"]["model_inputs"] == 24


def test_a_face_model_scores_each_frame_on_its_faces_with_boxes_in_frame_pixels(handler_and_context, face_photos_dir):
    photos = [at_height(photo_rgb(face_photos_dir, name), 360) for name in ONE_FACE_PHOTOS]
    width = min(photo.shape[1] for photo in photos) // 2 * 2
    frames = [photo[:, :width] for photo in photos for _ in range(3)]
    handler, context = handler_and_context(1, faces="on", video_frames=9)
    [answer] = handler.handle([{"body": write_video(frames, AVI, fps=3.0)}], context)
    assert statuses(context) == [200], answer
    assert_consistent_video_answer(answer, frames_sampled=9, frame_count=9, fps=3.0)
    for entry, frame in zip(answer["timeline"], frames, strict=True):
        assert entry["scored"] == "faces" and len(entry["faces"]) >= 1
        expected = detect_faces(frame, FaceConfig())[0]
        x, y, w, h = entry["faces"][0]["box"]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= 360
        overlap_w = min(x + w, expected.x + expected.width) - max(x, expected.x)
        overlap_h = min(y + h, expected.y + expected.height) - max(y, expected.y)
        assert overlap_w * overlap_h > 0.7 * expected.area  # the face the photo has, where it is in the frame
        assert entry["probability_fake"] == max(face["probability_fake"] for face in entry["faces"])


def test_frames_without_a_face_are_listed_but_left_out_of_the_verdict(handler_and_context, face_photos_dir):
    blank = no_face(240, 320)
    face = blank.copy()
    face[:, 40:280] = at_height(photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0]), 240)  # a 240x240 portrait
    frames = [blank, face, blank, face, blank, blank]
    data = write_video(frames, LOSSLESS_AVI, fps=2.0)
    handler, context = handler_and_context(1, faces="on", video_frames=6)
    [answer] = handler.handle([{"body": data}], context)
    assert statuses(context) == [200], answer
    timeline, facts = answer["timeline"], answer["video"]
    assert [entry["frame"] for entry in timeline] == list(range(6))  # every sampled frame keeps its place
    judged = [entry for entry in timeline if entry["probability_fake"] is not None]
    assert [entry["frame"] for entry in judged] == [1, 3] and all(entry["scored"] == "faces" for entry in judged)
    assert all(entry["scored"] == "no_face" and entry["faces"] == [] and entry["label"] is None
               for entry in timeline if entry["frame"] not in (1, 3))
    assert (facts["frames_sampled"], facts["frames_scored"], facts["frames_without_face"]) == (6, 2, 4)
    assert answer["timing_ms"]["model_inputs"] == 2  # only the two faces went through the model
    k = facts["aggregation"]["k"]
    assert answer["probability_fake"] == pytest.approx(
        float(np.mean(sorted(entry["probability_fake"] for entry in judged)[-k:])), abs=2e-6)
    assert set(facts["aggregation"]["decided_by_frames"]) <= {1, 3}
    # Under no_face: whole_image the same frames are scored whole, as before the setting existed.
    handler, context = handler_and_context(1, faces="on", video_frames=6, no_face="whole_image")
    [fallback] = handler.handle([{"body": data}], context)
    assert [entry["scored"] for entry in fallback["timeline"]].count("whole_image_no_face") == 4
    assert (fallback["video"]["frames_scored"], fallback["video"]["frames_without_face"]) == (6, 4)


def test_a_video_with_no_face_in_any_sampled_frame_gets_422_beside_a_scored_image(handler_and_context,
                                                                                 face_photos_dir):
    photo = (face_photos_dir / ONE_FACE_PHOTOS[1]).read_bytes()
    faceless = write_video([no_face(240, 320)] * 4, AVI, fps=4.0)
    handler, context = handler_and_context(2, faces="on", video_frames=4)
    video, image = handler.handle([{"data": faceless}, {"body": photo}], context)
    assert statuses(context) == [422, 200]
    assert video["error"]["code"] == "no_face_found" and video["error"]["field"] == "data"
    assert "any of the video's 4 sampled frames" in video["error"]["message"]
    assert image["scored"] == "faces"


def test_describe_reports_the_video_settings(handler_and_context):
    handler, _ = handler_and_context(1, video_frames=12, video_top_fraction=0.5, video_max_seconds=30)
    described = handler.describe_handle()["video"]
    assert described["frames"] == 12 and described["aggregation"] == {"rule": "top_k_mean", "top_fraction": 0.5}
    assert described["max_seconds"] == 30 and described["max_bytes"] == 6 * 2**20


@pytest.mark.parametrize("setting", [{"video_frames": 0}, {"video_frames": 300}, {"video_top_fraction": 0},
                                     {"video_max_seconds": -1}, {"max_batch_inputs": 0}])
def test_invalid_video_settings_stop_the_worker_at_initialize(handler_and_context, setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        handler_and_context(1, **setting)


def test_a_video_at_the_shipped_limit_fits_every_shipped_request_limit_as_base64_json():
    config = Path(__file__).resolve().parents[2] / "config"
    video_max_bytes = yaml.safe_load((config / "model-config.yaml").read_text())["handler"]["video_max_bytes"]
    for properties in sorted(config.glob("*.properties")):
        request_limit = int(read_properties(properties)["max_request_size"])
        # 4/3 for base64 plus the JSON around it: a video under the handler's limit must reach the handler.
        assert video_max_bytes * 4 / 3 + 1024 < request_limit, properties.name
