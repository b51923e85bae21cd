import pytest

from handler.forensics import ImageDecodeError
from handler.verdict import (
    ACCEPTED,
    ERROR_STATUS,
    NO_FACE_NOTE,
    STATUS_PHRASES,
    InputLimits,
    ItemScores,
    VerdictPolicy,
    accepted,
    error_item,
    face_fields,
    face_verdict,
    uncalibrated_scores,
    verdict,
)


@pytest.mark.parametrize(
    ("probability", "label", "confidence", "borderline"),
    [(0.97, "fake", 0.97, False), (0.6, "fake", 0.6, True), (0.5, "fake", 0.5, True), (0.2, "real", 0.8, False),
     (0.35, "real", 0.65, True)],
)
def test_label_confidence_and_borderline(probability, label, confidence, borderline):
    item = verdict(probability, VerdictPolicy(), calibrated=False)
    assert item["label"] == label
    assert item["confidence"] == pytest.approx(confidence)
    assert item["borderline"] is borderline
    assert item["probabilities"]["fake"] + item["probabilities"]["real"] == pytest.approx(1.0)


def test_threshold_moves_the_decision():
    assert verdict(0.3, VerdictPolicy(threshold=0.25), calibrated=True)["label"] == "fake"
    assert verdict(0.3, VerdictPolicy(threshold=0.25), calibrated=True)["calibrated"] is True


@pytest.mark.parametrize(("code", "status"), [("image_too_large", 413), ("payload_too_large", 413),
                                             ("not_an_image", 415), ("corrupt_image", 400), ("missing_image", 400),
                                             ("non_finite_score", 500), ("no_face_found", 422),
                                             ("degenerate_image", 422)])
def test_error_items_carry_status_code_message_field_and_what_is_accepted(code, status):
    limits = InputLimits(max_image_pixels=1234, max_upload_bytes=5678)
    got_status, body = error_item(ImageDecodeError(code, "why", "data"), limits)
    assert got_status == status
    assert body == {"error": {"code": code, "message": "why", "status": status, "field": "data",
                              "accepted": accepted(code, limits)}}
    # The keys clients already read come first and keep their meaning.
    assert list(body["error"])[:3] == ["code", "message", "status"]


def test_an_error_without_a_field_says_null():
    _, body = error_item(ImageDecodeError("non_finite_score", "the model produced NaN"))
    assert body["error"]["field"] is None and body["error"]["accepted"]


def test_every_error_code_has_a_sentence_with_the_limits_in_force():
    limits = InputLimits(max_image_pixels=2_500_000, max_upload_bytes=3 * 2**20)
    for code in {*ACCEPTED, *ERROR_STATUS}:
        sentence = accepted(code, limits)
        placeholders = ("{formats}", "{pixels}", "{side}", "{bytes}", "{mib}", "{min_side}", "{max_aspect}")
        assert sentence.endswith(".") and not any(name in sentence for name in placeholders), (code, sentence)
    for code in ("not_an_image", "corrupt_image", "empty_input", "missing_image", "bad_base64", "invalid_json"):
        sentence = accepted(code, limits)
        assert "2500000 pixels" in sentence and "3145728 bytes" in sentence, code
        assert all(name in sentence for name in ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")), code
    for code in ("empty_input", "missing_image", "bad_base64", "invalid_json"):  # how to send it: the three forms
        assert all(form in accepted(code, limits) for form in ("raw request body", "multipart", '{"data"')), code
    too_large = accepted("image_too_large", limits)
    assert "2500000 pixels" in too_large and "1581x1581" in too_large
    assert "3145728 bytes (3 MiB)" in accepted("payload_too_large", limits)
    assert all(word in accepted("invalid_option", limits) for word in ("true", "false", "X-Uncalibrated"))
    shaped = accepted("degenerate_image", InputLimits(min_image_side=48, max_aspect_ratio=2.5))
    assert "at least 48 pixels" in shaped and "at most 2.5 times" in shaped
    assert "face" in accepted("no_face_found", limits) and "crop" in accepted("no_face_found", limits)


def test_every_status_a_code_can_have_has_a_reason_phrase():
    assert set(ERROR_STATUS.values()) <= set(STATUS_PHRASES)
    assert STATUS_PHRASES[422] == "Unprocessable Entity"


def test_an_unknown_code_is_a_400_that_lists_the_input_forms():
    status, body = error_item(ImageDecodeError("something_new", "why"))
    assert status == 400 and body["error"]["accepted"] == accepted("missing_image", InputLimits())


@pytest.mark.parametrize(("probability", "label", "borderline"), [
    (0.25, "fake", True),   # called fake at a low threshold with 25 % confidence: the closest call of all
    (0.19, "real", False),  # 81 % real
    (0.45, "fake", True),
    (0.95, "fake", False),
])
def test_borderline_at_a_validation_chosen_threshold(probability, label, borderline):
    item = verdict(probability, VerdictPolicy(threshold=0.2), calibrated=True)
    assert (item["label"], item["borderline"]) == (label, borderline)


def test_a_face_is_judged_by_the_image_policy():
    policy = VerdictPolicy(threshold=0.2, borderline_band=(0.5, 0.8))
    for probability in (0.1, 0.25, 0.75, 0.95):
        entry = face_verdict([10, 20, 30, 40], ItemScores(probability, 0.5), policy, uncalibrated=False)
        image = verdict(probability, policy, calibrated=True)
        assert entry == {"box": [10, 20, 30, 40], "probability_fake": image["probability_fake"],
                         "confidence": image["confidence"], "label": image["label"], "borderline": image["borderline"]}


def test_a_face_carries_its_raw_probability_only_when_asked():
    entry = face_verdict((1, 2, 3, 4), ItemScores(0.8, 0.61), VerdictPolicy(), uncalibrated=True)
    assert entry["uncalibrated"] == uncalibrated_scores(0.61) and entry["probability_fake"] == 0.8
    assert entry["box"] == [1, 2, 3, 4] and all(type(value) is int for value in entry["box"])


def test_face_fields_list_every_face_and_the_deciding_one():
    scores = [ItemScores(0.2, 0.3), ItemScores(0.9, 0.7)]
    fields = face_fields([[0, 0, 50, 50], [60, 0, 40, 40]], scores, 1, VerdictPolicy(), uncalibrated=False)
    assert fields["decided_by_face"] == 1
    assert [face["probability_fake"] for face in fields["faces"]] == [0.2, 0.9]
    assert [face["label"] for face in fields["faces"]] == ["real", "fake"]
    assert "note" not in fields


def test_no_face_found_says_so_and_how_to_fix_it():
    fields = face_fields([], [ItemScores(0.4, 0.4)], 0, VerdictPolicy(), uncalibrated=False)
    assert fields == {"faces": [], "note": NO_FACE_NOTE}
    assert "No face was found" in NO_FACE_NOTE and "crop" in NO_FACE_NOTE


def test_faces_not_looked_for_add_nothing():
    assert face_fields(None, [ItemScores(0.4, 0.4)], 0, VerdictPolicy(), uncalibrated=True) == {}


@pytest.mark.parametrize(("boxes", "decided_by"), [([[0, 0, 5, 5]], 1), ([[0, 0, 5, 5], [9, 9, 5, 5]], 0)])
def test_face_fields_refuse_boxes_and_scores_that_disagree(boxes, decided_by):
    with pytest.raises(ValueError, match="do not match"):
        face_fields(boxes, [ItemScores(0.1, 0.1)], decided_by, VerdictPolicy(), uncalibrated=False)
