"""handler/ensemble_workflow.py: the workflow's function nodes, on a real ts Context, and the combine rule."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from ts.context import Context, RequestProcessor

from handler.ensemble_workflow import (
    ENSEMBLE_FILENAME,
    MEMBER_FAILED_STATUS,
    RULE,
    EnsembleSpec,
    combine,
    combine_answers,
    image_bytes,
    route_input,
    verdict_fields,
)
from handler.verdict import VerdictPolicy, verdict

JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 10
SPEC = EnsembleSpec(weights={"resnet": 3.0, "effnet": 1.0}, threshold=0.4)


def answer(probability: float, label: str = "fake", calibrated: bool = True) -> bytes:
    """A member's answer as TorchServe hands it on: the JSON bytes of the handler's response."""
    return json.dumps({"label": label, "probability_fake": probability, "calibrated": calibrated, "threshold": 0.3,
                       "model": {"name": "m", "version": "1.0"}}, indent=2).encode()


@pytest.mark.parametrize("probability", [0.0, 0.1, 0.399999, 0.4, 0.55, 0.69, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("threshold", [0.4, 0.5, 0.07])
def test_verdict_fields_equal_the_handlers_verdict(probability: float, threshold: float) -> None:
    ours = verdict_fields(probability, threshold, (0.5, 0.7), calibrated=True)
    assert ours == verdict(probability, VerdictPolicy(threshold=threshold, borderline_band=(0.5, 0.7)), True)


def test_combine_is_the_weighted_mean_of_calibrated_probabilities_against_the_ensemble_threshold() -> None:
    status, document = combine_answers({"resnet": answer(0.2, "real"), "effnet": bytearray(answer(0.9))}, SPEC)
    assert status == 200
    expected = 0.75 * 0.2 + 0.25 * 0.9  # 0.375 < 0.4: real, though one member says fake
    assert document["probability_fake"] == pytest.approx(expected, abs=1e-6)
    assert document["label"] == "real" and document["threshold"] == 0.4
    assert document["confidence"] == pytest.approx(1 - expected, abs=1e-6)
    assert document["borderline"] is True and document["calibrated"] is True
    assert [(m["name"], m["probability_fake"], m["label"]) for m in document["members"]] == [
        ("resnet", 0.2, "real"), ("effnet", 0.9, "fake")]
    assert document["ensemble"] == {"rule": RULE, "weights": {"resnet": 0.75, "effnet": 0.25}}


def test_uncalibrated_member_makes_the_answer_uncalibrated() -> None:
    _, document = combine_answers({"resnet": answer(0.9), "effnet": answer(0.9, calibrated=False)}, SPEC)
    assert document["calibrated"] is False and document["label"] == "fake"


def test_member_error_is_the_ensembles_answer_with_its_status() -> None:
    error = {"error": {"code": "not_an_image", "message": "not an image", "status": 415, "field": "body"}}
    status, document = combine_answers({"resnet": answer(0.3), "effnet": json.dumps(error).encode()}, SPEC)
    assert status == 415
    assert document["error"]["code"] == "not_an_image" and document["error"]["member"] == "effnet"


@pytest.mark.parametrize(("answers", "detail"), [
    ({"resnet": b"\x89 not json", "effnet": answer(0.5)}, "not JSON"),
    ({"resnet": answer(0.5)}, "no answer"),
    ({"resnet": b"[1, 2]", "effnet": answer(0.5)}, "not a JSON object"),
    ({"resnet": b'{"probability_fake": "high"}', "effnet": answer(0.5)}, "probability_fake is"),
])
def test_unusable_member_answer_is_a_502_error_not_a_crash(answers: dict, detail: str) -> None:
    status, document = combine_answers(answers, SPEC)
    assert status == MEMBER_FAILED_STATUS
    assert document["error"]["code"] == "ensemble_member_failed" and detail in document["error"]["message"]


def test_spec_refuses_what_would_serve_nonsense() -> None:
    with pytest.raises(ValueError, match="at least two members"):
        EnsembleSpec.from_dict({"members": [{"name": "a", "weight": 1}], "threshold": 0.5})
    with pytest.raises(ValueError, match="weights"):
        EnsembleSpec.from_dict({"members": [{"name": "a", "weight": -1}, {"name": "b", "weight": 1}],
                                "threshold": 0.5})
    with pytest.raises(ValueError, match="threshold"):
        EnsembleSpec.from_dict({"members": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]})


@pytest.mark.parametrize("row", [
    {"body": bytearray(JPEG)},
    {"data": bytearray(JPEG)},  # multipart field
    {"body": {"data": base64.b64encode(JPEG).decode()}},  # JSON body, parsed by TorchServe
    {"body": {"data": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()}},  # a browser's data URL
    {"body": {"image": {"b64": base64.b64encode(JPEG).decode()}}},
])
def test_route_input_hands_the_members_the_raw_image(row: dict) -> None:
    assert image_bytes(row) == JPEG
    assert route_input([row], None) == [JPEG]


def test_route_input_passes_on_what_it_cannot_decode_so_members_answer_the_error() -> None:
    assert image_bytes({"body": b"hello"}) == b"hello"
    assert route_input(None, None) is None  # TorchServe's load call


def _context(model_dir: Path, batch_size: int) -> Context:
    context = Context("deepfake_ensemble__combine", str(model_dir), {"model": {"modelName": "combine"}}, batch_size,
                      None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in range(batch_size)]
    return context


def test_combine_node_reads_ensemble_json_from_the_war_and_answers_each_row(tmp_path: Path) -> None:
    (tmp_path / ENSEMBLE_FILENAME).write_text(json.dumps({
        "name": "deepfake_ensemble", "threshold": 0.5,
        "members": [{"name": "resnet", "weight": 1.0}, {"name": "effnet", "weight": 1.0}]}))
    context = _context(tmp_path, 2)
    assert combine(None, context) is None  # load call: reads and checks ensemble.json
    bad = json.dumps({"error": {"code": "corrupt_image", "status": 400, "message": "m"}}).encode()
    rows = [{"resnet": answer(0.8), "effnet": answer(0.6)}, {"resnet": answer(0.8), "effnet": bad}]
    first, second = combine(rows, context)
    assert first["probability_fake"] == pytest.approx(0.7) and first["label"] == "fake"
    assert second["error"]["code"] == "corrupt_image"
    assert context.get_response_status(1) == (400, "Member refused the item")
    assert context.get_response_status(0)[0] == 200


def test_combine_node_load_fails_without_ensemble_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        combine(None, _context(tmp_path / "empty", 1))
