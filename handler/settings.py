"""The handler's settings: the `handler:` section of model-config.yaml, checked once when a worker starts.

A typo or an impossible value stops the worker with a message naming the setting, instead of
being ignored and serving with a default nobody chose.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from handler.faces import FaceConfig
from handler.scoring import NO_FACE_MODES, GeometryLimits
from handler.torchscript import OPTIMIZATIONS, PRECISIONS, ServingOptions
from handler.video import MAX_VIDEO_FRAMES, VideoConfig

SECTION = "handler"
# `faces:` values. auto: find faces when the model was trained on face crops (metadata.json has `faces`), score
# whole images otherwise; on: find faces for any model; off: always score the whole image.
FACE_MODES = ("auto", "on", "off")
# 6 MiB: a large phone photo; as base64 JSON (8 MiB) it still fits the shipped max_request_size of 9 MiB.
DEFAULT_MAX_UPLOAD_BYTES = 6 * 2**20
# 6 MiB, as for images: about 5-10 s of phone video (5-10 Mbit/s). The frontend's max_request_size (9 MiB) and its
# memory (config/production.properties: concurrent uploads x max_request_size x 3) were measured for this size; a
# larger limit needs max_request_size >= 4/3 of it in every config/*.properties, the proxies' client_max_body_size
# and a larger JVM heap (docs/VIDEO.md, "Limits").
DEFAULT_VIDEO_MAX_BYTES = DEFAULT_MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class HandlerSettings:
    """What model-config.yaml's `handler:` section may set.

    Attributes:
        threshold: probability of fake at or above which the label is "fake"; None keeps the threshold
            exported in metadata.json (chosen on validation data), which is what it should almost always be.
        max_image_pixels: larger images are refused with 413 before decoding; None keeps metadata.json's.
        max_upload_bytes: larger image files (raw, multipart or base64-decoded JSON) are refused with 413
            payload_too_large before decoding. TorchServe's `max_request_size` bounds the whole request earlier
            (with a bare 413); it must leave room for this many bytes as base64 JSON (4/3 of it).
        borderline_band: (low, high) with 0.5 <= low < high <= 1: confidences under `high` are flagged.
        torch_threads: torch (and OpenCV) threads per CPU worker; 0 = cores / maxWorkers.
        warmup_runs: dummy forward passes at worker start, so the first client does not pay for them.
        faces: one of FACE_MODES: whether each image is scored once per detected face or as a whole.
        no_face: what a face model answers for an image in which it finds no face (handler.scoring.NO_FACE_MODES):
            `refuse` (422 no_face_found; a video frame without a face is left out of the verdict) or `whole_image`
            (score the whole image and say so, as before the setting existed).
        min_image_side: images whose shorter side has fewer pixels are refused with 422 degenerate_image.
        max_aspect_ratio: so are images whose long side is more than this many times the short one.
        optimization: how the loaded model is prepared (handler.torchscript.OPTIMIZATIONS): frozen and
            channels_last by default, `none` to serve the exported graph as it is.
        precision: fp32 (default), bf16 or fp16 weights and inputs (handler.torchscript.PRECISIONS).
        video_frames: frames sampled uniformly over a video (handler.video); 1..256.
        video_top_fraction: a video's score is the mean of its top ceil(fraction x frames scored) frame scores.
        video_max_seconds: longer videos are refused with 413 video_too_long.
        video_max_frames: videos with more frames are refused the same way (they bound the decoding work).
        video_max_bytes: larger video files are refused with 413 video_too_large before decoding; like
            max_upload_bytes, TorchServe's `max_request_size` must leave room for it as base64 JSON.
        max_batch_inputs: most model inputs (faces, images, frames) per forward pass: a batch with more is
            scored in chunks, so a 64-frame video of 3 faces each never allocates one 192-row batch.

    """

    threshold: float | None = None
    max_image_pixels: int | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    borderline_band: tuple[float, float] = (0.5, 0.7)
    torch_threads: int = 0
    warmup_runs: int = 2
    faces: str = "auto"
    no_face: str = "refuse"
    min_image_side: int = 32
    max_aspect_ratio: float = 4.0
    optimization: str = "frozen_channels_last"
    precision: str = "fp32"
    video_frames: int = 16
    video_top_fraction: float = 0.25
    video_max_seconds: float = 60.0
    video_max_frames: int = 3600
    video_max_bytes: int = DEFAULT_VIDEO_MAX_BYTES
    max_batch_inputs: int = 64

    def __post_init__(self) -> None:
        if self.faces not in FACE_MODES:
            raise ValueError(f"handler setting 'faces' must be one of {list(FACE_MODES)}, got {self.faces!r}")
        for name, allowed in (("optimization", OPTIMIZATIONS), ("precision", tuple(PRECISIONS)),
                              ("no_face", NO_FACE_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"handler setting '{name}' must be one of {list(allowed)}, got {value!r}")

    def video_config(self, max_frame_pixels: int) -> VideoConfig:
        """How this worker samples, limits and judges videos; a frame may have as many pixels as an image."""
        return VideoConfig(frames=self.video_frames, top_fraction=self.video_top_fraction,
                           max_seconds=self.video_max_seconds, max_frames=self.video_max_frames,
                           max_bytes=self.video_max_bytes, max_frame_pixels=max_frame_pixels)

    def geometry_limits(self) -> GeometryLimits:
        """The image shapes this worker refuses as degenerate (422 degenerate_image)."""
        return GeometryLimits(self.min_image_side, self.max_aspect_ratio)

    def serving_options(self) -> ServingOptions:
        """How the worker prepares and feeds the model."""
        return ServingOptions(self.optimization, self.precision)

    def face_config(self, exported: FaceConfig | None) -> FaceConfig | None:
        """How faces are found and cut for this worker, or None to score whole images.

        A face model must see faces cut as in training, so `auto` and `on` use the exported settings; `on`
        with a whole-image model (nothing exported) uses FaceConfig's defaults.

        Args:
            exported: metadata.json's `faces` (None for a model trained on whole images).

        """
        if self.faces == "off":
            return None
        if self.faces == "on":
            return exported if exported is not None else FaceConfig()
        return exported

    @classmethod
    def known(cls) -> list[str]:
        """The setting names, for error messages."""
        return [field.name for field in fields(cls)]

    @classmethod
    def from_model_config(cls, model_yaml_config: Mapping[str, Any] | None) -> HandlerSettings:
        """Reads and checks the `handler:` section of a parsed model-config.yaml (absent = all defaults).

        Raises:
            ValueError: unknown setting, wrong type or value out of range; the message names the setting.

        """
        section = (model_yaml_config or {}).get(SECTION) or {}
        if not isinstance(section, Mapping):
            kind = type(section).__name__
            raise ValueError(f"model-config.yaml '{SECTION}:' must be a mapping of settings, got {kind}")
        unknown = sorted(set(section) - set(cls.known()))
        if unknown:
            raise ValueError(f"model-config.yaml '{SECTION}:' has unknown setting(s) {unknown}; known: {cls.known()}")
        values: dict[str, Any] = {}
        if section.get("threshold") is not None:
            values["threshold"] = _probability("threshold", section["threshold"])
        if section.get("max_image_pixels") is not None:
            values["max_image_pixels"] = _whole_number("max_image_pixels", section["max_image_pixels"], minimum=1)
        if "max_upload_bytes" in section:
            values["max_upload_bytes"] = _whole_number("max_upload_bytes", section["max_upload_bytes"], minimum=1)
        if "borderline_band" in section:
            values["borderline_band"] = _band(section["borderline_band"])
        for name in ("torch_threads", "warmup_runs"):
            if name in section:
                values[name] = _whole_number(name, section[name], minimum=0)
        if "faces" in section:
            values["faces"] = _face_mode(section["faces"])
        for name in ("optimization", "precision", "no_face"):
            if name in section:
                values[name] = section[name]  # checked by __post_init__
        if "min_image_side" in section:
            values["min_image_side"] = _whole_number("min_image_side", section["min_image_side"], minimum=1)
        if "max_aspect_ratio" in section:
            ratio = section["max_aspect_ratio"]
            if not (_is_number(ratio) and math.isfinite(ratio) and ratio >= 1):
                raise ValueError(f"handler setting 'max_aspect_ratio' must be a number >= 1 (long side over short "
                                 f"side), got {ratio!r}")
            values["max_aspect_ratio"] = float(ratio)
        for name in ("video_frames", "video_max_frames", "video_max_bytes", "max_batch_inputs"):
            if name in section:
                values[name] = _whole_number(name, section[name], minimum=1)
        if "video_frames" in values and values["video_frames"] > MAX_VIDEO_FRAMES:
            raise ValueError(f"handler setting 'video_frames' must be at most {MAX_VIDEO_FRAMES}, got "
                             f"{values['video_frames']}")
        if "video_top_fraction" in section:
            values["video_top_fraction"] = _probability("video_top_fraction", section["video_top_fraction"])
            if values["video_top_fraction"] == 0.0:
                raise ValueError("handler setting 'video_top_fraction' must be above 0, got 0")
        if "video_max_seconds" in section:
            values["video_max_seconds"] = _positive("video_max_seconds", section["video_max_seconds"])
        return cls(**values)


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `true` in a numeric setting is a mistake, not 1.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(name: str, value: Any) -> float:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"handler setting '{name}' must be a number above 0, got {value!r}")
    return float(value)


def _probability(name: str, value: Any) -> float:
    if not (_is_number(value) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"handler setting '{name}' must be a number in [0, 1], got {value!r}")
    return float(value)


def _whole_number(name: str, value: Any, minimum: int) -> int:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"handler setting '{name}' must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _band(value: Any) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(edge) for edge in value)):
        raise ValueError(f"handler setting 'borderline_band' must be a list [low, high] of two numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0.5 <= low < high <= 1.0:
        raise ValueError(f"handler setting 'borderline_band' must satisfy 0.5 <= low < high <= 1, got {[low, high]}")
    return low, high


def _face_mode(value: Any) -> str:
    # TorchServe parses model-config.yaml with PyYAML (YAML 1.1), which reads an unquoted on / off as true / false.
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value in FACE_MODES:
        return value
    raise ValueError(f"handler setting 'faces' must be one of {list(FACE_MODES)}, got {value!r}")
