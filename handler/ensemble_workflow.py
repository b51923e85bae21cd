"""The function nodes of the `deepfake_ensemble` TorchServe workflow: hand the image to every member, combine answers.

The workflow (config/ensemble-workflow.yaml, built by scripts/package_workflow.py) is the DAG

    route_input ──▶ member (an exported model's .mar, the usual handler) ──▶ combine
                └─▶ member ───────────────────────────────────────────────┘

TorchServe 0.12 (measured, tests/scripts/test_workflow_served.py) calls each function node like a handler
function: `fn(None, context)` once when its worker loads, then `fn(rows, context)` per batch, with
`context.system_properties["model_dir"]` the unpacked .war (where ensemble.json lies). A node with one
parent gets the parent's output under "body"; a node with several gets one key per parent node, each the
parent's response bytes (a member's JSON answer, or its error JSON when that member refused the item).

Why this file imports the standard library only: torch-workflow-archiver copies single files, not packages,
so a function node cannot import `handler.*`. The verdict fields are therefore computed here by the same
rule as handler.verdict.verdict (tests/handler/test_ensemble_workflow.py holds the two equal).

Limits of the workflow API (0.12), measured: a function node's context.set_response_status is not passed to
the client, so an item that a member refused is answered with HTTP 200 and that member's error JSON (its
`error.status` says what the member's own endpoint would have answered). Request options (uncalibrated=...)
are not forwarded to the members.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENSEMBLE_FILENAME = "ensemble.json"  # written by training.ensemble, packed into the .war by scripts.package_workflow
RULE = "weighted_mean_calibrated"  # the ensemble probability: weighted mean of the members' calibrated probability
# The same borderline band as handler.verdict.VerdictPolicy's default: a confidence under its upper edge is flagged.
DEFAULT_BORDERLINE_BAND = (0.5, 0.7)
# Where the image may be in a request row, in the order handler.request_body tries them.
IMAGE_FIELDS = ("data", "body", "file", "image", "b64")
DATA_URL_PREFIX = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
MEMBER_FAILED_STATUS = 502  # a member answered something that is not a prediction: the ensemble cannot answer


@dataclass(frozen=True)
class EnsembleSpec:
    """What combine needs from ensemble.json.

    Attributes:
        weights: member node name → weight (normalised to sum 1 when combining).
        threshold: probability of fake at or above which the ensemble says "fake" (chosen on validation).
        borderline_band: as handler.verdict.VerdictPolicy.borderline_band.
        name: the workflow's name, reported as the answering model.

    """

    weights: dict[str, float]
    threshold: float
    borderline_band: tuple[float, float] = DEFAULT_BORDERLINE_BAND
    name: str = "deepfake_ensemble"

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> EnsembleSpec:
        """Reads training.ensemble's ensemble.json document.

        Raises:
            ValueError: no members, a negative or non-finite weight, weights summing to 0, or no threshold.

        """
        members = document.get("members") or []
        weights = {str(member["name"]): float(member["weight"]) for member in members}
        if len(weights) < 2:
            raise ValueError(f"{ENSEMBLE_FILENAME}: an ensemble needs at least two members, got {sorted(weights)}")
        if any(not math.isfinite(weight) or weight < 0 for weight in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"{ENSEMBLE_FILENAME}: weights must be finite, >= 0 and not all 0, got {weights}")
        if "threshold" not in document:
            raise ValueError(f"{ENSEMBLE_FILENAME}: no 'threshold'; write it with python -m training.ensemble")
        low, high = document.get("borderline_band", DEFAULT_BORDERLINE_BAND)
        return cls(weights, float(document["threshold"]), (float(low), float(high)),
                   str(document.get("name", "deepfake_ensemble")))

    @classmethod
    def load(cls, path: Path) -> EnsembleSpec:
        """Reads ensemble.json from a file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def verdict_fields(probability_fake: float, threshold: float, band: tuple[float, float],
                   calibrated: bool) -> dict[str, Any]:
    """The prediction fields of one item, by handler.verdict.verdict's rule (kept equal by a test)."""
    is_fake = probability_fake >= threshold
    confidence = probability_fake if is_fake else 1.0 - probability_fake
    return {
        "label": "fake" if is_fake else "real",
        "probability_fake": round(probability_fake, 6),
        "confidence": round(confidence, 6),
        "probabilities": {"real": round(1.0 - probability_fake, 6), "fake": round(probability_fake, 6)},
        "threshold": threshold,
        "calibrated": calibrated,
        "borderline": bool(confidence < band[1]),
    }


def member_failed(name: str, detail: str) -> dict[str, Any]:
    """The error answer when a member's response is not a prediction at all (not JSON, no probability)."""
    return {"error": {"code": "ensemble_member_failed", "status": MEMBER_FAILED_STATUS, "field": None,
                      "message": f"ensemble member '{name}' gave no usable answer ({detail}); see its model log",
                      "member": name}}


