"""TorchServe handler: image bytes in, one JSON verdict (or one JSON error) per request out.

Packaged into the .mar together with the handler/ package, whose modules it imports; it must
not import training/. TorchServe finds the handler as the only class defined in this file, so
helper classes live in the other handler/ modules.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from handler.calibration import CALIBRATION_FILENAME, Calibration, softmax
from handler.cpu_threads import apply_cpu_threads, available_cores, most_concurrent_workers, threads_per_worker
from handler.forensics import ImageDecodeError, decode_rgb, model_input_from_bytes, model_input_from_rgb
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.request_body import image_bytes_from_row
from handler.request_options import RequestOptions, request_options
from handler.settings import HandlerSettings
from handler.torchscript import load_torchscript
from handler.verdict import STATUS_PHRASES, ItemScores, VerdictPolicy, error_item, uncalibrated_scores, verdict
from handler.worker_metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# Phrases in the errors torch raises when an allocation fails (CUDA, CPU allocator), for a 507 instead of a 503.
OUT_OF_MEMORY_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def load_calibration(model_dir: Path, metadata: ModelMetadata) -> Calibration:
    """The model's calibration.json, applied by the same code training measured the calibrated metrics with.

    Raises:
        FileNotFoundError: training calibrated the model but the file is not in the .mar. Serving the raw
            softmax against a threshold chosen on calibrated scores would be silently wrong, so the worker
            refuses to start instead.

    """
    path = model_dir / CALIBRATION_FILENAME
    if path.is_file():
        return Calibration.load(path)
    expected = metadata.training.get("calibration", "none")
    if expected != "none":
        raise FileNotFoundError(f"{CALIBRATION_FILENAME} is missing from the model archive, but the model was "
                                f"trained with '{expected}' calibration; re-package the whole export folder")
    return Calibration.none()


def forward_failure(error: BaseException, items: int, device: torch.device) -> PredictionException:
    """The PredictionException TorchServe turns into the whole batch's status when the forward pass fails.

    507 (Insufficient Storage, what TorchServe itself answers for out-of-memory) when memory ran out: the
    same request may succeed later or in a smaller batch. 503 for anything else: the model is unusable.
    """
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    # A TorchScript model wraps the real error: its traceback first, "builtins.RuntimeError: <why>" last.
    reason = (lines[-1].removeprefix("builtins.") if isinstance(error, torch.jit.Error) else lines[0])[:200]
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or any(
            phrase in text.lower() for phrase in OUT_OF_MEMORY_PHRASES):
        return PredictionException(f"out of memory scoring a batch of {items} image(s) on {device}; retry, or lower "
                                   f"batchSize / the number of workers", 507)
    return PredictionException(f"the model failed on a batch of {items} image(s) on {device}: {reason}", 503)


class DeepfakeHandler(BaseHandler):
    """Scores a batch of images with the exported TorchScript detector.

    Each request of a batch is decoded on its own: one that fails gets its own 4xx status and
    JSON error while the others are scored, so one bad upload never costs its neighbours.
    """

    def __init__(self) -> None:
        super().__init__()
        self.metadata: ModelMetadata | None = None
        self.settings = HandlerSettings()
        self.calibration = Calibration.none()
        self.policy = VerdictPolicy()
        self.model_info: dict[str, Any] = {}
        self.metrics = WorkerMetrics(None, "")

    def initialize(self, context: Any) -> None:
        """Loads metadata.json, calibration.json (when the .mar has one) and the TorchScript model once per worker.

        Raises:
            ValueError: model-config.yaml's `handler:` section has an unknown or invalid setting.
            FileNotFoundError: calibration.json is missing although the model was calibrated.

        """
        self.context = context
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.settings = HandlerSettings.from_model_config(context.model_yaml_config)

        self.metadata = ModelMetadata.load(model_dir / METADATA_FILENAME)
        if self.settings.max_image_pixels is not None:
            preprocessing = replace(self.metadata.preprocessing, max_image_pixels=self.settings.max_image_pixels)
            self.metadata = replace(self.metadata, preprocessing=preprocessing)
        self.calibration = load_calibration(model_dir, self.metadata)
        threshold = self.settings.threshold if self.settings.threshold is not None else self.metadata.threshold
        self.policy = VerdictPolicy(threshold=threshold, borderline_band=self.settings.borderline_band)

        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
            cores = available_cores()
            workers = most_concurrent_workers(context.model_yaml_config, cores)
            apply_cpu_threads(threads_per_worker(cores, workers, self.settings.torch_threads))

        self.model = load_torchscript(model_dir / MODEL_FILENAME, self.device)
        self._warm_up(self.settings.warmup_runs)
        manifest_model = (context.manifest or {}).get("model", {})
        self.model_info = {
            "name": manifest_model.get("modelName", context.model_name),
            "version": manifest_model.get("modelVersion", "unknown"),
            "architecture": self.metadata.architecture,
            "calibration": self.calibration.method,
            "device": str(self.device),
        }
        self.metrics = WorkerMetrics(context.metrics, context.model_name)
        self.initialized = True
        logger.info("deepfake handler ready: %s, %d torch threads", self.model_info, torch.get_num_threads())

    def _warm_up(self, runs: int) -> None:
        """Decodes a small image and runs dummy batches before the first client waits on it.

        The first decode pays for codec set-up and TorchScript's profiling executor optimises
        during its first runs: measured 18 ms and 144 ms on a cold worker, 2 ms and 22 ms warm.
        """
        assert self.metadata is not None
        sample = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 96, 80)).save(sample, format="JPEG")
        rgb = decode_rgb(sample.getvalue(), max_image_pixels=32 * 32)  # its own limit: the served one may be lower
        dummy = model_input_from_rgb(rgb, self.metadata.preprocessing)[None].to(self.device)
        with torch.inference_mode():
            for _ in range(runs):
                self.model(dummy)

    def _request_headers(self, index: int) -> dict[str, Any]:
        """The request's headers, or {} where the context has none for this index (a Context built by hand)."""
        try:
            return dict(self.context.get_all_request_header(index) or {})
        except (AttributeError, IndexError, TypeError):
            return {}

    def read_options(self, data: list[dict[str, Any]]) -> tuple[list[RequestOptions], dict[int, ImageDecodeError]]:
        """Each request's options (see handler.request_options); a request with an invalid one gets its error."""
        options: list[RequestOptions] = []
        errors: dict[int, ImageDecodeError] = {}
        for index, row in enumerate(data):
            try:
                options.append(request_options(row, self._request_headers(index)))
            except ImageDecodeError as error:
                options.append(RequestOptions())
                errors[index] = error
            except Exception:  # noqa: BLE001 - untrusted input must never fail the batch
                logger.exception("options of item %d of the batch could not be read", index)
                options.append(RequestOptions())
                errors[index] = ImageDecodeError("invalid_option", "the request's options could not be read")
        return options, errors

    def preprocess(
        self, data: list[dict[str, Any]], refused: dict[int, ImageDecodeError] | None = None
    ) -> tuple[torch.Tensor | None, dict[int, ImageDecodeError]]:
        """Decodes every request not already refused; returns the batch of the good ones and the errors by index.

        Whatever a client sends, the outcome is a tensor or an ImageDecodeError for that item alone: an
        unexpected exception while decoding is logged with its traceback and becomes a 400 corrupt_image.
        """
        assert self.metadata is not None, "initialize() must run first"
        tensors: list[torch.Tensor] = []
        errors = dict(refused or {})
        for index, row in enumerate(data):
            if index in errors:
                continue
            try:
                tensors.append(model_input_from_bytes(image_bytes_from_row(row), self.metadata.preprocessing))
            except ImageDecodeError as error:
                errors[index] = error
            except MemoryError:
                errors[index] = ImageDecodeError("image_too_large", "the image needs more memory than is available")
            except Exception as error:  # noqa: BLE001 - untrusted input must never fail the batch
                logger.exception("item %d of the batch could not be preprocessed", index)
                errors[index] = ImageDecodeError(
                    "corrupt_image", f"the image could not be processed ({type(error).__name__})")
        batch = torch.stack(tensors).to(self.device, non_blocking=True) if tensors else None
        return batch, errors

    def inference(self, batch: torch.Tensor) -> list[ItemScores]:
        """Calibrated and raw probability of fake for each image of the batch.

        Raises:
            PredictionException: the forward pass failed (507 when out of memory, else 503), so TorchServe
                answers every request of the batch with that status and the message.

        """
        assert self.metadata is not None, "initialize() must run first"
        try:
            with torch.inference_mode():
                logits = self.model(batch).float().cpu().numpy()
        except Exception as error:  # noqa: BLE001 - every failure becomes a status TorchServe can answer with
            logger.exception("forward pass failed on a batch of %d", len(batch))
            raise forward_failure(error, len(batch), self.device) from error
        fake = self.metadata.fake_index
        calibrated = self.calibration.probabilities(logits, fake)[:, fake]
        raw = softmax(logits)[:, fake]
        return [ItemScores(float(c), float(r)) for c, r in zip(calibrated, raw, strict=True)]

    def postprocess(
        self,
        scores: dict[int, ItemScores],
        errors: dict[int, ImageDecodeError],
        timing: dict[str, float],
        options: list[RequestOptions],
    ) -> list[dict[str, Any]]:
        """One JSON object per request, in request order; sets each failed request's HTTP status."""
        responses: list[dict[str, Any]] = []
        calibrated = self.calibration.method != "none"
        for index in range(len(options)):
            if index in errors:
                status, item = error_item(errors[index])
                self.context.set_response_status(status, STATUS_PHRASES[status], index)
            else:
                item = verdict(scores[index].calibrated, self.policy, calibrated=calibrated)
                if options[index].uncalibrated:
                    item["uncalibrated"] = uncalibrated_scores(scores[index].uncalibrated)
                item["model"] = self.model_info
                item["timing_ms"] = timing
            request_id = self.context.get_request_id(index)
            if request_id is not None:
                item["request_id"] = request_id
            responses.append(item)
        return responses

    def describe_handle(self) -> dict[str, Any]:
        """What `GET /models/NAME?customized=true` (scripts/ops describe --handler-info) shows operators.

        The model's identity, the settings in force (threshold after any override, band, limits,
        threads) and the training run's headline metrics, so an operator can tell which model and
        which decision rule a worker serves without opening the .mar.
        """
        assert self.metadata is not None, "initialize() must run first"
        training = self.metadata.training
        return {
            "model": self.model_info,
            "threshold": self.policy.threshold,
            "borderline_band": list(self.policy.borderline_band),
            "max_image_pixels": self.metadata.preprocessing.max_image_pixels,
            "input_size": list(self.metadata.preprocessing.input_size),
            "torch_threads": torch.get_num_threads(),
            "cpu_cores": available_cores(),  # with torch_threads, lets ops warn when workers oversubscribe
            "training": {
                "calibration": training.get("calibration"),
                "threshold_rule": training.get("threshold_rule"),
                "data_fingerprint": training.get("data_fingerprint"),
                "test_metrics": (training.get("evaluation") or {}).get("calibrated"),
            },
        }

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        """Runs options → preprocess → inference → postprocess for one batch TorchServe assembled.

        A describe request (the management API's `customized=true`) gets describe_handle's answer instead.
        """
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        started = time.perf_counter()
        options, refused = self.read_options(data)
        batch, errors = self.preprocess(data, refused)
        preprocessed = time.perf_counter()
        preprocess_ms = round((preprocessed - started) * 1000.0, 3)
        scored_indices = [index for index in range(len(data)) if index not in errors]
        try:
            item_scores = self.inference(batch) if batch is not None else []
        except PredictionException as failure:
            # TorchServe answers every request of the batch with the failure's status: count them all.
            self._count_failed_batch(len(data), preprocess_ms, failure)
            raise
        finished = time.perf_counter()
        scores = dict(zip(scored_indices, item_scores, strict=True))
        for index, item in list(scores.items()):
            if not (math.isfinite(item.calibrated) and math.isfinite(item.uncalibrated)):  # broken weights
                errors[index] = ImageDecodeError("non_finite_score", "the model produced no finite score for this "
                                                 "image; it is logged for the operators")
                logger.error("non-finite score %r for item %d", item, index)
                del scores[index]
        inference_ms = round((finished - preprocessed) * 1000.0, 3)
        timing = {"preprocess": preprocess_ms, "inference": inference_ms, "batch_size": len(data)}
        responses = self.postprocess(scores, errors, timing, options)
        self._count(responses, preprocess_ms, inference_ms if batch is not None else None)
        return responses

    def _count_failed_batch(self, items: int, preprocess_ms: float, failure: PredictionException) -> None:
        """Metrics of a batch whose forward pass failed: every item is an error (out_of_memory or model_failed)."""
        code = "out_of_memory" if failure.error_code == 507 else "model_failed"
        self.metrics.batch(items, preprocess_ms, None)
        for index in range(items):
            self.metrics.item_error(code, self.context.get_request_id(index))

    def _count(self, responses: list[dict[str, Any]], preprocess_ms: float, inference_ms: float | None) -> None:
        """Emits the batch's metrics (never raises: see handler.worker_metrics)."""
        self.metrics.batch(len(responses), preprocess_ms, inference_ms)
        for item in responses:
            request_id = item.get("request_id")
            if "error" in item:
                self.metrics.item_error(item["error"]["code"], request_id)
            else:
                self.metrics.prediction(item["label"], request_id)
