import gc
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
import ts
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.worker_metrics import (
    ALL_METRICS,
    BATCH_ITEMS,
    BATCHES,
    HEARTBEAT_SECONDS,
    INFERENCE_SECONDS,
    ITEM_ERRORS,
    PREDICTIONS,
    PREPROCESS_SECONDS,
    SCORED_FACES,
    SCORED_IMAGES,
    WORKER_UPTIME_SECONDS,
    Heartbeat,
    WorkerMetrics,
)
from tests.handler.metric_log import MetricLine, metric_lines

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS_YAML = REPO_ROOT / "config" / "metrics.yaml"
TORCHSERVE_DEFAULT_YAML = Path(ts.__file__).parent / "configs" / "metrics.yaml"


def real_cache(path: Path = METRICS_YAML) -> MetricsCacheYamlImpl:
    cache = MetricsCacheYamlImpl(config_file_path=str(path))
    cache.initialize_cache()
    cache.model_name = "deepfake"
    return cache


def test_exact_names_types_units_and_dimensions_are_declared():
    declared = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    assert {spec.name for spec in ALL_METRICS} == {
        "DeepfakePredictions", "DeepfakeItemErrors", "DeepfakeBatches", "DeepfakeBatchItems",
        "DeepfakePreprocessSeconds", "DeepfakeInferenceSeconds", "DeepfakeScoredImages", "DeepfakeScoredFaces",
        "DeepfakeWorkerUptimeSeconds"}
    for spec in ALL_METRICS:
        entry = next(item for item in declared[spec.kind.value] if item["name"] == spec.name)
        assert (entry["unit"], tuple(entry["dimensions"])) == (spec.unit, spec.dimensions), spec.name
    assert PREDICTIONS.dimensions == ("ModelName", "Label") and ITEM_ERRORS.dimensions == ("ModelName", "ErrorCode")
    assert PREPROCESS_SECONDS.kind.value == INFERENCE_SECONDS.kind.value == "histogram"
    assert SCORED_IMAGES.dimensions == ("ModelName", "Scored") and SCORED_FACES.kind.value == "counter"
    # A counter (rate() of it is the live workers), per model only: the workers of a model add into one series.
    assert (WORKER_UPTIME_SECONDS.kind.value, WORKER_UPTIME_SECONDS.dimensions) == ("counter", ("ModelName",))


def test_torchserve_defaults_are_kept_beside_ours():
    ours = yaml.safe_load(METRICS_YAML.read_text())
    default = yaml.safe_load(TORCHSERVE_DEFAULT_YAML.read_text())
    assert ours["ts_metrics"] == default["ts_metrics"]
    for kind, entries in default["model_metrics"].items():
        assert all(entry in ours["model_metrics"][kind] for entry in entries)


def test_emits_the_lines_the_frontend_parses(caplog):
    caplog.set_level(logging.INFO)
    metrics = WorkerMetrics(real_cache(), "deepfake")
    metrics.outcomes(Counter(fake=2, real=1), Counter(), 0, Counter(not_an_image=1))
    metrics.batch(3, preprocess_ms=4.25, inference_ms=17.5)
    metrics.batch(1, preprocess_ms=0.5, inference_ms=None)  # every item refused: no forward pass to time
    lines = [(line.name, line.type, line.value, line.dimensions, line.request_id) for line in metric_lines(caplog)]
    assert lines == [
        ("DeepfakePredictions", "COUNTER", 2.0, {"ModelName": "deepfake", "Label": "fake"}, None),
        ("DeepfakePredictions", "COUNTER", 1.0, {"ModelName": "deepfake", "Label": "real"}, None),
        ("DeepfakeItemErrors", "COUNTER", 1.0, {"ModelName": "deepfake", "ErrorCode": "not_an_image"}, None),
        ("DeepfakeBatches", "COUNTER", 1.0, {"ModelName": "deepfake"}, None),
        ("DeepfakeBatchItems", "COUNTER", 3.0, {"ModelName": "deepfake"}, None),
        ("DeepfakePreprocessSeconds", "HISTOGRAM", 0.00425, {"ModelName": "deepfake"}, None),
        ("DeepfakeInferenceSeconds", "HISTOGRAM", 0.0175, {"ModelName": "deepfake"}, None),
        ("DeepfakeBatches", "COUNTER", 1.0, {"ModelName": "deepfake"}, None),
        ("DeepfakeBatchItems", "COUNTER", 1.0, {"ModelName": "deepfake"}, None),
        ("DeepfakePreprocessSeconds", "HISTOGRAM", 0.0005, {"ModelName": "deepfake"}, None),
    ]
    assert BATCHES.name == "DeepfakeBatches" and BATCH_ITEMS.name == "DeepfakeBatchItems"


def test_undeclared_metrics_are_logged_once_and_never_raise(caplog):
    # TorchServe's own metrics.yaml declares none of ours: the cache raises for each, the handler must not.
    caplog.set_level(logging.INFO)
    metrics = WorkerMetrics(real_cache(TORCHSERVE_DEFAULT_YAML), "deepfake")
    for _ in range(3):
        metrics.outcomes(Counter(fake=1), Counter(), 0, Counter())
        metrics.batch(2, 1.0, 2.0)
    assert metric_lines(caplog) == []
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "could not" in r.getMessage()]
    assert sorted(warnings) == sorted(f"metric {spec.name} could not be emitted (is it declared in metrics.yaml?)"
                                      for spec in (PREDICTIONS, BATCHES, BATCH_ITEMS, PREPROCESS_SECONDS,
                                                   INFERENCE_SECONDS))


