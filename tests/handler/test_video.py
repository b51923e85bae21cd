"""handler.video on videos written here with OpenCV: containers, uniform sampling, limits, aggregation, answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handler.faces import FaceBox, FaceConfig
from handler.forensics import ImageDecodeError, PreprocessConfig
from handler.scoring import NO_FACE_REFUSE, REGION_FACES, REGION_NO_FACE, REGION_NONE, REGION_WHOLE_IMAGE, ScoredRegions
from handler.verdict import ItemScores, VerdictPolicy
from handler.video import (
    FrameRegions,
    SampledFrame,
    VideoConfig,
    VideoFrames,
    VideoInfo,
    VideoRegions,
    read_frames,
    sniff_container,
    top_k,
    top_k_mean,
    uniform_indices,
    video_answer,
    video_regions,
)
from tests.handler.face_images import ONE_FACE_PHOTOS, at_height, encode, no_face, photo_rgb
from tests.handler.video_files import (
    AVI,
    FORMATS,
    LOSSLESS_AVI,
    MP4,
    WEBM,
    avi_claiming,
    frame_number,
    numbered_frames,
    write_video,
)


@pytest.fixture(scope="module")
def videos() -> dict[str, bytes]:
    """37 numbered frames at 10 fps (3.6 s) in every container."""
    frames = numbered_frames(37)
    return {fmt.container: write_video(frames, fmt) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.container)
def test_each_container_is_recognised_by_its_first_bytes(videos, fmt):
    assert sniff_container(videos[fmt.container]) == fmt.container


def test_images_and_other_riff_files_are_not_videos():
    rgb = np.zeros((8, 8, 3), np.uint8)
    for image in (encode(rgb, "PNG"), encode(rgb, "JPEG"), encode(rgb, "WEBP"), encode(rgb, "GIF"), b"", b"ftyp"):
        assert sniff_container(image) is None
    assert sniff_container(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None



@pytest.mark.parametrize("brand", [b"heic", b"mif1", b"avif"])
def test_still_image_iso_bmff_files_are_not_videos(brand):
    # HEIC/AVIF photos share MP4's `ftyp` box: they must reach the image path (415 with the accepted formats).
    assert sniff_container(b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00mif1heic") is None
    assert sniff_container(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") == "mp4"


@pytest.mark.parametrize(("count", "wanted"), [(37, 8), (1000, 16), (16, 16), (5, 16), (2, 2), (9, 1), (3600, 64)])
def test_sampled_indices_are_uniform_sorted_distinct_and_include_both_ends(count, wanted):
    indices = uniform_indices(count, wanted)
    assert indices == sorted(set(indices)) and len(indices) == min(count, wanted)
    assert all(0 <= index < count for index in indices)
    if wanted > 1:
        assert indices[0] == 0 and indices[-1] == count - 1
        gaps = np.diff(indices)
        assert gaps.max() - gaps.min() <= 1  # evenly spread: gaps differ by rounding only
    assert uniform_indices(0, wanted) == []


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.container)
def test_frames_are_read_at_the_sampled_indices_and_times(videos, fmt, tmp_path):
    video = read_frames(videos[fmt.container], fmt.container, VideoConfig(frames=8), temp_dir=str(tmp_path))
    assert video.info == VideoInfo(fmt.container, 10.0, 37, 160, 64)
    assert math.isclose(video.info.duration_s, 3.7)
    assert [frame.index for frame in video.frames] == uniform_indices(37, 8) == [0, 5, 10, 15, 21, 26, 31, 36]
    assert video.sampled == 8
    for frame in video.frames:
        assert frame.rgb.shape == (64, 160, 3) and frame.rgb.dtype == np.uint8
        assert frame_number(frame.rgb) == frame.index  # the decoder returned that very frame
        assert frame.time_s == pytest.approx(frame.index / 10.0)
    assert list(tmp_path.iterdir()) == []  # the temporary copy is gone


def test_a_video_shorter_than_the_sample_gives_every_frame():
    video = read_frames(write_video(numbered_frames(5), MP4), "mp4", VideoConfig(frames=16))
    assert [frame.index for frame in video.frames] == [0, 1, 2, 3, 4] and video.sampled == 5


def test_a_lossless_video_gives_back_the_pixels_written():
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    video = read_frames(write_video(frames, LOSSLESS_AVI), "avi", VideoConfig(frames=4))
    assert all(np.array_equal(frame.rgb, frames[frame.index]) for frame in video.frames)


def test_a_video_cut_after_its_header_is_sampled_from_the_frames_that_are_there(videos):
    data = videos["avi"]
    video = read_frames(data[: len(data) // 2], "avi", VideoConfig(frames=8))
    assert 0 < video.info.frame_count < 37  # counted while reading, not the header's 37
    indices = [frame.index for frame in video.frames]
    assert indices == uniform_indices(video.info.frame_count, 8)
    # The last one was cut mid-frame: what the decoder makes of it is its business, the others are intact.
    assert all(frame_number(frame.rgb) == frame.index for frame in video.frames[:-1])


def test_a_header_that_understates_the_length_neither_skews_the_sample_nor_passes_the_limits():
    data = avi_claiming(write_video(numbered_frames(37), AVI), 10)
    video = read_frames(data, "avi", VideoConfig(frames=8))
    assert video.info.frame_count == 37  # counted, not the header's 10
    assert [frame.index for frame in video.frames] == uniform_indices(37, 8)
    assert all(frame_number(frame.rgb) == frame.index for frame in video.frames)
    with pytest.raises(ImageDecodeError) as raised:
        read_frames(data, "avi", VideoConfig(frames=8, max_frames=20))
    assert raised.value.code == "video_too_long" and "at least 21 frames" in str(raised.value)


@pytest.mark.parametrize("damage", ["garbage_after_magic", "header_only", "cut_mp4"])
def test_unreadable_videos_are_a_clear_400_code(videos, damage, tmp_path):
    data = {"garbage_after_magic": videos["mp4"][:12] + bytes(range(256)) * 20,
            "header_only": videos["webm"][:60],
            "cut_mp4": videos["mp4"][: len(videos["mp4"]) // 2]}[damage]  # mp4v puts its index (moov) last
    container = sniff_container(data)
    with pytest.raises(ImageDecodeError) as raised:
        read_frames(data, container, VideoConfig(), temp_dir=str(tmp_path))
    assert raised.value.code == "unreadable_video" and "could not be read" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("config", "code", "says"), [
    (VideoConfig(max_seconds=3.0), "video_too_long", "3.7 s"),
    (VideoConfig(max_frames=30), "video_too_long", "30 frames"),
    (VideoConfig(max_bytes=1000), "video_too_large", "1000 bytes"),
    (VideoConfig(max_frame_pixels=160 * 64 - 1), "video_frame_too_large", "160x64"),
])
def test_limits_refuse_with_their_code_and_say_the_limit(videos, config, code, says, tmp_path):
    with pytest.raises(ImageDecodeError) as raised:
        read_frames(videos["mp4"], "mp4", config, temp_dir=str(tmp_path))
    assert raised.value.code == code and says in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", [MP4, AVI, WEBM], ids=lambda fmt: fmt.container)
def test_the_limits_hold_while_reading_whatever_the_header_says(fmt):
    data = write_video(numbered_frames(61, (256, 32)), fmt)
    with pytest.raises(ImageDecodeError) as raised:
        read_frames(data, fmt.container, VideoConfig(frames=4, max_seconds=6.0))
    assert raised.value.code == "video_too_long"


@pytest.mark.parametrize("values", [{"frames": 0}, {"frames": 257}, {"top_fraction": 0.0}, {"top_fraction": 1.5},
                                    {"max_seconds": 0}, {"max_frames": 0}, {"max_bytes": 0}])
def test_impossible_video_settings_are_refused(values):
    with pytest.raises(ValueError, match="handler setting 'video_|handler setting 'max_"):
        VideoConfig(**values)


@pytest.mark.parametrize(("count", "fraction", "k"), [(16, 0.25, 4), (15, 0.25, 4), (1, 0.25, 1), (3, 0.25, 1),
                                                      (30, 0.1, 3), (7, 1.0, 7), (7, 0.01, 1)])
def test_k_is_the_ceiling_of_the_fraction_of_scored_frames(count, fraction, k):
    assert top_k(count, fraction) == k == max(1, math.ceil(round(fraction * count, 9)))


def test_the_video_score_is_the_mean_of_its_top_k_frames():
    scores = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.05, 0.6]
    aggregation = top_k_mean(scores, 0.25)
    assert aggregation.k == 2 and aggregation.decided_by == (1, 3)
    assert aggregation.probability_fake == pytest.approx((0.9 + 0.8) / 2)
    # One noisy frame does not make a real video fake, a manipulated stretch does.
    assert top_k_mean([0.05] * 15 + [0.95], 0.25).probability_fake < 0.5
    assert top_k_mean([0.05] * 12 + [0.95] * 4, 0.25).probability_fake == pytest.approx(0.95)
    with pytest.raises(ValueError):
        top_k_mean([], 0.25)


def _regions(kind: str, faces: int) -> ScoredRegions:
    boxes = tuple(FaceBox(10 * n, 5, 20, 20) for n in range(faces)) if kind == REGION_FACES else ()
    inputs = 0 if kind == REGION_NONE else max(1, faces)
    return ScoredRegions(kind, boxes, tuple(torch.zeros(4, 8, 8) for _ in range(inputs)))


def test_the_answer_carries_the_top_k_verdict_the_video_facts_and_a_timeline_in_time_order():
    frames = (FrameRegions(0, 0.0, _regions(REGION_FACES, 2)), FrameRegions(12, 0.5, _regions(REGION_NO_FACE, 0)),
              FrameRegions(24, 1.0, _regions(REGION_FACES, 1)), FrameRegions(36, 1.5, _regions(REGION_FACES, 1)))
    video = VideoRegions(VideoInfo("webm", 24.0, 37, 320, 240), 5, frames)
    assert len(video.inputs) == 5
    scores = [ItemScores(0.2, 0.3), ItemScores(0.7, 0.6), ItemScores(0.1, 0.1), ItemScores(0.9, 0.8),
              ItemScores(0.4, 0.5)]
    answer = video_answer(video, scores, VerdictPolicy(threshold=0.6), top_fraction=0.5, calibrated=True,
                          uncalibrated=True)
    assert answer["scored"] == "video"
    assert answer["probability_fake"] == pytest.approx((0.9 + 0.7) / 2) and answer["label"] == "fake"
    assert answer["threshold"] == 0.6 and answer["calibrated"] is True
    assert answer["uncalibrated"]["probability_fake"] == pytest.approx((0.8 + 0.6) / 2)
    assert answer["video"] == {
        "container": "webm", "duration_s": pytest.approx(37 / 24), "fps": 24.0, "frame_count": 37, "width": 320,
        "height": 240, "frames_sampled": 5, "frames_scored": 4, "frames_without_face": 1,
        "aggregation": {"rule": "top_k_mean", "k": 2, "top_fraction": 0.5, "decided_by_frames": [0, 24]}}
    timeline = answer["timeline"]
    assert [entry["frame"] for entry in timeline] == [0, 12, 24, 36]
    assert [entry["time_s"] for entry in timeline] == [0.0, 0.5, 1.0, 1.5]
    assert [entry["probability_fake"] for entry in timeline] == pytest.approx([0.7, 0.1, 0.9, 0.4])
    assert [entry["label"] for entry in timeline] == ["fake", "real", "fake", "real"]
    assert timeline[0]["faces"] == [{"box": [0, 5, 20, 20], "probability_fake": 0.2},
                                    {"box": [10, 5, 20, 20], "probability_fake": 0.7}]
    assert timeline[1]["scored"] == REGION_NO_FACE and timeline[1]["faces"] == []


def test_frames_without_a_face_under_refuse_stay_in_the_timeline_but_out_of_the_verdict():
    frames = (FrameRegions(0, 0.0, _regions(REGION_NONE, 0)), FrameRegions(10, 0.5, _regions(REGION_FACES, 1)),
              FrameRegions(20, 1.0, _regions(REGION_NONE, 0)), FrameRegions(30, 1.5, _regions(REGION_FACES, 2)))
    video = VideoRegions(VideoInfo("mp4", 20.0, 31, 320, 240), 4, frames)
    assert len(video.inputs) == 3 and video.faces_looked_for
    scores = [ItemScores(0.3, 0.2), ItemScores(0.8, 0.7), ItemScores(0.6, 0.5)]
    assert [len(frame) for frame in video.frame_scores(scores)] == [0, 1, 0, 2]
    answer = video_answer(video, scores, VerdictPolicy(threshold=0.5), top_fraction=0.5, calibrated=True,
                          uncalibrated=True)
    # Two judged frames (0.3 and 0.8, the most-fake face of frame 30): k = 1, frame 30 decides.
    assert answer["probability_fake"] == pytest.approx(0.8) and answer["uncalibrated"]["probability_fake"] == 0.7
    facts = answer["video"]
    assert (facts["frames_scored"], facts["frames_without_face"], facts["aggregation"]["k"]) == (2, 2, 1)
    assert facts["aggregation"]["decided_by_frames"] == [30]
    timeline = answer["timeline"]
    assert [entry["frame"] for entry in timeline] == [0, 10, 20, 30]
    assert [entry["probability_fake"] for entry in timeline] == [None, 0.3, None, 0.8]
    assert [entry["label"] for entry in timeline] == [None, "real", None, "fake"]
    assert [entry["scored"] for entry in timeline] == [REGION_NONE, REGION_FACES, REGION_NONE, REGION_FACES]
    assert timeline[0]["faces"] == timeline[2]["faces"] == []


def test_a_face_model_refuses_a_video_with_no_face_in_any_frame_and_keeps_the_faceless_frames(face_photos_dir):
    blank = no_face(240, 320)
    face = blank.copy()
    face[:, 40:280] = at_height(photo_rgb(face_photos_dir, ONE_FACE_PHOTOS[0]), 240)  # a 240x240 portrait
    preprocess = PreprocessConfig(input_size=(64, 64))

    def sampled(*rgbs):
        frames = tuple(SampledFrame(index, index / 10.0, rgb) for index, rgb in enumerate(rgbs))
        return VideoFrames(VideoInfo("mp4", 10.0, len(rgbs), 320, 240), frames, len(rgbs))

    with pytest.raises(ImageDecodeError) as raised:
        video_regions(sampled(blank, blank, blank), preprocess, FaceConfig(), NO_FACE_REFUSE)
    assert raised.value.code == "no_face_found" and "any of the video's 3 sampled frames" in str(raised.value)
    mixed = video_regions(sampled(blank, face, blank), preprocess, FaceConfig(), NO_FACE_REFUSE)
    assert [frame.regions.scored for frame in mixed.frames] == [REGION_NONE, REGION_FACES, REGION_NONE]
    assert len(mixed.inputs) == 1
    fallback = video_regions(sampled(blank, blank), preprocess, FaceConfig())  # whole_image: each frame scored whole
    assert [frame.regions.scored for frame in fallback.frames] == [REGION_NO_FACE] * 2 and len(fallback.inputs) == 2
    whole = video_regions(sampled(blank), preprocess, None, NO_FACE_REFUSE)  # no face looked for: nothing refused
    assert whole.frames[0].regions.scored == REGION_WHOLE_IMAGE and not whole.faces_looked_for


def test_whole_frames_carry_no_faces_and_scores_must_match_the_inputs():
    video = VideoRegions(VideoInfo("mp4", 10.0, 2, 8, 8), 2, (FrameRegions(0, 0.0, _regions(REGION_WHOLE_IMAGE, 0)),
                                                              FrameRegions(1, 0.1, _regions(REGION_WHOLE_IMAGE, 0))))
    answer = video_answer(video, [ItemScores(0.3, 0.3), ItemScores(0.1, 0.1)], VerdictPolicy(), 0.25, False, False)
    assert all("faces" not in entry for entry in answer["timeline"]) and "uncalibrated" not in answer
    assert "frames_without_face" not in answer["video"]  # faces were not looked for
    assert answer["probability_fake"] == pytest.approx(0.3) and answer["calibrated"] is False
    with pytest.raises(ValueError):
        video.frame_scores([ItemScores(0.3, 0.3)])
