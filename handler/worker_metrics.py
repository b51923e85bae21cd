"""The handler's own Prometheus metrics, emitted through TorchServe's metrics cache.

The worker logs each update as a `[METRICS]` line; the Java frontend turns the ones declared in
config/metrics.yaml (`model_metrics:`) into Prometheus series on :8082/metrics, adding a Hostname
label. Names, types and dimension order here must match that file, which
tests/handler/test_worker_metrics.py checks.

Like the handler class, this module runs only inside a TorchServe worker (it imports `ts`); training
never imports it. A metric that cannot be emitted is logged and skipped: metrics must never cost a
client its answer.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSpec:
    """One metric as config/metrics.yaml declares it (dimension names in the order values are given)."""

    name: str
    kind: MetricTypes
    unit: str
    dimensions: tuple[str, ...]


MODEL_NAME = "ModelName"
PREDICTIONS = MetricSpec("DeepfakePredictions", MetricTypes.COUNTER, "Count", (MODEL_NAME, "Label"))
ITEM_ERRORS = MetricSpec("DeepfakeItemErrors", MetricTypes.COUNTER, "Count", (MODEL_NAME, "ErrorCode"))
BATCHES = MetricSpec("DeepfakeBatches", MetricTypes.COUNTER, "Count", (MODEL_NAME,))
BATCH_ITEMS = MetricSpec("DeepfakeBatchItems", MetricTypes.COUNTER, "Count", (MODEL_NAME,))
# What each scored image was scored on (handler.scoring: faces, whole_image_no_face, whole_image; video for videos).
# Only items that got a verdict count: an image a face model refuses for want of a face (no_face: refuse, the
# default) or for its shape is an item error (DeepfakeItemErrors{ErrorCode="no_face_found" / "degenerate_image"}),
# so a rising share of no_face_found errors (or of whole_image_no_face under no_face: whole_image) means uploads
# stopped showing faces a face model can judge. Faces counts the crops.
SCORED_IMAGES = MetricSpec("DeepfakeScoredImages", MetricTypes.COUNTER, "Count", (MODEL_NAME, "Scored"))
SCORED_FACES = MetricSpec("DeepfakeScoredFaces", MetricTypes.COUNTER, "Count", (MODEL_NAME,))
# Histograms: TorchServe 0.12 exports them in prometheus mode (_bucket/_sum/_count) with the Prometheus
# client's default buckets (0.005 ... 10), which fit seconds (5 ms ... 10 s), the Prometheus convention; in
# ms they would only resolve sub-10 ms batches. rate(_sum)/rate(_count) is the mean per batch. Inference is
# observed only for batches with a forward pass.
PREPROCESS_SECONDS = MetricSpec("DeepfakePreprocessSeconds", MetricTypes.HISTOGRAM, "s", (MODEL_NAME,))
INFERENCE_SECONDS = MetricSpec("DeepfakeInferenceSeconds", MetricTypes.HISTOGRAM, "s", (MODEL_NAME,))
# Seconds of worker life: each worker adds its heartbeat interval every interval, so the sum of rate() over a model's
# series is its live workers (TorchServe 0.12 exports no worker count). A dead worker, or one still loading its
# model, adds nothing.
WORKER_UPTIME_SECONDS = MetricSpec("DeepfakeWorkerUptimeSeconds", MetricTypes.COUNTER, "s", (MODEL_NAME,))
ALL_METRICS = (PREDICTIONS, ITEM_ERRORS, BATCHES, BATCH_ITEMS, SCORED_IMAGES, SCORED_FACES, PREPROCESS_SECONDS,
               INFERENCE_SECONDS, WORKER_UPTIME_SECONDS)
# 10 s: rate() over 1 minute (4 scrapes at Prometheus' usual 15 s) already spans several heartbeats, and a worker
# logs one line per interval, nothing next to the per-batch lines.
HEARTBEAT_SECONDS = 10.0


class WorkerMetrics:
    """Emits the handler's metrics for one model into a TorchServe metrics cache (context.metrics).

    Args:
        cache: the worker's metrics cache (ts.metrics.metric_cache_yaml_impl.MetricsCacheYamlImpl), or
            None where there is none (then nothing is emitted).
        model_name: value of the ModelName dimension.

    """

    def __init__(self, cache: Any, model_name: str) -> None:
        self.cache = cache
        self.model_name = model_name
        self._reported: set[str] = set()  # metrics whose failure was logged already: one traceback each

    def batch(self, items: int, preprocess_ms: float, inference_ms: float | None) -> None:
        """One handle() call: its size and timings (inference_ms None when no item reached the model)."""
        self._emit(BATCHES, 1, ())
        self._emit(BATCH_ITEMS, items, ())
        self._emit(PREPROCESS_SECONDS, preprocess_ms / 1000.0, ())
        if inference_ms is not None:
            self._emit(INFERENCE_SECONDS, inference_ms / 1000.0, ())

    def outcomes(self, labels: Counter[str], scored: Counter[str], faces: int, errors: Counter[str]) -> None:
        """A batch's per-item counts, one update per distinct value instead of one per item.

        Every update is a log line the Java frontend parses and writes: per item, they cost the frontend more CPU
        than TorchServe's own request handling (measured: 2.9 ms of frontend CPU per request at 150 requests/s).

        Args:
            labels: scored items by label.
            scored: items that got a verdict, by what was scored (faces, whole_image_no_face, whole_image, video);
                refused items are errors only.
            faces: face crops scored in the batch (no update when 0).
            errors: items answered with an error, by code.

        """
        for label, count in sorted(labels.items()):
            self._emit(PREDICTIONS, count, (label,))
        for kind, count in sorted(scored.items()):
            self._emit(SCORED_IMAGES, count, (kind,))
        if faces > 0:
            self._emit(SCORED_FACES, faces, ())
        for code, count in sorted(errors.items()):
            self._emit(ITEM_ERRORS, count, (code,))

    def alive(self, seconds: float) -> None:
        """The worker lived another `seconds` (a heartbeat)."""
        self._emit(WORKER_UPTIME_SECONDS, seconds, ())

    def _emit(self, spec: MetricSpec, value: float, dimension_values: tuple[str, ...],
              request_id: str | None = None) -> None:
        if self.cache is None:
            return
        try:
            metric = self.cache.get_metric(spec.name, spec.kind)
            metric.add_or_update(value, [self.model_name, *dimension_values], request_id or "")
        except Exception:  # noqa: BLE001 - a metrics failure must never fail inference
            if spec.name not in self._reported:
                self._reported.add(spec.name)
                logger.warning("metric %s could not be emitted (is it declared in metrics.yaml?)", spec.name,
                               exc_info=True)


class Heartbeat:
    """A daemon thread that reports the worker alive (WorkerMetrics.alive) once per interval, from start() on.

    The frontend turns the worker's `[METRICS]` lines into Prometheus series whether or not a request is in flight,
    so an idle worker is still counted. The first beat comes one interval after start(): a worker that dies sooner
    (a crash loop) never counts as live. The thread holds its WorkerMetrics weakly and ends when nobody else holds
    it, so handlers built and dropped in one process (tests) leave no beating thread behind.

    Args:
        metrics: where the beats go.
        interval: seconds between beats, also the value each beat adds.

    """

    def __init__(self, metrics: WorkerMetrics, interval: float = HEARTBEAT_SECONDS) -> None:
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self._metrics = weakref.ref(metrics)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deepfake-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Starts beating; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stops beating (no further beat is emitted once this returns, unless the join times out)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def beating(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    @property
    def metrics(self) -> WorkerMetrics | None:
        """Where the beats go (None once nothing else holds it)."""
        return self._metrics()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            metrics = self._metrics()
            if metrics is None:
                return
            metrics.alive(self.interval)
            del metrics  # hold it only while beating, so it can be collected between beats
