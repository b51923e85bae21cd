"""The handler class on a real ts.context.Context, outside a server (the served .mar is tested in tests/scripts)."""

import io

import pytest
import torch
from PIL import Image

from handler.calibration import Calibration
from handler.forensics import model_input_from_bytes


def test_batch_with_bad_items_scores_the_good_ones(handler_and_context, tiny_dataset):
    real = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    fake = (tiny_dataset / "fake" / "fake_00000.jpg").read_bytes()
    handler, context = handler_and_context(5)
    rows = [{"body": real}, {"body": b"garbage"}, {"data": fake}, {"body": b""}, {"body": real[:200]}]
    responses = handler.handle(rows, context)
    statuses = [processor.get_response_status_code() for processor in context.request_processor]
    assert statuses == [200, 415, 200, 400, 400]
    assert [r.get("error", {}).get("code") for r in responses] == [None, "not_an_image", None, "empty_input",
                                                                    "corrupt_image"]
    for good in (responses[0], responses[2]):
        assert good["label"] in {"real", "fake"}
        assert 0.0 <= good["probability_fake"] <= 1.0
        assert good["model"]["name"] == "deepfake" and good["model"]["version"] == "7.1"
        assert good["timing_ms"]["batch_size"] == 5


def _raw_and_calibrated(handler, data: bytes) -> tuple[float, float]:
    tensor = model_input_from_bytes(data, handler.metadata.preprocessing)
    with torch.inference_mode():
        logits = handler.model(tensor[None]).numpy()
    fake = handler.metadata.fake_index
    raw = Calibration.none().probabilities(logits, fake)[0, fake]
    return raw, handler.calibration.probabilities(logits, fake)[0, fake]


def test_handler_serves_the_calibrated_probability_of_the_model(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "fake" / "fake_00002.jpg").read_bytes()
    handler, context = handler_and_context(1)
    response = handler.handle([{"body": data}], context)[0]
    raw, calibrated = _raw_and_calibrated(handler, data)
    assert handler.calibration.method == "temperature" and response["calibrated"] is True
    assert response["probability_fake"] == pytest.approx(calibrated, abs=1e-6)
    assert abs(raw - calibrated) > 1e-4  # so the assertion above could tell the two apart


def test_uncalibrated_export_serves_the_raw_softmax_and_says_so(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00003.jpg").read_bytes()
    handler, context = handler_and_context(1, replace_files={"calibration.json": Calibration.none().to_dict()})
    response = handler.handle([{"body": data}], context)[0]
    raw, _ = _raw_and_calibrated(handler, data)
    assert response["calibrated"] is False and response["model"]["calibration"] == "none"
    assert response["probability_fake"] == pytest.approx(raw, abs=1e-6)


def test_a_calibrated_model_without_its_calibration_file_refuses_to_start(handler_and_context):
    with pytest.raises(FileNotFoundError, match="calibration.json is missing .* trained with 'temperature'"):
        handler_and_context(1, replace_files={"calibration.json": None})


def test_settings_come_from_model_config(handler_and_context):
    handler, context = handler_and_context(1, threshold=0.0, max_image_pixels=100)
    assert handler.policy.threshold == 0.0
    big = io.BytesIO()
    Image.new("RGB", (20, 20)).save(big, format="PNG")
    response = handler.handle([{"body": big.getvalue()}], context)[0]
    assert response["error"]["code"] == "image_too_large"
    assert context.request_processor[0].get_response_status_code() == 413
