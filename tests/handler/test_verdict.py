import pytest

from handler.forensics import ImageDecodeError
from handler.verdict import VerdictPolicy, error_item, verdict


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


@pytest.mark.parametrize(("code", "status"), [("image_too_large", 413), ("not_an_image", 415), ("corrupt_image", 400)])
def test_error_items_carry_status_code_and_message(code, status):
    got_status, body = error_item(ImageDecodeError(code, "why"))
    assert got_status == status
    assert body == {"error": {"code": code, "message": "why", "status": status}}


@pytest.mark.parametrize(("probability", "label", "borderline"), [
    (0.25, "fake", True),   # called fake at a low threshold with 25 % confidence: the closest call of all
    (0.19, "real", False),  # 81 % real
    (0.45, "fake", True),
    (0.95, "fake", False),
])
def test_borderline_at_a_validation_chosen_threshold(probability, label, borderline):
    item = verdict(probability, VerdictPolicy(threshold=0.2), calibrated=True)
    assert (item["label"], item["borderline"]) == (label, borderline)
