"""TorchServe handler: image bytes in, one JSON verdict (or one JSON error) per request out.

Packaged into the .mar together with the handler/ package, whose modules it imports; it must
not import training/.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from handler.calibration import CALIBRATION_FILENAME, Calibration
from handler.forensics import ImageDecodeError, decode_rgb, model_input_from_bytes, model_input_from_rgb
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.request_body import image_bytes_from_row
from handler.torchscript import load_torchscript
from handler.verdict import STATUS_PHRASES, VerdictPolicy, error_item, verdict

logger = logging.getLogger(__name__)


def _cpu_threads_per_worker(workers: int) -> int:
    """Threads per worker so that workers × threads ≈ the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


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


class DeepfakeHandler(BaseHandler):
    """Scores a batch of images with the exported TorchScript detector.

    Each request of a batch is decoded on its own: one that fails gets its own 4xx status and
    JSON error while the others are scored, so one bad upload never costs its neighbours.
    """

    def __init__(self) -> None:
        super().__init__()
        self.metadata: ModelMetadata | None = None
        self.calibration = Calibration.none()
        self.policy = VerdictPolicy()
        self.model_info: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        """Loads metadata.json, calibration.json (when the .mar has one) and the TorchScript model once per worker."""
        self.context = context
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        settings = (context.model_yaml_config or {}).get("handler", {}) or {}

        self.metadata = ModelMetadata.load(model_dir / METADATA_FILENAME)
        if "max_image_pixels" in settings:
            preprocessing = replace(self.metadata.preprocessing, max_image_pixels=int(settings["max_image_pixels"]))
            self.metadata = replace(self.metadata, preprocessing=preprocessing)
        self.calibration = load_calibration(model_dir, self.metadata)
        self.policy = VerdictPolicy(
            threshold=float(settings.get("threshold", self.metadata.threshold)),
            borderline_band=tuple(settings.get("borderline_band", VerdictPolicy.borderline_band)),
        )

        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
            workers = int((context.model_yaml_config or {}).get("minWorkers", 1))
            threads = int(settings.get("torch_threads", 0)) or _cpu_threads_per_worker(workers)
            torch.set_num_threads(threads)

        self.model = load_torchscript(model_dir / MODEL_FILENAME, self.device)
        self._warm_up(int(settings.get("warmup_runs", 2)))
        manifest_model = (context.manifest or {}).get("model", {})
        self.model_info = {
            "name": manifest_model.get("modelName", context.model_name),
            "version": manifest_model.get("modelVersion", "unknown"),
            "architecture": self.metadata.architecture,
            "calibration": self.calibration.method,
            "device": str(self.device),
        }
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

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[torch.Tensor | None, dict[int, ImageDecodeError]]:
        """Decodes every request; returns the batch of the good ones and the errors by request index."""
        assert self.metadata is not None, "initialize() must run first"
        tensors: list[torch.Tensor] = []
        errors: dict[int, ImageDecodeError] = {}
        for index, row in enumerate(data):
            try:
                tensors.append(model_input_from_bytes(image_bytes_from_row(row), self.metadata.preprocessing))
            except ImageDecodeError as error:
                errors[index] = error
        batch = torch.stack(tensors).to(self.device, non_blocking=True) if tensors else None
        return batch, errors

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated probability of fake for each image of the batch, on the CPU."""
        assert self.metadata is not None, "initialize() must run first"
        with torch.inference_mode():
            logits = self.model(batch).float().cpu().numpy()
        fake = self.metadata.fake_index
        return torch.from_numpy(self.calibration.probabilities(logits, fake)[:, fake])

    def postprocess(
        self, probabilities: list[float], errors: dict[int, ImageDecodeError], timing: dict[str, float]
    ) -> list[dict[str, Any]]:
        """One JSON object per request, in request order; sets each failed request's HTTP status."""
        responses: list[dict[str, Any]] = []
        scored = iter(probabilities)
        for index in range(len(probabilities) + len(errors)):
            if index in errors:
                status, body = error_item(errors[index])
                self.context.set_response_status(status, STATUS_PHRASES[status], index)
                responses.append(body)
            else:
                item = verdict(next(scored), self.policy, calibrated=self.calibration.method != "none")
                item["model"] = self.model_info
                item["timing_ms"] = timing
                responses.append(item)
        return responses

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        """Runs preprocess → inference → postprocess for one batch TorchServe assembled."""
        self.context = context
        started = time.perf_counter()
        batch, errors = self.preprocess(data)
        preprocessed = time.perf_counter()
        probabilities = self.inference(batch).tolist() if batch is not None else []
        finished = time.perf_counter()
        timing = {
            "preprocess": round((preprocessed - started) * 1000.0, 3),
            "inference": round((finished - preprocessed) * 1000.0, 3),
            "batch_size": len(data),
        }
        return self.postprocess(probabilities, errors, timing)