def parse_answer(raw: Any) -> Any:
    """A member's response as TorchServe hands it to the next node (bytes of JSON), parsed; other types as they are."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8")
    if isinstance(raw, str):
        return json.loads(raw)
    return raw


def combine_answers(answers: Mapping[str, Any], spec: EnsembleSpec) -> tuple[int, dict[str, Any]]:
    """One ensemble answer from the members' answers for the same image.

    The ensemble probability is the weighted mean of the members' calibrated probability_fake, judged against
    the ensemble's own threshold (chosen on validation by training.ensemble; the members' thresholds do not
    apply to the mean). A member that refused the item (its answer has `error`) makes the ensemble answer that
    error: both members see the same bytes, so the first refusal in weight order speaks for the request.

    Args:
        answers: member node name → its parsed JSON answer (or the raw bytes TorchServe passed on).
        spec: weights, threshold and borderline band from ensemble.json.

    Returns:
        (HTTP status the error would carry, or 200; the answer document).

    """
    parsed: dict[str, dict[str, Any]] = {}
    for name in spec.weights:
        if name not in answers:
            return MEMBER_FAILED_STATUS, member_failed(name, f"no answer; the nodes answering were {sorted(answers)}")
        try:
            answer = parse_answer(answers[name])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return MEMBER_FAILED_STATUS, member_failed(name, f"not JSON: {error}")
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
        if not isinstance(answer, dict):
            return MEMBER_FAILED_STATUS, member_failed(name, f"a {type(answer).__name__}, not a JSON object")
        parsed[name] = answer
    for name, answer in parsed.items():
        if isinstance(answer.get("error"), dict):
            error = dict(answer["error"])
            error.setdefault("member", name)
            return int(error.get("status", 400)), {"error": error}
    total = sum(spec.weights.values())
    probability = 0.0
    for name, answer in parsed.items():
        value = answer.get("probability_fake")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return MEMBER_FAILED_STATUS, member_failed(name, f"probability_fake is {value!r}")
        probability += spec.weights[name] / total * float(value)
    calibrated = all(bool(answer.get("calibrated", False)) for answer in parsed.values())
    document = verdict_fields(probability, spec.threshold, spec.borderline_band, calibrated)
    document["model"] = {"name": spec.name, "kind": "ensemble"}
    document["members"] = [{"name": name, "model": answer.get("model"), "probability_fake": answer["probability_fake"],
                            "label": answer.get("label"), "threshold": answer.get("threshold")}
                           for name, answer in parsed.items()]
    document["ensemble"] = {"rule": RULE, "weights": {name: weight / total for name, weight in spec.weights.items()}}
    return 200, document


def image_bytes(row: Mapping[str, Any]) -> Any:
    """The image of one request row, as bytes a member's handler reads as a raw body.

    A JSON body arrives parsed; its base64 image (plain or a data URL) is decoded here, because the members
    receive this node's output as a raw body and would not recognise JSON there. What cannot be decoded is
    passed on unchanged, so the members answer the error they would answer for it.
    """
    for name in IMAGE_FIELDS:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, Mapping):
            nested = next((value[key] for key in IMAGE_FIELDS if isinstance(value.get(key), (str, Mapping))), None)
            if isinstance(nested, Mapping):
                nested = nested.get("b64")
            if isinstance(nested, str):
                try:
                    return base64.b64decode(DATA_URL_PREFIX.sub("", nested.strip()), validate=False)
                except (binascii.Error, ValueError):
                    return nested.encode("utf-8")
            return json.dumps(value).encode("utf-8")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        return value
    return next(iter(row.values()), b"")


def route_input(data: Sequence[Mapping[str, Any]] | None, context: Any) -> list[Any] | None:
    """Workflow start node: passes each request's image on to every member."""
    if data is None:  # TorchServe's load call
        return None
    return [image_bytes(row) for row in data]


_SPECS: dict[str, EnsembleSpec] = {}


def _spec(context: Any) -> EnsembleSpec:
    model_dir = str(context.system_properties.get("model_dir", "."))
    if model_dir not in _SPECS:
        _SPECS[model_dir] = EnsembleSpec.load(Path(model_dir) / ENSEMBLE_FILENAME)
    return _SPECS[model_dir]


def combine(data: Sequence[Mapping[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    """Workflow end node: one answer per request from the members' answers (errors answered, never raised)."""
    if data is None:  # TorchServe's load call: fail the registration now if ensemble.json is missing or wrong
        _spec(context)
        return None
    spec = _spec(context)
    answers = []
    for index, row in enumerate(data):
        status, document = combine_answers(row, spec)
        if status != 200:  # not passed to the client by the 0.12 workflow API, but kept right for when it is
            context.set_response_status(status, "Member refused the item", index)
        answers.append(document)
    return answers
