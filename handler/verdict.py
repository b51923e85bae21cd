"""Turns a probability of fake into the JSON a client reads, and a bad item into its error JSON.

Pure functions, so the response schema is tested without a server.
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
    "not_an_image": 415,
    "non_finite_score": 500,
}
DEFAULT_ERROR_STATUS = 400
STATUS_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
                  500: "Internal Server Error"}
# Said when a face model found no face and scored the whole image instead: the verdict then comes from input
# unlike anything the model was trained on, and the client can fix that.
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


def error_item(error: ImageDecodeError) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for an item that could not be scored."""
    status = ERROR_STATUS.get(error.code, DEFAULT_ERROR_STATUS)
    return status, {"error": {"code": error.code, "message": str(error), "status": status}}
