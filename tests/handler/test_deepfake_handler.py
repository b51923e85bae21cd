"""The handler class on a real ts.context.Context, outside a server (the served .mar is tested in tests/scripts)."""

import base64
import inspect
import io
import json
import logging
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from ts.context import RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service
from ts.utils.util import PredictionException

import handler.deepfake_handler as handler_module
from handler.calibration import Calibration
from handler.cpu_threads import available_cores, most_concurrent_workers, threads_per_worker
from handler.forensics import model_input_from_bytes
from handler.torchscript import torchscript_deprecation_silenced
from tests.handler.hostile_images import png_header_claiming
from tests.handler.metric_log import metric_lines

REPO_ROOT = Path(__file__).resolve().parents[2]


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


# --- the full contract: options, request ids, hostile input, metrics, failures, settings, threads -------------


class FailsOnBatchesOfTwo(torch.nn.Module):
    """A real TorchScript model that scores single images (the warm-up) and raises `message` on larger batches."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise RuntimeError(self.message)
        return torch.zeros(x.shape[0], 2)


class NanAfterTheFirst(torch.nn.Module):
    """A real TorchScript model whose logits are NaN for every image but the first of a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2)
        logits[1:] = float("nan")
        return logits


def torchscript_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    with torchscript_deprecation_silenced():
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def png(rgb: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def statuses(context) -> list[int]:
    return [processor.get_response_status_code() for processor in context.request_processor]


@dataclass
class WorkerReply:
    """ts.protocol.otf_message_handler.create_predict_response's bytes, decoded: what the frontend receives."""

    code: int
    message: str
    items: list[tuple[str, int, Any]]  # request id, HTTP status, JSON body


def _take(buffer: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from("!i", buffer, offset)
    return buffer[offset + 4:offset + 4 + length], offset + 4 + length


def decode_reply(buffer: bytes) -> WorkerReply:
    code, offset = struct.unpack_from("!i", buffer)[0], 4
    message, offset = _take(buffer, offset)
    items = []
    while struct.unpack_from("!i", buffer, offset)[0] != -1:
        request_id, offset = _take(buffer, offset)
        _, offset = _take(buffer, offset)  # content type
        (status,) = struct.unpack_from("!i", buffer, offset)
        _, offset = _take(buffer, offset + 4)  # reason phrase
        (header_count,) = struct.unpack_from("!i", buffer, offset)
        offset += 4
        for _ in range(2 * header_count):
            _, offset = _take(buffer, offset)
        body, offset = _take(buffer, offset)
        items.append((request_id.decode(), status, json.loads(body) if body != b"error" else None))
    return WorkerReply(code, message.decode(), items)


def service_predict(context, handler, rows: list[dict], headers: list[dict] | None = None,
                    content_types: list[dict] | None = None) -> WorkerReply:
    """Runs a batch through ts.service.Service.predict, the worker's own code path, as the frontend would send it.

    `content_types` gives each row key's content type as the frontend sends it ("" when not given: what it
    sends for a text form field or a query parameter).
    """
    cache = MetricsCacheYamlImpl(config_file_path=str(REPO_ROOT / "config" / "metrics.yaml"))
    cache.initialize_cache()
    service = Service("deepfake", context.system_properties["model_dir"], None, handler.handle, None, len(rows),
                      metrics_cache=cache)
    service.set_cl_socket(None)
    kinds = content_types or [{}] * len(rows)
    batch = [{"requestId": f"r{index}".encode(),
              "parameters": [{"name": name, "contentType": kinds[index].get(name, ""), "value": value}
                             for name, value in row.items()],
              "headers": [{"name": key.encode(), "value": value.encode()}
                          for key, value in (headers or [{}] * len(rows))[index].items()]}
             for index, row in enumerate(rows)]
    return decode_reply(bytes(service.predict(batch)))


@pytest.mark.parametrize("transport", ["form_field", "json_key", "header"])
def test_uncalibrated_on_request_adds_the_raw_softmax_and_keeps_the_calibrated_verdict(
        handler_and_context, tiny_dataset, transport):
    data = (tiny_dataset / "fake" / "fake_00004.jpg").read_bytes()
    handler, context = handler_and_context(2)
    plain = {"body": bytearray(data)}
    asking = {
        "form_field": {"data": bytearray(data), "uncalibrated": bytearray(b"true")},
        "json_key": {"body": {"data": base64.b64encode(data).decode(), "uncalibrated": True}},
        "header": {"body": bytearray(data)},
    }[transport]
    if transport == "header":
        context.request_processor[1] = RequestProcessor({"X-Uncalibrated": "yes"})
    without, with_raw = handler.handle([plain, asking], context)
    raw, calibrated = _raw_and_calibrated(handler, data)
    assert "uncalibrated" not in without
    assert with_raw["uncalibrated"]["probability_fake"] == pytest.approx(raw, abs=1e-6)
    assert with_raw["uncalibrated"]["probabilities"] == {"real": round(1 - raw, 6), "fake": round(raw, 6)}
    # Everything else is the calibrated verdict, identical to the request that did not ask.
    assert {k: v for k, v in with_raw.items() if k not in ("uncalibrated", "request_id")} == {
        k: v for k, v in without.items() if k != "request_id"}
    assert with_raw["probability_fake"] == pytest.approx(calibrated, abs=1e-6)


def test_header_and_request_ids_reach_the_handler_through_ts_service(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00004.jpg").read_bytes()
    handler, context = handler_and_context(1)
    reply = service_predict(context, handler, [{"body": data}, {"body": data}, {"body": b""}],
                                              headers=[{}, {"X-Uncalibrated": "true"}, {}])
    assert reply.code == 200
    assert [(request_id, status) for request_id, status, _ in reply.items] == [("r0", 200), ("r1", 200), ("r2", 400)]
    bodies = [body for _, _, body in reply.items]
    assert "uncalibrated" not in bodies[0] and "uncalibrated" in bodies[1]
    assert [body["request_id"] for body in bodies] == ["r0", "r1", "r2"]
    assert bodies[2]["error"]["code"] == "empty_input"


def test_invalid_option_refuses_only_that_item(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00001.jpg").read_bytes()
    handler, context = handler_and_context(2)
    responses = handler.handle([{"data": data, "uncalibrated": b"ture"}, {"body": data}], context)
    assert statuses(context) == [400, 200]
    assert responses[0]["error"]["code"] == "invalid_option" and "'uncalibrated'" in responses[0]["error"]["message"]
    assert responses[1]["label"] in {"real", "fake"}


def test_every_item_carries_its_request_id(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00001.jpg").read_bytes()
    handler, context = handler_and_context(3)
    responses = handler.handle([{"body": data}, {"body": b"junk"}, {"body": data}], context)
    assert [response["request_id"] for response in responses] == ["request-0", "request-1", "request-2"]


def test_hostile_batch_gets_per_item_answers_and_the_worker_keeps_serving(handler_and_context, tiny_dataset):
    good = (tiny_dataset / "real" / "real_00002.jpg").read_bytes()
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    odd_tiff = io.BytesIO()
    Image.new("F", (40, 32), 0.25).save(odd_tiff, format="TIFF")
    cases = [
        ({"body": png_header_claiming(100_000, 100_000)}, 413, "image_too_large"),
        ({"body": png(np.full((1, 1, 3), 200, np.uint8))}, 422, "degenerate_image"),  # decodes, but is no photo
        ({"body": png(np.full((1, 5000, 3), 30, np.uint8))}, 422, "degenerate_image"),
        ({"body": gif.getvalue()}, 200, None),
        ({"body": odd_tiff.getvalue()}, 200, None),
        ({"body": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()}, 415, "not_an_image"),
        ({"body": [1, 2, 3]}, 400, "invalid_json"),
        ({"body": {"data": 5}}, 400, "invalid_json"),
        ({"uncalibrated": bytearray(b"true")}, 400, "missing_image"),
        (["not", "a", "mapping"], 400, "corrupt_image"),  # not what TorchServe sends: the catch-all must hold
        ({"body": good}, 200, None),
    ]
    handler, context = handler_and_context(len(cases))
    responses = handler.handle([row for row, _, _ in cases], context)
    assert statuses(context) == [status for _, status, _ in cases]
    assert [r.get("error", {}).get("code") for r in responses] == [code for _, _, code in cases]
    assert all(0.0 <= r["probability_fake"] <= 1.0 for r in responses if "error" not in r)
    again = handler.handle([{"body": good}], context)[0]
    assert again["probability_fake"] == responses[-1]["probability_fake"]


def test_metrics_count_every_batch_item_and_error_once_per_distinct_value(handler_and_context, tiny_dataset, caplog):
    caplog.set_level(logging.INFO)
    real = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    fake = (tiny_dataset / "fake" / "fake_00000.jpg").read_bytes()
    handler, context = handler_and_context(5)
    responses = handler.handle([{"body": real}, {"body": b"garbage"}, {"body": fake}, {"body": b""},
                                {"body": real}], context)
    lines = metric_lines(caplog)
    # One line per label / error code per batch: each line costs the Java frontend a parse and a log write.
    predictions = {line.dimensions["Label"]: line.value for line in lines if line.name == "DeepfakePredictions"}
    assert sum(1 for line in lines if line.name == "DeepfakePredictions") == len(predictions)
    assert predictions == Counter(r["label"] for r in responses if "error" not in r)
    assert sum(predictions.values()) == 3
    errors = sorted((line.dimensions["ErrorCode"], line.value) for line in lines if line.name == "DeepfakeItemErrors")
    assert errors == [("empty_input", 1.0), ("not_an_image", 1.0)]
    scored = [(line.dimensions["Scored"], line.value) for line in lines if line.name == "DeepfakeScoredImages"]
    assert scored == [("whole_image", 3.0)]
    by_name = {line.name: line for line in lines}
    assert by_name["DeepfakeBatches"].value == 1 and by_name["DeepfakeBatchItems"].value == 5
    assert by_name["DeepfakePreprocessSeconds"].value == pytest.approx(responses[0]["timing_ms"]["preprocess"] / 1000)
    assert by_name["DeepfakeInferenceSeconds"].value == pytest.approx(responses[0]["timing_ms"]["inference"] / 1000)
    assert {line.dimensions["ModelName"] for line in lines} == {"deepfake"}


def test_a_batch_without_decodable_images_times_no_inference(handler_and_context, caplog):
    caplog.set_level(logging.INFO)
    handler, context = handler_and_context(2)
    handler.handle([{"body": b""}, {"body": b"x"}], context)
    timed = [line.name for line in metric_lines(caplog) if line.name.endswith("Seconds")]
    assert timed == ["DeepfakePreprocessSeconds"]


@pytest.mark.parametrize(("message", "status", "phrase"), [
    ("CUDA out of memory. Tried to allocate 20.00 GiB", 507, "out of memory"),
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 81920000000 bytes", 507, "out of memory"),
    ("mat1 and mat2 shapes cannot be multiplied (2x4 and 3x2)", 503, "mat1 and mat2 shapes"),
])
def test_a_failing_forward_pass_fails_the_batch_with_a_clear_status(handler_and_context, tiny_dataset, message,
                                                                     status, phrase, caplog):
    caplog.set_level(logging.INFO)
    data = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    handler, context = handler_and_context(2, replace_files={"model.torchscript.pt":
                                                             torchscript_bytes(FailsOnBatchesOfTwo(message))})
    with pytest.raises(PredictionException) as raised:
        handler.handle([{"body": data}, {"body": data}], context)
    assert raised.value.error_code == status and phrase in raised.value.message
    assert "batch of 2 image(s) on cpu" in raised.value.message
    code = "out_of_memory" if status == 507 else "model_failed"
    lines = metric_lines(caplog)
    assert [(line.name, line.dimensions.get("ErrorCode")) for line in lines] == [
        ("DeepfakeBatches", None), ("DeepfakeBatchItems", None), ("DeepfakePreprocessSeconds", None),
        ("DeepfakeItemErrors", code)]
    assert lines[-1].value == 2  # both items of the failed batch, in one line
    # What TorchServe's worker answers the frontend with: that status and message for the whole batch.
    reply = service_predict(context, handler, [{"body": data}, {"body": data}])
    assert (reply.code, reply.message) == (status, raised.value.message)
    assert handler.handle([{"body": data}], context)[0]["label"] in {"real", "fake"}  # the worker still serves


def test_a_non_finite_score_is_that_items_error(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    handler, context = handler_and_context(3, replace_files={"model.torchscript.pt":
                                                             torchscript_bytes(NanAfterTheFirst())})
    responses = handler.handle([{"body": data}, {"body": data}, {"body": b""}], context)
    assert statuses(context) == [200, 500, 400]
    assert [r.get("error", {}).get("code") for r in responses] == [None, "non_finite_score", "empty_input"]


@pytest.mark.parametrize(("settings", "named"), [
    ({"treshold": 0.3}, "'treshold'"),
    ({"borderline_band": [0.7, 0.6]}, "borderline_band"),
    ({"threshold": 2}, "'threshold'"),
])
def test_invalid_handler_settings_stop_the_worker_at_initialize(handler_and_context, settings, named):
    with pytest.raises(ValueError, match=named):
        handler_and_context(1, **settings)


def test_cpu_threads_follow_the_setting_or_the_share_of_cores(handler_and_context):
    handler_and_context(1, torch_threads=1)
    assert torch.get_num_threads() == 1
    model_config = yaml.safe_load((REPO_ROOT / "config" / "model-config.yaml").read_text())
    handler_and_context(1)
    assert torch.get_num_threads() == threads_per_worker(available_cores(),
                                                         most_concurrent_workers(model_config, available_cores()))


def test_the_handler_module_defines_exactly_one_class():
    # TorchServe's model loader refuses a handler file with more than one class ("Expected only one class").
    defined = [obj for _, obj in inspect.getmembers(handler_module, inspect.isclass)
               if obj.__module__ == handler_module.__name__]
    assert defined == [handler_module.DeepfakeHandler]


# --- the error contract: which field, why, what is accepted; the upload limit ---------------------------------


def test_an_upload_over_max_upload_bytes_is_refused_before_decoding(handler_and_context):
    handler, context = handler_and_context(4, max_upload_bytes=2000)
    small = png(np.full((40, 40, 3), 90, np.uint8))
    bomb = png_header_claiming(100_000, 100_000)  # decoding would answer image_too_large
    assert len(small) <= 2000
    rows = [{"body": bomb + bytes(2000)}, {"body": {"data": base64.b64encode(bytes(2001)).decode()}},
            {"upload": bytearray(bytes(2001))}, {"body": small}]
    responses = handler.handle(rows, context)
    assert statuses(context) == [413, 413, 413, 200]
    assert [(r["error"]["code"], r["error"]["field"]) for r in responses[:3]] == [
        ("payload_too_large", "body"), ("payload_too_large", "data"), ("payload_too_large", "upload")]
    assert "the limit is 2000 bytes" in responses[0]["error"]["message"]
    assert "at most 2000 bytes" in responses[0]["error"]["accepted"]


def test_errors_name_the_field_and_what_this_worker_accepts(handler_and_context):
    handler, context = handler_and_context(5, max_image_pixels=400, max_upload_bytes=50_000)
    noise = np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    rows = [{"upload": bytearray(noise)}, {"body": {"image": base64.b64encode(noise).decode()}},
            {"body": png(np.zeros((30, 30, 3), np.uint8))}, {"data": bytearray()}, {"body": {"b64": "%%"}}]
    responses = handler.handle(rows, context)
    errors = [response["error"] for response in responses]
    assert [(e["code"], e["field"], e["status"]) for e in errors] == [
        ("not_an_image", "upload", 415), ("not_an_image", "image", 415), ("image_too_large", "body", 413),
        ("empty_input", "data", 400), ("bad_base64", "b64", 400)]
    assert all(e["message"] and "400 pixels" in e["accepted"] for e in errors)
    assert all("50000 bytes" in e["accepted"] for e in errors if e["code"] != "image_too_large")
    assert handler.describe_handle()["max_upload_bytes"] == 50_000


def test_a_non_finite_score_names_no_field(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    handler, context = handler_and_context(2, replace_files={"model.torchscript.pt":
                                                             torchscript_bytes(NanAfterTheFirst())})
    responses = handler.handle([{"body": data}, {"body": data}], context)
    assert responses[1]["error"]["code"] == "non_finite_score" and responses[1]["error"]["field"] is None


def test_what_the_frontend_sends_gets_errors_that_say_what_the_request_looked_like(handler_and_context, tiny_dataset):
    data = (tiny_dataset / "real" / "real_00004.jpg").read_bytes()
    handler, context = handler_and_context(1)
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    rows = [
        {"caption": b"a text field, no file"},  # a form with only a text field: that field is not an image
        {},  # a multipart body whose boundary did not match: the frontend found no part
        {"body": b'{"data": "abc'},  # declared JSON, did not parse: the worker forwards the bytes
        {"body": data},  # the same declaration on image bytes: still the image
        {"body": data},  # a bad option in the header
        {"note": b"hello", "data": data},  # a file beside a text field
    ]
    headers = [multipart, multipart, {"Content-Type": "application/json"}, {"Content-Type": "application/json"},
               {"X-Uncalibrated": "ture"}, multipart]
    content_types = [{}, {}, {"body": "application/json"}, {"body": "application/json"}, {},
                     {"data": "image/jpeg"}]  # "" for the rest: what the frontend sends for a field without a file
    reply = service_predict(context, handler, rows, headers=headers, content_types=content_types)
    answers = [(status, body.get("error", {}).get("code"), body.get("error", {}).get("field"))
               for _, status, body in reply.items]
    assert answers == [(415, "not_an_image", "caption"), (400, "missing_image", "body"),
                       (400, "invalid_json", "body"), (200, None, None), (400, "invalid_option", "X-Uncalibrated"),
                       (200, None, None)]
    bodies = [body for _, _, body in reply.items]
    assert "boundary" in bodies[1]["error"]["message"] and "does not parse" in bodies[2]["error"]["message"]
    assert "true, 1, yes" in bodies[4]["error"]["accepted"]


# --- images no model can judge: degenerate shapes (422 degenerate_image) ----------------------------------------


def test_degenerate_shapes_get_422_with_their_size_and_the_rest_of_the_batch_is_scored(handler_and_context,
                                                                                        tiny_dataset, caplog):
    caplog.set_level(logging.INFO)
    good = (tiny_dataset / "real" / "real_00000.jpg").read_bytes()
    strip, tiny = png(np.full((20, 2000, 3), 120, np.uint8)), png(np.full((16, 16, 3), 120, np.uint8))
    handler, context = handler_and_context(3)
    responses = handler.handle([{"body": strip}, {"data": tiny}, {"body": good}], context)
    assert statuses(context) == [422, 422, 200]
    errors = [response["error"] for response in responses[:2]]
    assert [(e["code"], e["status"], e["field"]) for e in errors] == [("degenerate_image", 422, "body"),
                                                                      ("degenerate_image", 422, "data")]
    assert "2000x20 pixels" in errors[0]["message"] and "100:1" in errors[0]["message"]
    assert "16x16 pixels" in errors[1]["message"] and "under the minimum of 32 px" in errors[1]["message"]
    assert all("at least 32 pixels" in e["accepted"] and "at most 4 times" in e["accepted"] for e in errors)
    assert responses[2]["label"] in {"real", "fake"} and responses[2]["timing_ms"]["model_inputs"] == 1
    lines = metric_lines(caplog)
    assert [(line.dimensions["ErrorCode"], line.value) for line in lines if line.name == "DeepfakeItemErrors"] == [
        ("degenerate_image", 2.0)]
    assert [(line.dimensions["Scored"], line.value) for line in lines if line.name == "DeepfakeScoredImages"] == [
        ("whole_image", 1.0)]  # a refused image is not counted as scored


def test_the_geometry_limits_are_settings_and_measure_the_upright_image(handler_and_context):
    strip, tiny = png(np.full((20, 2000, 3), 120, np.uint8)), png(np.full((16, 16, 3), 120, np.uint8))
    handler, context = handler_and_context(2, min_image_side=16, max_aspect_ratio=100)
    assert [r.get("label") in {"real", "fake"} for r in handler.handle([{"body": strip}, {"body": tiny}], context)] == [
        True, True]
    assert statuses(context) == [200, 200]
    assert (handler.describe_handle()["min_image_side"], handler.describe_handle()["max_aspect_ratio"]) == (16, 100.0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200 wide and 40 tall, shown 40 wide and 200 tall: the message gives the shown size
    turned = io.BytesIO()
    Image.new("RGB", (200, 40), (90, 90, 90)).save(turned, format="PNG", exif=exif.tobytes())
    handler, context = handler_and_context(1)
    [answer] = handler.handle([{"body": turned.getvalue()}], context)
    assert answer["error"]["code"] == "degenerate_image" and "40x200 pixels" in answer["error"]["message"]
