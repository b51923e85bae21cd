"""Turns a probability of fake into the JSON a client reads, and a bad item into its error JSON.

Pure functions, so the response schema is tested without a server. An error says what went wrong
(`code`, `message`, `status`), where in the request (`field`) and what the service accepts instead
(`accepted`, one sentence with this worker's limits), so a client can fix its request without the docs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from handler.forensics import ImageDecodeError

# HTTP status per error code: 413 and 415 tell a client what to change; a non-finite score is the model's
# fault, not the client's (500); the rest (empty_input, missing_image, corrupt_image, bad_base64,
# invalid_json, invalid_option) are plain 400s.
ERROR_STATUS = {
    "image_too_large": 413,
    "payload_too_large": 413,
    "not_an_image": 415,
    "non_finite_score": 500,
    # Videos (handler.video): too long, too large a file or too large frames say what to change; a video
    # that cannot be read (unreadable_video) is a plain 400, like a corrupt image.
    "video_too_long": 413,
    "video_too_large": 413,
    "video_frame_too_large": 413,
    "explanations_unavailable": 501,  # the model was exported without model.explain.pt: the server cannot, yet
    # A well-formed, decodable image this model cannot judge (handler.scoring): 422, so a client tells "send another
    # picture" from "the upload is broken" (400) without parsing the code.
    "no_face_found": 422,
    "degenerate_image": 422,
}
DEFAULT_ERROR_STATUS = 400
STATUS_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
                  422: "Unprocessable Entity", 500: "Internal Server Error", 501: "Not Implemented"}
# What `accepted` says, per error code; {formats}, {pixels}, {side}, {bytes}, {mib}, the {video_*} limits, {min_side}
# and {max_aspect} are filled in from the worker's InputLimits. Codes about how the image was sent list the three
# input forms; codes about the file list the formats and limits; an option error lists the option's values.
FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF (first frame)"
INPUT_FORMS = ("One image per request, as the raw request body, as a multipart file field (any name; 'data' is "
               "read first) or as JSON {{\"data\": \"<base64>\"}} (keys data, body, file, image, b64; a data: URL "
               "is fine): a {formats} file of at most {bytes} bytes and {pixels} pixels.")
FILE_RULES = "A complete, undamaged {formats} file of at most {bytes} bytes ({mib} MiB) and {pixels} pixels."
VIDEO_FORMATS = "MP4, MOV, WebM or AVI"
VIDEO_RULES = ("A complete {video_formats} video of at most {video_bytes} bytes ({video_mib} MiB), {video_seconds} "
               "seconds and {video_frames} frames, whose frames have at most {pixels} pixels; or an image.")
ACCEPTED = {
    "empty_input": INPUT_FORMS,
    "missing_image": INPUT_FORMS,
    "invalid_json": INPUT_FORMS,
    "bad_base64": INPUT_FORMS,
    "not_an_image": FILE_RULES,
    "corrupt_image": FILE_RULES,
    "image_too_large": ("Images of at most {pixels} pixels (width x height, e.g. {side}x{side}); downscale larger "
                        "ones before sending."),
    "payload_too_large": ("Image files of at most {bytes} bytes ({mib} MiB), sent raw, as a multipart file or as "
                          "base64 JSON (which adds a third); compress or downscale larger ones."),
    "invalid_option": ("Option 'uncalibrated' takes true, 1, yes, false, 0 or no (any case), as the X-Uncalibrated "
                       "header, a form field, a JSON key, or a query parameter on /invocations and "
                       "/{{model}}/predict."),
    "non_finite_score": ("Nothing to change in the request: the model failed on this image; the operators have "
                         "the log."),
    "unreadable_video": VIDEO_RULES,
    "video_too_long": ("Videos of at most {video_seconds} seconds and {video_frames} frames; trim longer ones to "
                       "the part to judge."),
    "video_too_large": ("Video files of at most {video_bytes} bytes ({video_mib} MiB), sent raw, as a multipart file "
                        "or as base64 JSON (which adds a third); trim or re-encode larger ones."),
    "video_frame_too_large": ("Videos whose frames have at most {pixels} pixels (e.g. {side}x{side}); downscale "
                              "larger ones before sending."),
    "explanations_unavailable": ("Predictions (/predictions/{{model}}) work as usual; explanations need a model "
                                 "exported with model.explain.pt (re-export and re-package it: docs/EXPLANATIONS.md)."),
    "explanation_needs_image": ("Explanations take one image ({formats}); send a video to /predictions/{{model}} "
                                "for its per-frame timeline, or a frame of it as an image."),
    "no_face_found": ("Photos in which a face is clearly visible and turned to the camera, or the image cropped to "
                      "the face: this model judges faces only (a video needs a face in at least one sampled frame)."),
    "degenerate_image": ("Images whose shorter side is at least {min_side} pixels and whose long side is at most "
                         "{max_aspect} times the short one; crop strips and banners to the part to judge, and send "
                         "photos at full size rather than thumbnails."),
}
DEFAULT_ACCEPTED = INPUT_FORMS


@dataclass(frozen=True)
class InputLimits:
    """What a worker accepts, as the `accepted` sentences state it.

    Attributes:
        max_image_pixels: decoded width x height (metadata.json, or model-config.yaml's handler setting).
        max_upload_bytes: bytes of the image file (model-config.yaml's handler setting).
        max_video_bytes: bytes of a video file (handler setting video_max_bytes).
        max_video_seconds: length of a video (video_max_seconds).
        max_video_frames: frames of a video (video_max_frames).
        min_image_side: an image's shorter side in pixels (min_image_side).
        max_aspect_ratio: an image's long side over its short side (max_aspect_ratio).

    """

    max_image_pixels: int = 40_000_000
    max_upload_bytes: int = 6 * 2**20
    max_video_bytes: int = 6 * 2**20
    max_video_seconds: float = 60.0
    max_video_frames: int = 3600
    min_image_side: int = 32
    max_aspect_ratio: float = 4.0


def accepted(code: str, limits: InputLimits) -> str:
    """One sentence: the forms, formats and limits (or option values) that would have been accepted."""
    return ACCEPTED.get(code, DEFAULT_ACCEPTED).format(
        formats=FORMATS, pixels=limits.max_image_pixels, side=int(limits.max_image_pixels ** 0.5),
        bytes=limits.max_upload_bytes, mib=f"{limits.max_upload_bytes / 2**20:g}", video_formats=VIDEO_FORMATS,
        video_bytes=limits.max_video_bytes, video_mib=f"{limits.max_video_bytes / 2**20:g}",
        video_seconds=f"{limits.max_video_seconds:g}", video_frames=limits.max_video_frames,
        min_side=limits.min_image_side, max_aspect=f"{limits.max_aspect_ratio:g}")


# Said when a face model found no face and scored the whole image instead (handler setting no_face: whole_image; the
# default refuses such an image with 422 no_face_found): the verdict then comes from input unlike anything the model
# was trained on, and the client can fix that.
NO_FACE_NOTE = ("No face was found, so the whole image was scored; this model was trained on face crops, so this "
                "verdict is less reliable. Send a photo in which a face is clearly visible and turned to the "
                "camera, or crop the image to the face.")
# Per-face fields copied from the image verdict's: a face is judged by the same threshold and band as an image.
FACE_VERDICT_FIELDS = ("probability_fake", "confidence", "label", "borderline")


@dataclass(frozen=True)
class ItemScores:
    """What the model said about one image: the calibrated and the raw (softmax) probability of fake."""

    calibrated: float
    uncalibrated: float


@dataclass(frozen=True)
class VerdictPolicy:
    """How a probability becomes a label.

    Attributes:
        threshold: probability of fake at or above which the label is "fake".
        borderline_band: (low, high): a confidence below `high` is flagged for a human to look at. Below
            `low` happens only when the threshold is not 0.5 (a "fake" called at p = 0.3), which is
            even less certain, so it is flagged too.

    """

    threshold: float = 0.5
    borderline_band: tuple[float, float] = (0.5, 0.7)


def verdict(probability_fake: float, policy: VerdictPolicy, calibrated: bool) -> dict[str, Any]:
    """The prediction fields of one item.

    Confidence is the probability of the chosen label, so it is ≥ 0.5 only at the default
    threshold; with a validation-chosen threshold a "fake" can carry a confidence below 0.5.
    Those are the closest calls of all, so the borderline flag covers every confidence under the
    band's upper edge, not only the band itself.
    """
    is_fake = probability_fake >= policy.threshold
    confidence = probability_fake if is_fake else 1.0 - probability_fake
    _, high = policy.borderline_band
    return {
        "label": "fake" if is_fake else "real",
        "probability_fake": round(probability_fake, 6),
        "confidence": round(confidence, 6),
        "probabilities": {"real": round(1.0 - probability_fake, 6), "fake": round(probability_fake, 6)},
        "threshold": policy.threshold,
        "calibrated": calibrated,
        "borderline": bool(confidence < high),
    }


def uncalibrated_scores(probability_fake: float) -> dict[str, Any]:
    """The model's raw softmax, for a client that asked for it (`uncalibrated=true`).

    Informational only: the label, confidence and borderline flag always come from the calibrated
    probability, because the decision threshold was chosen on calibrated scores.
    """
    return {
        "probability_fake": round(probability_fake, 6),
        "probabilities": {"real": round(1.0 - probability_fake, 6), "fake": round(probability_fake, 6)},
    }


def face_verdict(box: Sequence[int], scores: ItemScores, policy: VerdictPolicy, uncalibrated: bool) -> dict[str, Any]:
    """One detected face's entry: its box and its own calibrated verdict (plus its raw softmax when asked for).

    Args:
        box: [x, y, width, height] of the detected face in the decoded, upright image's pixels.
        scores: the face crop's probabilities of fake.
        policy: the image's decision rule, so a face and an image with the same score get the same label.
        uncalibrated: add the raw softmax, as for the image (`uncalibrated=true`).

    """
    judged = verdict(scores.calibrated, policy, calibrated=True)
    entry: dict[str, Any] = {"box": [int(value) for value in box]}
    entry.update({name: judged[name] for name in FACE_VERDICT_FIELDS})
    if uncalibrated:
        entry["uncalibrated"] = uncalibrated_scores(scores.uncalibrated)
    return entry


def face_fields(
    boxes: Sequence[Sequence[int]] | None,
    scores: Sequence[ItemScores],
    decided_by: int,
    policy: VerdictPolicy,
    uncalibrated: bool,
) -> dict[str, Any]:
    """The face part of an image's response, added to the image verdict of its deciding region.

    Args:
        boxes: the detected faces, largest first; [] when faces were looked for and none was found; None
            when they were not looked for (face detection off), which adds nothing: an absent "faces" says
            "not looked for", [] says "looked, found none".
        scores: one per face when there are faces; otherwise the whole image's (unused here).
        decided_by: index of the face the image verdict comes from (the most fake one).
        policy: the decision rule.
        uncalibrated: add each face's raw softmax.

    Raises:
        ValueError: boxes and scores disagree in number, or decided_by is not one of the faces.

    """
    if boxes is None:
        return {}
    if not boxes:
        return {"faces": [], "note": NO_FACE_NOTE}
    if len(boxes) != len(scores) or not 0 <= decided_by < len(boxes):
        raise ValueError(f"{len(boxes)} face boxes, {len(scores)} face scores and deciding face {decided_by} "
                         f"do not match")
    faces = [face_verdict(box, score, policy, uncalibrated) for box, score in zip(boxes, scores, strict=True)]
    return {"faces": faces, "decided_by_face": decided_by}


def error_item(error: ImageDecodeError, limits: InputLimits | None = None) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for an item that could not be scored.

    The body is {"error": {"code", "message", "status", "field", "accepted"}}: `field` is where in the request
    the fault is (None when it is not the request's: non_finite_score), `accepted` what would have been taken.
    """
    status = ERROR_STATUS.get(error.code, DEFAULT_ERROR_STATUS)
    body = {"code": error.code, "message": str(error), "status": status, "field": error.field,
            "accepted": accepted(error.code, limits or InputLimits())}
    return status, {"error": body}
