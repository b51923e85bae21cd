import logging
from collections import Counter
from pathlib import Path

import ts
import yaml
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.worker_metrics import (
    ALL_METRICS,
    BATCH_ITEMS,
    BATCHES,
    INFERENCE_SECONDS,
    ITEM_ERRORS,
    PREDICTIONS,
    PREPROCESS_SECONDS,
    SCORED_FACES,
    SCORED_IMAGES,
    WorkerMetrics,
)
from tests.handler.metric_log import metric_lines

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
        "DeepfakePreprocessSeconds", "DeepfakeInferenceSeconds", "DeepfakeScoredImages", "DeepfakeScoredFaces"}
    for spec in ALL_METRICS:
        entry = next(item for item in declared[spec.kind.value] if item["name"] == spec.name)
        assert (entry["unit"], tuple(entry["dimensions"])) == (spec.unit, spec.dimensions), spec.name
    assert PREDICTIONS.dimensions == ("ModelName", "Label") and ITEM_ERRORS.dimensions == ("ModelName", "ErrorCode")
    assert PREPROCESS_SECONDS.kind.value == INFERENCE_SECONDS.kind.value == "histogram"
    assert SCORED_IMAGES.dimensions == ("ModelName", "Scored") and SCORED_FACES.kind.value == "counter"


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