def test_without_a_metrics_cache_nothing_is_emitted(caplog):
    caplog.set_level(logging.INFO)
    WorkerMetrics(None, "deepfake").batch(1, 1.0, 1.0)
    assert metric_lines(caplog) == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_value_ts_refuses_is_logged_by_ts_not_raised(caplog):
    caplog.set_level(logging.INFO)
    WorkerMetrics(real_cache(), "deepfake").batch(-1, 1.0, 1.0)  # a negative counter increment: ts refuses it
    assert [line.name for line in metric_lines(caplog)] == ["DeepfakeBatches", "DeepfakePreprocessSeconds",
                                                            "DeepfakeInferenceSeconds"]
    assert any("Counter metric update value cannot be negative" in r.getMessage() for r in caplog.records)


def test_scored_images_count_by_what_was_scored_and_faces_by_crop(caplog):
    caplog.set_level(logging.INFO)
    metrics = WorkerMetrics(real_cache(), "deepfake")
    metrics.outcomes(Counter(), Counter(faces=2, whole_image_no_face=1), 5, Counter())
    metrics.outcomes(Counter(), Counter(whole_image=1), 0, Counter())  # no face: the face counter is not touched
    lines = [(line.name, line.type, line.value, line.dimensions) for line in metric_lines(caplog)]
    assert lines == [
        ("DeepfakeScoredImages", "COUNTER", 2.0, {"ModelName": "deepfake", "Scored": "faces"}),
        ("DeepfakeScoredImages", "COUNTER", 1.0, {"ModelName": "deepfake", "Scored": "whole_image_no_face"}),
        ("DeepfakeScoredFaces", "COUNTER", 5.0, {"ModelName": "deepfake"}),
        ("DeepfakeScoredImages", "COUNTER", 1.0, {"ModelName": "deepfake", "Scored": "whole_image"}),
    ]


def test_undeclared_face_metrics_never_raise(caplog):
    caplog.set_level(logging.INFO)
    WorkerMetrics(real_cache(TORCHSERVE_DEFAULT_YAML), "deepfake").outcomes(Counter(), Counter(faces=1), 3, Counter())
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == sorted(f"metric {spec.name} could not be emitted (is it declared in metrics.yaml?)"
                              for spec in (SCORED_IMAGES, SCORED_FACES))


def heartbeat_lines(caplog: pytest.LogCaptureFixture) -> list[MetricLine]:
    return [line for line in metric_lines(caplog) if line.name == WORKER_UPTIME_SECONDS.name]


def wait_for_beats(caplog: pytest.LogCaptureFixture, count: int, timeout: float = 10.0) -> list[MetricLine]:
    deadline = time.monotonic() + timeout
    while len(lines := heartbeat_lines(caplog)) < count:
        assert time.monotonic() < deadline, f"{len(lines)} of {count} heartbeats in {timeout:.0f} s"
        time.sleep(0.01)  # polling interval
    return lines


def test_heartbeat_adds_its_interval_every_interval_from_a_thread_of_its_own(caplog):
    caplog.set_level(logging.INFO)
    metrics = WorkerMetrics(real_cache(), "deepfake")
    heartbeat = Heartbeat(metrics, interval=0.05).start()
    started = time.monotonic()
    try:
        assert heartbeat_lines(caplog) == []  # the first beat comes one interval after start, not at once
        lines = wait_for_beats(caplog, 3)
        assert time.monotonic() - started >= 3 * 0.05
    finally:
        heartbeat.stop()
    assert [(line.type, line.value, line.dimensions, line.request_id) for line in lines[:3]] == [
        ("COUNTER", 0.05, {"ModelName": "deepfake"}, None)] * 3  # no request: the beat belongs to none
    assert not heartbeat.beating
    stopped_at = len(heartbeat_lines(caplog))
    time.sleep(0.2)  # four intervals of silence expected: nothing to poll for, an absence is being checked
    assert len(heartbeat_lines(caplog)) == stopped_at


def test_heartbeat_ends_with_the_metrics_it_reports_to(caplog):
    # Handlers built and dropped in one process (tests) must not leave threads beating for them.
    caplog.set_level(logging.INFO)
    metrics = WorkerMetrics(real_cache(), "deepfake")
    heartbeat = Heartbeat(metrics, interval=0.02).start()
    wait_for_beats(caplog, 1)
    del metrics
    gc.collect()
    deadline = time.monotonic() + 10
    while heartbeat.beating:
        assert time.monotonic() < deadline, "the heartbeat outlived its metrics"
        time.sleep(0.01)  # polling interval


def test_heartbeat_without_a_metrics_cache_emits_nothing(caplog):
    caplog.set_level(logging.INFO)
    metrics = WorkerMetrics(None, "deepfake")
    heartbeat = Heartbeat(metrics, interval=0.01).start()
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:  # ten intervals
        time.sleep(0.01)
    heartbeat.stop()
    assert heartbeat_lines(caplog) == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("interval", [0, -1.0])
def test_heartbeat_interval_must_be_positive(interval):
    with pytest.raises(ValueError, match="heartbeat interval must be > 0 seconds"):
        Heartbeat(WorkerMetrics(None, "deepfake"), interval)


def test_a_handler_beats_once_its_model_is_loaded(handler_and_context):
    handler, _ = handler_and_context(1)
    assert handler.heartbeat is not None and handler.heartbeat.beating
    assert handler.heartbeat.interval == HEARTBEAT_SECONDS == 10.0
    assert handler.heartbeat.metrics is handler.metrics  # beats into the worker's metrics cache
