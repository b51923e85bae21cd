"""Videos: recognise the container, refuse what is over the limits, sample frames uniformly, aggregate their scores.

A video is judged on `frames` frames spread evenly over its whole length, each scored like an image (every
face, or the whole frame), and gets the mean of its top-k frame scores (see :func:`top_k_mean`). With a face
model under `no_face: refuse`, a frame without a face is left out of that mean but kept in the timeline, and a
video none of whose frames shows a face is refused (422 no_face_found), as an image without one is. This module
only computes and reads: the handler turns its frames into model inputs and its aggregation into the answer.

OpenCV's VideoCapture (its bundled FFmpeg) reads only from a file, so the bytes are written to a temporary
file in the worker's temp dir (TorchServe points TMPDIR at its own) and deleted whatever happens. Frames are
read sequentially with grab() and only the wanted ones are decoded to pixels with retrieve(): measured on
300-frame 640x480 videos here, 0.35 s (mp4v) / 1.2 s (MJPG) / 2.1 s (VP8) against 0.50 / 0.98 / 2.7 s for
seeking to each of 16 frames with CAP_PROP_POS_FRAMES, with identical pixels; and reading sequentially needs
no trust in the header's frame count, which WebM files often lack.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from handler.faces import FaceConfig
from handler.forensics import ImageDecodeError, PreprocessConfig
from handler.scoring import (
    NO_FACE_WHOLE_IMAGE,
    REGION_FACES,
    REGION_NO_FACE,
    REGION_NONE,
    REGION_WHOLE_IMAGE,
    ScoredRegions,
    most_fake,
    no_face_found,
    regions_to_score,
)
from handler.verdict import ItemScores, VerdictPolicy, uncalibrated_scores, verdict

# Container name → what a client may call it; the key is what responses carry in video.container.
CONTAINERS = ("mp4", "mov", "webm", "avi")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # WebM and Matroska
# ISO BMFF major brands of QuickTime files; every other `ftyp` brand (isom, mp41, mp42, avc1, M4V, 3gp...) is mp4.
QUICKTIME_BRANDS = (b"qt  ",)
# ISO BMFF brands of still images (HEIF/HEIC, AVIF): not videos, so they take the image path and get its 415
# not_an_image with the accepted formats, instead of a misleading unreadable_video.
STILL_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1",
                      b"avif", b"avis")
# What an answer's aggregation says it did, and what its "scored" says.
AGGREGATION_RULE = "top_k_mean"
SCORED_VIDEO = "video"
# Most frames a video may be sampled at: each costs decoding and model time within one request's responseTimeout.
MAX_VIDEO_FRAMES = 256
# Frame rates outside this range are header damage, not video: the timeline's times would be meaningless.
FPS_RANGE = (0.1, 1000.0)


def sniff_container(data: bytes) -> str | None:
    """The video container the first bytes announce ("mp4", "mov", "webm", "avi"), or None for anything else.

    MP4 and MOV are ISO BMFF files whose first box is `ftyp` (at offset 4) with the major brand after it;
    WebM is EBML (1A 45 DF A3); AVI is RIFF with form type "AVI ".
    """
    if data[4:8] == b"ftyp":
        if data[8:12] in STILL_IMAGE_BRANDS:
            return None
        return "mov" if data[8:12] in QUICKTIME_BRANDS else "mp4"
    if data.startswith(EBML_MAGIC):
        return "webm"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


@dataclass(frozen=True)
class VideoConfig:
    """How a video is read and judged (model-config.yaml's video_* handler settings).

    Attributes:
        frames: frames sampled uniformly over the video (fewer when the video has fewer).
        top_fraction: share of the scored frames whose mean score is the video's (k = ceil(share x scored), >= 1).
        max_seconds: longer videos are refused with 413 video_too_long (from the header; checked again while
            reading, since headers can lie).
        max_frames: videos with more frames are refused the same way: they bound the decoding work.
        max_bytes: larger video files are refused with 413 video_too_large before anything is written or decoded.
        max_frame_pixels: frames larger than this (width x height) are refused with 413 video_frame_too_large.

    """

    frames: int = 16
    top_fraction: float = 0.25
    max_seconds: float = 60.0
    max_frames: int = 3600
    max_bytes: int = 6 * 2**20
    max_frame_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        checks = {
            "video_frames": (1 <= self.frames <= MAX_VIDEO_FRAMES, f"in [1, {MAX_VIDEO_FRAMES}]"),
            "video_top_fraction": (0.0 < self.top_fraction <= 1.0, "in (0, 1]"),
            "video_max_seconds": (self.max_seconds > 0, "above 0"),
            "video_max_frames": (self.max_frames >= 1, "at least 1"),
            "video_max_bytes": (self.max_bytes >= 1, "at least 1"),
            "max_image_pixels": (self.max_frame_pixels >= 1, "at least 1"),
        }
        for name, (valid, requirement) in checks.items():
            if not valid:
                raise ValueError(f"handler setting '{name}' must be {requirement}")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, as the answer's `video` object reports it.

    Attributes:
        container: one of CONTAINERS.
        fps: frames per second.
        frame_count: frames in the video (counted while reading when the header did not say, or lied).
        width: frame width in pixels.
        height: frame height in pixels.

    """

    container: str
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        """Length in seconds: frames / fps."""
        return self.frame_count / self.fps


@dataclass(frozen=True)
class SampledFrame:
    """One decoded frame: its index in the video, its time, and its pixels (uint8 RGB [H, W, 3])."""

    index: int
    time_s: float
    rgb: np.ndarray


@dataclass(frozen=True)
class VideoFrames:
    """The frames read from a video for scoring.

    Attributes:
        info: the video's container, rate, length and size.
        frames: the decoded sampled frames, in time order.
        sampled: how many frames were wanted; `sampled - len(frames)` failed to decode and were skipped.

    """

    info: VideoInfo
    frames: tuple[SampledFrame, ...]
    sampled: int


@dataclass(frozen=True)
class Aggregation:
    """How frame scores became the video's score.

    Attributes:
        k: how many of the highest frame scores were averaged.
        probability_fake: their mean: the video's score.
        decided_by: positions (in the frame list given) of those k frames, in time order.

    """

    k: int
    probability_fake: float
    decided_by: tuple[int, ...]


def uniform_indices(frame_count: int, wanted: int) -> list[int]:
    """`wanted` frame indices spread evenly from the first frame to the last (every frame when there are fewer).

    The first and the last frame are always included, so a manipulation at either end is seen.
    """
    if frame_count <= 0:
        return []
    if wanted >= frame_count:
        return list(range(frame_count))
    if wanted == 1:
        return [(frame_count - 1) // 2]
    return sorted({round(position) for position in np.linspace(0, frame_count - 1, wanted)})


def top_k(count: int, top_fraction: float) -> int:
    """The k for `count` scored frames: ceil(top_fraction x count), at least 1 and at most count."""
    return max(1, min(count, math.ceil(top_fraction * count - 1e-9)))


def top_k_mean(scores: Sequence[float], top_fraction: float) -> Aggregation:
    """The mean of the k highest frame scores (k from :func:`top_k`): the video's score.

    A mean over all frames would dilute a manipulated segment (two fake seconds in a minute of real video
    come out "real"); the single highest frame would let one noisy frame (motion blur, a compression burst)
    decide. The top quarter is a middle road: a segment a quarter of the samples long decides alone, a lone
    frame shifts the score by 1/k of its excess only.

    Raises:
        ValueError: no scores.

    """
    if not scores:
        raise ValueError("a video needs at least one scored frame")
    k = top_k(len(scores), top_fraction)
    order = sorted(range(len(scores)), key=lambda position: (-scores[position], position))[:k]
    mean = float(np.mean([scores[position] for position in order]))
    return Aggregation(k, mean, tuple(sorted(order)))


def _unreadable(why: str) -> ImageDecodeError:
    return ImageDecodeError("unreadable_video", f"the video could not be read: {why}")


def _too_long(info: VideoInfo, config: VideoConfig, frames: int | None = None) -> ImageDecodeError | None:
    """video_too_long when `frames` (default: the header's count) exceed the frame or the duration limit."""
    count = info.frame_count if frames is None else frames
    seconds = count / info.fps
    if count > config.max_frames or seconds > config.max_seconds:
        return ImageDecodeError(
            "video_too_long", f"the video has {'at least ' if frames is not None else ''}{count} frames "
            f"({seconds:.1f} s at {info.fps:g} fps); the limits are {config.max_seconds:g} s and "
            f"{config.max_frames} frames: trim it")
    return None


def _open_info(capture: cv2.VideoCapture, container: str, config: VideoConfig) -> VideoInfo:
    """The header's facts, checked: readable, a sane frame rate, frames not over the pixel limit."""
    if not capture.isOpened():
        raise _unreadable(f"no {container} video stream could be opened (damaged or unsupported file)")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    count = int(count) if math.isfinite(count) and count > 0 else 0  # WebM headers often give 0 or -1
    if not (math.isfinite(fps) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        raise _unreadable(f"its frame rate ({fps:g} fps) is missing or impossible")
    if width <= 0 or height <= 0:
        raise _unreadable(f"its frames have no size ({width}x{height})")
    if width * height > config.max_frame_pixels:
        raise ImageDecodeError("video_frame_too_large", f"the video's frames are {width}x{height} = "
                               f"{width * height} pixels; the limit is {config.max_frame_pixels}")
    return VideoInfo(container, fps, count, width, height)


def _read_wanted(capture: cv2.VideoCapture, info: VideoInfo, wanted: Sequence[int], config: VideoConfig
                 ) -> tuple[dict[int, np.ndarray | None], int]:
    """Reads sequentially, decoding only the `wanted` frames (None for one that failed); returns them and the count.

    Reading stops after the last wanted frame when the header's count is trusted (wanted non-empty), else at
    the end of the video; going past the limits raises video_too_long, whatever the header claimed.
    """
    pending = set(wanted)
    decoded: dict[int, np.ndarray | None] = {}
    index = 0
    while not wanted or pending:
        if not capture.grab():
            break
        if index in pending:
            ok, bgr = capture.retrieve()
            decoded[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None and bgr.size else None
            pending.discard(index)
        index += 1
        refused = _too_long(info, config, frames=index)
        if refused is not None:
            raise refused
    return decoded, index


def read_frames(data: bytes, container: str, config: VideoConfig, temp_dir: str | None = None) -> VideoFrames:
    """Decodes `config.frames` frames spread uniformly over the video in `data`.

    Args:
        data: the video file's bytes; over `config.max_bytes` they are refused before anything is written.
        container: what :func:`sniff_container` said, for the temporary file's suffix and the answer.
        config: sampling and limits.
        temp_dir: where the temporary copy goes (default: the process's temp dir).

    Raises:
        ImageDecodeError: unreadable_video (cannot be opened, no frame decodes, impossible header),
            video_too_long, video_frame_too_large.

    """
    if len(data) > config.max_bytes:
        raise ImageDecodeError("video_too_large", f"the video file is {len(data)} bytes; the limit is "
                               f"{config.max_bytes} bytes ({config.max_bytes / 2**20:g} MiB): trim or re-encode it")
    handle, path = tempfile.mkstemp(suffix=f".{container}", prefix="video-", dir=temp_dir)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return _read_file(path, container, config)
    except cv2.error as error:  # FFmpeg's failures on hostile bytes are the input's fault
        raise _unreadable(f"OpenCV failed on it ({str(error).strip().splitlines()[-1][:200]})") from error
    finally:
        os.unlink(path)


def video_regions(video: VideoFrames, preprocess: PreprocessConfig, faces: FaceConfig | None,
                  no_face: str = NO_FACE_WHOLE_IMAGE) -> VideoRegions:
    """Each sampled frame's model inputs, cut exactly as an image's (every face, or the whole frame).

    Args:
        video: the decoded frames.
        preprocess: how a region becomes a model input.
        faces: how faces are found and cut; None scores whole frames.
        no_face: what a frame without a face gives (handler.scoring.regions_to_score): under NO_FACE_REFUSE no
            input, so it stays out of the verdict.

    Raises:
        ImageDecodeError: no_face_found, when faces were looked for, `no_face` refuses, and no frame shows one.

    """
    frames = tuple(FrameRegions(frame.index, frame.time_s, regions_to_score(frame.rgb, preprocess, faces, no_face))
                   for frame in video.frames)
    if frames and not any(frame.regions.inputs for frame in frames):
        raise no_face_found(frames=len(frames))
    return VideoRegions(video.info, video.sampled, frames)


def _read_file(path: str, container: str, config: VideoConfig) -> VideoFrames:
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        info = _open_info(capture, container, config)
        if info.frame_count:
            refused = _too_long(info, config)
            if refused is not None:
                raise refused
        wanted = uniform_indices(info.frame_count, config.frames)
        decoded, count = _read_wanted(capture, info, wanted, config)
        ran_out = not wanted or len(decoded) < len(wanted)  # read to the end: `count` is the real length
        if not ran_out and capture.grab():  # a frame after the header's last one: the header understated
            count = _count_rest(capture, count + 1, info, config)
        if count != info.frame_count:
            # The header gave no count, or a wrong one: sample again from the frames that are really there.
            info = VideoInfo(info.container, info.fps, count, info.width, info.height)
            wanted = uniform_indices(count, config.frames)
            if not set(wanted) <= set(decoded):
                capture.release()
                capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
                decoded, _ = _read_wanted(capture, info, wanted, config)
    finally:
        capture.release()
    if info.frame_count == 0:
        raise _unreadable("it has no frame that decodes")
    frames = tuple(SampledFrame(index, round(index / info.fps, 6), decoded[index])
                   for index in wanted if decoded.get(index) is not None)
    if not frames:
        raise _unreadable(f"none of its {len(wanted)} sampled frames decodes")
    return VideoFrames(info, frames, len(wanted))


def _count_rest(capture: cv2.VideoCapture, count: int, info: VideoInfo, config: VideoConfig) -> int:
    """Frames in the video once `count` have been grabbed (the rest grabbed too, within the limits)."""
    refused = _too_long(info, config, frames=count)
    if refused is not None:
        raise refused
    while capture.grab():
        count += 1
        refused = _too_long(info, config, frames=count)
        if refused is not None:
            raise refused
    return count


@dataclass(frozen=True)
class FrameRegions:
    """The model inputs cut from one sampled frame (handler.scoring.regions_to_score), with where it sits."""

    index: int
    time_s: float
    regions: ScoredRegions


@dataclass(frozen=True)
class VideoRegions:
    """Everything a video puts through the model: the handler batches it like an image's regions (`inputs`).

    Attributes:
        info: the video's container, rate, length and size.
        sampled: frames wanted; those that failed to decode are missing from `frames`.
        frames: the decoded frames' regions, in time order.

    """

    info: VideoInfo
    sampled: int
    frames: tuple[FrameRegions, ...]

    @property
    def scored(self) -> str:
        """What the answer's "scored" says: a video."""
        return SCORED_VIDEO

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        """Every frame's model inputs, frame after frame: the rows this video adds to the batch."""
        return tuple(tensor for frame in self.frames for tensor in frame.regions.inputs)

    @property
    def faces_looked_for(self) -> bool:
        """Whether the frames were searched for faces (a face model, or `faces: on`)."""
        return any(frame.regions.scored != REGION_WHOLE_IMAGE for frame in self.frames)

    def frame_scores(self, scores: Sequence[ItemScores]) -> list[list[ItemScores]]:
        """The batch's scores for this video (in `inputs` order) split back into one list per frame.

        A frame without input (no face, under `no_face: refuse`) gets an empty list.

        Raises:
            ValueError: the scores do not match the inputs in number.

        """
        split: list[list[ItemScores]] = []
        start = 0
        for frame in self.frames:
            split.append(list(scores[start:start + len(frame.regions.inputs)]))
            start += len(frame.regions.inputs)
        if start != len(scores):
            raise ValueError(f"{len(scores)} scores for a video of {start} model inputs")
        return split


def timeline_entry(frame: FrameRegions, scores: list[ItemScores], policy: VerdictPolicy) -> dict[str, Any]:
    """One frame of the timeline: its index, time, calibrated score and label (its most-fake region's), its faces.

    "faces" is there only when faces were looked for ([] when none was found), as in an image's answer. A frame a
    face model did not judge (no face, `no_face: refuse`) keeps its place with "scored": "no_face" and a null
    probability_fake and label, so a client sees where in the video the face is missing.
    """
    if not scores:
        return {"frame": frame.index, "time_s": frame.time_s, "probability_fake": None, "label": None,
                "scored": frame.regions.scored, "faces": []}
    decider = scores[most_fake(scores)]
    judged = verdict(decider.calibrated, policy, calibrated=True)
    entry: dict[str, Any] = {"frame": frame.index, "time_s": frame.time_s,
                             "probability_fake": judged["probability_fake"], "label": judged["label"],
                             "scored": frame.regions.scored}
    if frame.regions.scored == REGION_FACES:
        entry["faces"] = [{"box": box.to_list(), "probability_fake": round(score.calibrated, 6)}
                          for box, score in zip(frame.regions.boxes, scores, strict=True)]
    elif frame.regions.scored in (REGION_NO_FACE, REGION_NONE):
        entry["faces"] = []
    return entry


def video_answer(video: VideoRegions, scores: Sequence[ItemScores], policy: VerdictPolicy, top_fraction: float,
                 calibrated: bool, uncalibrated: bool) -> dict[str, Any]:
    """The answer for one scored video: the verdict of its top-k mean, its `video` facts and its `timeline`.

    Only frames with scores take part in the top-k mean; `frames_scored` counts them. When faces were looked for,
    `frames_without_face` counts the frames in which none was found (scored whole, or left out under
    `no_face: refuse`). The timeline lists every decoded frame.

    Args:
        video: what was put through the model.
        scores: the model's scores for `video.inputs`, in order.
        policy: the image threshold and band: a video is judged by the same rule as an image.
        top_fraction: share of the scored frames whose mean decides (see :func:`top_k_mean`).
        calibrated: whether the scores are calibrated (the model has a calibration).
        uncalibrated: add the raw softmax of the same top-k frames, as for an image (`uncalibrated=true`).

    """
    per_frame = video.frame_scores(scores)
    judged = [position for position, frame_scores in enumerate(per_frame) if frame_scores]
    deciders = [per_frame[position][most_fake(per_frame[position])] for position in judged]
    aggregation = top_k_mean([decider.calibrated for decider in deciders], top_fraction)
    answer = verdict(aggregation.probability_fake, policy, calibrated=calibrated)
    if uncalibrated:
        raw = float(np.mean([deciders[rank].uncalibrated for rank in aggregation.decided_by]))
        answer["uncalibrated"] = uncalibrated_scores(raw)
    decided_by_frames = [video.frames[judged[rank]].index for rank in aggregation.decided_by]
    info = video.info
    answer["scored"] = SCORED_VIDEO
    answer["video"] = {
        "container": info.container, "duration_s": round(info.duration_s, 6), "fps": round(info.fps, 6),
        "frame_count": info.frame_count, "width": info.width, "height": info.height,
        "frames_sampled": video.sampled, "frames_scored": len(judged),
        "aggregation": {"rule": AGGREGATION_RULE, "k": aggregation.k, "top_fraction": top_fraction,
                        "decided_by_frames": decided_by_frames},
    }
    if video.faces_looked_for:
        answer["video"]["frames_without_face"] = sum(
            frame.regions.scored in (REGION_NO_FACE, REGION_NONE) for frame in video.frames)
    answer["timeline"] = [timeline_entry(frame, frame_scores, policy)
                          for frame, frame_scores in zip(video.frames, per_frame, strict=True)]
    return answer
