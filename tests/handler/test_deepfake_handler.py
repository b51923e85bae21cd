"""The handler class on a real ts.context.Context, outside a server (the served .mar is tested in tests/scripts)."""

import io

import pytest
import torch
from PIL import Image

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


def test_handler_probability_equals_model_on_shared_preprocessing(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "fake" / "fake_00002.jpg").read_bytes()
    handler, context = handler_and_context(1)
    served = handler.handle([{"body": data}], context)[0]["probability_fake"]
    tensor = model_input_from_bytes(data, handler.metadata.preprocessing)
    with torch.inference_mode():
        expected = torch.softmax(handler.model(tensor[None]), dim=1)[0, handler.metadata.fake_index].item()
    assert served == pytest.approx(expected, abs=1e-6)


def test_settings_come_from_model_config(handler_and_context):
    handler, context = handler_and_context(1, threshold=0.0, max_image_pixels=100)
    assert handler.policy.threshold == 0.0
    big = io.BytesIO()
    Image.new("RGB", (20, 20)).save(big, format="PNG")
    response = handler.handle([{"body": big.getvalue()}], context)[0]
    assert response["error"]["code"] == "image_too_large"
    assert context.request_processor[0].get_response_status_code() == 413
