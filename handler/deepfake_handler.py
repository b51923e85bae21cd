"""TorchServe handler: image bytes in, one JSON verdict (or one JSON error) per request out.

Each image is scored on the regions handler.scoring cuts from it: every detected face for a face
model, else the whole image. All regions of a batch go through one forward pass; an image takes the
verdict of its most-fake face. A video (MP4, MOV, WebM, AVI) is scored on frames sampled uniformly from it, each
cut like an image, and answers the mean of its top-k frame scores with a per-frame timeline (handler.video).

Packaged into the .mar together with the handler/ package, whose modules it imports; it must
not import training/. TorchServe finds the handler as the only class defined in this file, so
helper classes live in the other handler/ modules.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from handler.calibration import Calibration
from handler.cpu_threads import apply_cpu_threads, available_cores, most_concurrent_workers, threads_per_worker
from handler.explain import (
    DEFAULT_LAYER,
    ExplainConfig,
    explanation,
    explanations_unavailable,
    grad_cam,
    load_explain_model,
    refuse_video,
    region_boxes,
    upright_size,
)
from handler.faces import FaceConfig
from handler.forensics import ImageDecodeError, decode_rgb
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.mtcnn import register_weights_dir
from handler.request_body import ImageBytes, image_bytes_from_row, refuse_oversized
from handler.request_options import RequestOptions, request_options
from handler.response_status import OK, report_statuses
from handler.scoring import (
    REGION_WHOLE_IMAGE,
    ScoredRegions,
    decode_for_scoring,
    load_calibration,
    most_fake,
    no_face_found,
    regions_to_score,
    scores_from_logits,
)
from handler.settings import HandlerSettings
from handler.torchscript import ServingOptions, load_torchscript
from handler.verdict import (
    InputLimits,
    ItemScores,
    VerdictPolicy,
    error_item,
    face_fields,
    uncalibrated_scores,
    verdict,
)
from handler.video import VideoConfig, VideoRegions, read_frames, sniff_container, video_answer, video_regions
from handler.worker_metrics import HEARTBEAT_SECONDS, Heartbeat, WorkerMetrics

logger = logging.getLogger(__name__)

# Phrases in the errors torch raises when an allocation fails (CUDA, CPU allocator), for a 507 instead of a 503.
OUT_OF_MEMORY_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def forward_failure(error: BaseException, items: int, device: torch.device, inputs: int | None = None
                    ) -> PredictionException:
    """The PredictionException TorchServe turns into the whole batch's status when the forward pass fails.

    507 (Insufficient Storage, what TorchServe itself answers for out-of-memory) when memory ran out: the
    same request may succeed later or in a smaller batch. 503 for anything else: the model is unusable.

    Args:
        error: what the forward pass raised.
        items: images in the batch.
        device: where the model runs.
        inputs: rows of the forward pass (one per face, or per image without one), named when they differ
            from `items` so an operator sees why a small batch ran out of memory.

    """
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    # A TorchScript model wraps the real error: its traceback first, "builtins.RuntimeError: <why>" last.
    reason = (lines[-1].removeprefix("builtins.") if isinstance(error, torch.jit.Error) else lines[0])[:200]
    batch = f"a batch of {items} image(s)"
    if inputs is not None and inputs != items:
        batch += f" ({inputs} model inputs: one per face)"
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or any(
            phrase in text.lower() for phrase in OUT_OF_MEMORY_PHRASES):
        return PredictionException(f"out of memory scoring {batch} on {device}; retry, or lower batchSize / the "
                                   f"number of workers (or the face setting max_faces)", 507)
    return PredictionException(f"the model failed on {batch} on {device}: {reason}", 503)


def scores_by_item(regions: dict[int, ScoredRegions | VideoRegions], scores: list[ItemScores]
                   ) -> dict[int, list[ItemScores]]:
    """Splits the forward pass's scores (every region of the batch, in order) back into one list per item.

    Raises:
        ValueError: the scores do not match the regions in number (the model answered for a different batch).

    """
    grouped: dict[int, list[ItemScores]] = {}
    start = 0
    for index, item in regions.items():
        grouped[index] = scores[start:start + len(item.inputs)]
        start += len(item.inputs)
    if start != len(scores):
        raise ValueError(f"{len(scores)} scores for {start} scored regions")
    return grouped


class DeepfakeHandler(BaseHandler):
    """Scores a batch of images with the exported TorchScript detector.

    Each request of a batch is decoded on its own: one that fails gets its own 4xx status and
    JSON error while the others are scored, so one bad upload never costs its neighbours. Each
    decoded image yields one model input per detected face (or one for the whole image), and all
    of them go through a single forward pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.metadata: ModelMetadata | None = None
        self.settings = HandlerSettings()
        self.calibration = Calibration.none()
        self.policy = VerdictPolicy()
        self.limits = InputLimits()
        self.model_info: dict[str, Any] = {}
        self.metrics = WorkerMetrics(None, "")
        self.heartbeat: Heartbeat | None = None
        self.face_config: FaceConfig | None = None
        self.serving = ServingOptions()
        self.video_config = VideoConfig()
        self.explain_model: torch.jit.ScriptModule | None = None  # model.explain.pt, when the export has it
        self.explain_config = ExplainConfig()

    def initialize(self, context: Any) -> None:
        """Loads metadata.json, calibration.json (when the .mar has one) and the TorchScript model once per worker.

        Raises:
            ValueError: model-config.yaml's `handler:` section has an unknown or invalid setting.
            FileNotFoundError: calibration.json is missing although the model was calibrated.

        """
        self.context = context
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        register_weights_dir(model_dir)  # the MTCNN face detector's ONNX files, when the .mar carries them
        self.settings = HandlerSettings.from_model_config(context.model_yaml_config)

        self.metadata = ModelMetadata.load(model_dir / METADATA_FILENAME)
        if self.settings.max_image_pixels is not None:
            preprocessing = replace(self.metadata.preprocessing, max_image_pixels=self.settings.max_image_pixels)
            self.metadata = replace(self.metadata, preprocessing=preprocessing)
        self.calibration = load_calibration(model_dir, self.metadata)
        self.face_config = self.settings.face_config(self.metadata.faces)
        if self.metadata.faces is not None and self.face_config is None:
            logger.warning("this model was trained on face crops but model-config.yaml sets faces: off; whole "
                           "images are scored, which it was not trained on")
        self.video_config = self.settings.video_config(self.metadata.preprocessing.max_image_pixels)
        self.limits = InputLimits(self.metadata.preprocessing.max_image_pixels, self.settings.max_upload_bytes,
                                  self.video_config.max_bytes, self.video_config.max_seconds,
                                  self.video_config.max_frames, self.settings.min_image_side,
                                  self.settings.max_aspect_ratio)
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

        self.serving = self.settings.serving_options()
        self.model = self.serving.prepare(load_torchscript(model_dir / MODEL_FILENAME, self.device))
        self.explain_model = load_explain_model(model_dir, self.device)  # None: explanations answer 501
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
        # Beats only once the model is loaded: a worker stuck in start-up counts as no live worker. TorchServe 0.12
        # has no unload hook; the daemon thread ends with the worker process.
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.heartbeat = Heartbeat(self.metrics, HEARTBEAT_SECONDS).start()
        self.initialized = True
        logger.info("deepfake handler ready: %s, %d torch threads", self.model_info, torch.get_num_threads())

    def _warm_up(self, runs: int) -> None:
        """Decodes a small image, cuts its regions (face search included) and runs dummy batches before clients come.

        The first decode pays for codec set-up, the first detection loads the face cascade (~30 ms), and
        TorchScript's profiling executor optimises during its first runs: measured 18 ms and 144 ms on a
        cold worker, 2 ms and 22 ms warm.
        """
        assert self.metadata is not None
        sample = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 96, 80)).save(sample, format="JPEG")
        rgb = decode_rgb(sample.getvalue(), max_image_pixels=32 * 32)  # its own limit: the served one may be lower
        regions = regions_to_score(rgb, self.metadata.preprocessing, self.face_config)
        dummy = self.serving.batch(list(regions.inputs), self.device)
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

    def video_regions(self, data: bytes, container: str) -> VideoRegions:
        """A video's sampled frames cut into model inputs (handler.video); any failure is the video's 4xx.

        Raises:
            ImageDecodeError: over a limit, or unreadable (an unexpected failure is logged and becomes
                unreadable_video, so a hostile file never fails the batch).

        """
        assert self.metadata is not None, "initialize() must run first"
        try:
            frames = read_frames(data, container, self.video_config)
            return video_regions(frames, self.metadata.preprocessing, self.face_config, self.settings.no_face)
        except ImageDecodeError:
            raise
        except MemoryError as error:
            raise ImageDecodeError("video_frame_too_large", "the video's frames need more memory than is "
                                   "available") from error
        except Exception as error:  # noqa: BLE001 - untrusted input must never fail the batch
            logger.exception("a %s video could not be read", container)
            raise ImageDecodeError("unreadable_video", f"the video could not be read ({type(error).__name__})"
                                   ) from error

    def regions(
        self, data: list[dict[str, Any]], refused: dict[int, ImageDecodeError] | None = None
    ) -> tuple[dict[int, ScoredRegions | VideoRegions], dict[int, ImageDecodeError]]:
        """Decodes every request not already refused (once) and cuts the regions to score from it, by index.

        Whatever a client sends, the outcome is its regions or an ImageDecodeError for that item alone: an
        unexpected exception while decoding is logged with its traceback and becomes a 400 corrupt_image. An
        image file over max_upload_bytes is refused before decoding; every error names the request field the
        image came from (the decoders see only bytes). A video (MP4, MOV, WebM or AVI by its first bytes) yields
        its sampled frames' regions instead (video_regions), under the video limits. An image no model can judge
        gets 422: degenerate_image for a shape outside min_image_side / max_aspect_ratio (measured on the upright
        image as stored, whatever size it was decoded at), no_face_found when a face model finds no face and
        `no_face` refuses.
        """
        assert self.metadata is not None, "initialize() must run first"
        preprocessing = self.metadata.preprocessing
        geometry = self.settings.geometry_limits()
        regions: dict[int, ScoredRegions | VideoRegions] = {}
        errors = dict(refused or {})
        for index, row in enumerate(data):
            if index in errors:
                continue
            image: ImageBytes | None = None
            try:
                image = image_bytes_from_row(row, self._request_headers(index))
                container = sniff_container(image.data)
                if container is not None:
                    regions[index] = self.video_regions(image.data, container)
                    continue
                image = refuse_oversized(image, self.settings.max_upload_bytes)
                rgb = decode_for_scoring(image.data, preprocessing, self.face_config)
                degenerate = geometry.refusal(upright_size(image.data))  # ~20 us: the header, read again
                if degenerate is not None:
                    raise degenerate
                scored = regions_to_score(rgb, preprocessing, self.face_config, self.settings.no_face)
                if not scored.inputs:
                    raise no_face_found()
                regions[index] = scored
            except ImageDecodeError as error:
                errors[index] = error.located(image.field if image else None)
            except MemoryError:
                errors[index] = ImageDecodeError("image_too_large", "the image needs more memory than is available",
                                                 image.field if image else None)
            except Exception as error:  # noqa: BLE001 - untrusted input must never fail the batch
                logger.exception("item %d of the batch could not be preprocessed", index)
                errors[index] = ImageDecodeError(
                    "corrupt_image", f"the image could not be processed ({type(error).__name__})",
                    image.field if image else None)
        return regions, errors

    def model_batch(self, regions: dict[int, ScoredRegions | VideoRegions]) -> torch.Tensor | None:
        """Every region of the batch stacked in item order, on the model's device; None when there is none."""
        inputs = [tensor for item in regions.values() for tensor in item.inputs]
        return self.serving.batch(inputs, self.device) if inputs else None

    def preprocess(
        self, data: list[dict[str, Any]], refused: dict[int, ImageDecodeError] | None = None
    ) -> tuple[torch.Tensor | None, dict[int, ImageDecodeError]]:
        """The model batch of every request not refused (one row per region) and the errors by index."""
        regions, errors = self.regions(data, refused)
        return self.model_batch(regions), errors

    def inference(self, batch: torch.Tensor, images: int | None = None) -> list[ItemScores]:
        """Calibrated and raw probability of fake for each row of the batch (an image, a face crop or a frame's).

        The rows go through the model in chunks of at most `max_batch_inputs` (one chunk for any image batch the
        shipped settings allow), so a long video's frames never need one giant activation batch.

        Args:
            batch: model inputs [N, 4, H, W].
            images: how many images the rows were cut from, for the failure message (default: N).

        Raises:
            PredictionException: the forward pass failed (507 when out of memory, else 503), so TorchServe
                answers every request of the batch with that status and the message.

        """
        assert self.metadata is not None, "initialize() must run first"
        try:
            with torch.inference_mode():
                chunks = [self.model(chunk) for chunk in batch.split(self.settings.max_batch_inputs)]
                logits = (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).float().cpu().numpy()
        except Exception as error:  # noqa: BLE001 - every failure becomes a status TorchServe can answer with
            logger.exception("forward pass failed on a batch of %d model inputs", len(batch))
            items = len(batch) if images is None else images
            raise forward_failure(error, items, self.device, inputs=len(batch)) from error
        return scores_from_logits(logits, self.calibration, self.metadata.fake_index)

    def scored_item(self, region: ScoredRegions, scores: list[ItemScores], uncalibrated: bool) -> dict[str, Any]:
        """The response of one scored image: the verdict of its most-fake region, and its faces.

        The image-level fields (label, probability_fake, confidence, probabilities, threshold, calibrated,
        borderline, uncalibrated) are the deciding face's, so an image is as fake as its most-fake face.
        """
        decided_by = most_fake(scores)
        decider = scores[decided_by]
        item = verdict(decider.calibrated, self.policy, calibrated=self.calibration.method != "none")
        if uncalibrated:
            item["uncalibrated"] = uncalibrated_scores(decider.uncalibrated)
        item["scored"] = region.scored
        boxes = None if region.scored == REGION_WHOLE_IMAGE else [box.to_list() for box in region.boxes]
        item.update(face_fields(boxes, scores, decided_by, self.policy, uncalibrated))
        return item

    def postprocess(
        self,
        scores: dict[int, list[ItemScores]],
        regions: dict[int, ScoredRegions | VideoRegions],
        errors: dict[int, ImageDecodeError],
        timing: dict[str, float],
        options: list[RequestOptions],
    ) -> list[dict[str, Any]]:
        """One JSON object per item, in order; sets the HTTP status of each request (handler.response_status)."""
        responses: list[dict[str, Any]] = []
        statuses: list[int] = []
        for index in range(len(options)):
            if index in errors:
                status, item = error_item(errors[index], self.limits)
            else:
                status = OK
                region = regions[index]
                if isinstance(region, VideoRegions):  # the video's top-k verdict, facts and timeline
                    item = video_answer(region, scores[index], self.policy, self.video_config.top_fraction,
                                        self.calibration.method != "none", options[index].uncalibrated)
                else:
                    item = self.scored_item(region, scores[index], options[index].uncalibrated)
                item["model"] = self.model_info
                item["timing_ms"] = timing
            statuses.append(status)
            request_id = self.context.get_request_id(index)
            if request_id is not None:
                item["request_id"] = request_id
            responses.append(item)
        report_statuses(self.context, statuses)
        return responses

    def explain_requests(self, data: list[dict[str, Any]], refused: dict[int, ImageDecodeError]) -> list[int]:
        """Indices of the batch's explanation requests; those this worker cannot explain get their error in `refused`.

        TorchServe sends /explanations/{model} to the same handle() as predictions, with the request header
        `explain: True`, and may batch both kinds together, so each item is asked on its own (TorchServe's
        BaseHandler looks at the first item only). A model exported without model.explain.pt answers 501
        explanations_unavailable; a video answers 400 explanation_needs_image.
        """
        indices = [index for index in range(len(data))
                   if str(self._request_headers(index).get("explain", "")).lower() == "true"]
        for index in indices:
            if index in refused:
                continue
            if self.explain_model is None:
                refused[index] = explanations_unavailable()
                continue
            try:
                video = refuse_video(image_bytes_from_row(data[index], self._request_headers(index)))
            except ImageDecodeError:
                continue  # regions() reports what is wrong with the request
            if video is not None:
                refused[index] = video
        return indices

    def add_explanations(self, responses: list[dict[str, Any]], data: list[dict[str, Any]],
                         regions: dict[int, ScoredRegions], scores: dict[int, list[ItemScores]],
                         indices: list[int]) -> None:
        """Adds `explanation` (handler.explain) to each scored explanation request's answer, in one Grad-CAM pass.

        The verdict fields stay the served model's, so an explanation's probability is the prediction's.

        Raises:
            PredictionException: Grad-CAM failed (507 when out of memory, else 503), as a failed forward pass does.

        """
        explained = [index for index in indices if index in scores]  # refused and failed items have no scores
        if not explained:
            return
        assert self.metadata is not None and self.explain_model is not None, "refused in explain_requests otherwise"
        started = time.perf_counter()
        inputs = [tensor for index in explained for tensor in regions[index].inputs]
        try:
            cams = grad_cam(self.explain_model, inputs, self.metadata.fake_index, self.device,
                            self.explain_config.chunk_size)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status TorchServe can answer with
            logger.exception("Grad-CAM failed on %d model inputs", len(inputs))
            raise forward_failure(error, len(explained), self.device, inputs=len(inputs)) from error
        layer = (self.metadata.explain or {}).get("layer") or DEFAULT_LAYER
        margin = self.face_config.margin if self.face_config is not None else 0.0
        start = 0
        for index in explained:
            count = len(regions[index].inputs)
            size = upright_size(image_bytes_from_row(data[index], self._request_headers(index)).data)
            boxes = region_boxes(regions[index], size, margin)
            responses[index]["explanation"] = explanation(cams[start:start + count], boxes, scores[index], size,
                                                          layer, self.explain_config)
            start += count
        explain_ms = round((time.perf_counter() - started) * 1000.0, 3)
        for index in explained:
            responses[index]["timing_ms"] = {**responses[index]["timing_ms"], "explain": explain_ms}

    def describe_handle(self) -> dict[str, Any]:
        """What `GET /models/NAME?customized=true` (scripts/ops describe --handler-info) shows operators.

        The model's identity, the settings in force (threshold after any override, band, limits,
        threads) and the training run's headline metrics, so an operator can tell which model and
        which decision rule a worker serves without opening the .mar. `faces` says whether images are
        scored on their faces (mode from model-config.yaml, whether the model was trained on faces, what an image
        without a face gets, and the face settings in force, None when whole images are scored).
        """
        assert self.metadata is not None, "initialize() must run first"
        training = self.metadata.training
        return {
            "model": self.model_info,
            "threshold": self.policy.threshold,
            "borderline_band": list(self.policy.borderline_band),
            "max_image_pixels": self.metadata.preprocessing.max_image_pixels,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "min_image_side": self.settings.min_image_side,
            "max_aspect_ratio": self.settings.max_aspect_ratio,
            "input_size": list(self.metadata.preprocessing.input_size),
            "torch_threads": torch.get_num_threads(),
            "optimization": self.serving.optimization,
            "precision": self.serving.precision,
            "cpu_cores": available_cores(),  # with torch_threads, lets ops warn when workers oversubscribe
            "explanations": {
                "available": self.explain_model is not None,
                "method": "grad-cam" if self.explain_model is not None else None,
                "export": self.metadata.explain,  # metadata.json's word, with the reason when there is none
            },
            "video": {
                "frames": self.video_config.frames,
                "aggregation": {"rule": "top_k_mean", "top_fraction": self.video_config.top_fraction},
                "max_seconds": self.video_config.max_seconds,
                "max_frames": self.video_config.max_frames,
                "max_bytes": self.video_config.max_bytes,
                "max_batch_inputs": self.settings.max_batch_inputs,
            },
            "faces": {
                "mode": self.settings.faces,
                "face_model": self.metadata.faces is not None,
                "no_face": self.settings.no_face,
                "config": None if self.face_config is None else self.face_config.to_dict(),
            },
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
        if data is None:  # the kserve envelope (config/kserve.properties) found no "instances" in the document
            raise PredictionException('a KServe v1 request needs {"instances": [{"data": "<base64 image>"}, ...]}', 400)
        if self._is_describe():
            return [self.describe_handle()]
        started = time.perf_counter()
        options, refused = self.read_options(data)
        explaining = self.explain_requests(data, refused)
        regions, errors = self.regions(data, refused)
        batch = self.model_batch(regions)
        preprocessed = time.perf_counter()
        preprocess_ms = round((preprocessed - started) * 1000.0, 3)
        try:
            region_scores = self.inference(batch, images=len(regions)) if batch is not None else []
        except PredictionException as failure:
            # TorchServe answers every request of the batch with the failure's status: count them all.
            self._count_failed_batch(len(data), preprocess_ms, failure)
            raise
        finished = time.perf_counter()
        scores = scores_by_item(regions, region_scores)
        for index, item_scores in list(scores.items()):
            if not all(math.isfinite(s.calibrated) and math.isfinite(s.uncalibrated) for s in item_scores):
                errors[index] = ImageDecodeError("non_finite_score", "the model produced no finite score for this "
                                                 "image; it is logged for the operators")  # broken weights
                logger.error("non-finite score %r for item %d", item_scores, index)
                del scores[index]
        inference_ms = round((finished - preprocessed) * 1000.0, 3)
        timing = {"preprocess": preprocess_ms, "inference": inference_ms, "batch_size": len(data),
                  "model_inputs": 0 if batch is None else len(batch)}
        responses = self.postprocess(scores, regions, errors, timing, options)
        if explaining:
            try:
                self.add_explanations(responses, data, regions, scores, explaining)
            except PredictionException as failure:
                self._count_failed_batch(len(data), preprocess_ms, failure)
                raise
        self._count(responses, preprocess_ms, inference_ms if batch is not None else None)
        return responses

    def _count_failed_batch(self, items: int, preprocess_ms: float, failure: PredictionException) -> None:
        """Metrics of a batch whose forward pass failed: every item is an error (out_of_memory or model_failed)."""
        code = "out_of_memory" if failure.error_code == 507 else "model_failed"
        self.metrics.batch(items, preprocess_ms, None)
        self.metrics.outcomes(Counter(), Counter(), 0, Counter({code: items}))

    def _count(self, responses: list[dict[str, Any]], preprocess_ms: float, inference_ms: float | None) -> None:
        """Emits the batch's metrics, aggregated per batch (never raises: see handler.worker_metrics)."""
        self.metrics.batch(len(responses), preprocess_ms, inference_ms)
        scored = [item for item in responses if "error" not in item]
        self.metrics.outcomes(
            labels=Counter(item["label"] for item in scored),
            scored=Counter(item["scored"] for item in scored),
            faces=sum(len(item.get("faces", ())) for item in scored),
            errors=Counter(item["error"]["code"] for item in responses if "error" in item),
        )
