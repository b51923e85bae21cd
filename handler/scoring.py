"""Scoring an image with an exported detector: which regions are scored, and how their scores become one.

The handler and the evaluation command (training.evaluate) both score through here, so a figure in
an evaluation report is what the service would have answered for the same file.

With a face model (metadata.json has `faces`) an image is scored once per detected face and the
image takes the score of its most-fake face: one manipulated face makes a manipulated image. An
image with no detectable face is scored whole, and the result says so, because a face model
judging a whole photo is outside what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from handler.calibration import CALIBRATION_FILENAME, Calibration, softmax
from handler.faces import FaceBox, FaceConfig, crop_face, detect_faces
from handler.forensics import PreprocessConfig, decode_for_model, decode_rgb, model_input_from_rgb
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.torchscript import ServingOptions, load_torchscript
from handler.verdict import ItemScores

# What was scored for an image: its faces, the whole image because no face was found, or the whole
# image because face detection is off (a whole-image model, or turned off in model-config.yaml).
REGION_FACES = "faces"
REGION_NO_FACE = "whole_image_no_face"
REGION_WHOLE_IMAGE = "whole_image"


@dataclass(frozen=True)
class ScoredRegions:
    """The model inputs cut from one image, and what they are.

    Attributes:
        scored: REGION_FACES, REGION_NO_FACE or REGION_WHOLE_IMAGE.
        boxes: one face box per input when `scored` is REGION_FACES, else empty.
        inputs: model inputs [4, H, W], one per face (or one for the whole image).

    """

    scored: str
    boxes: tuple[FaceBox, ...]
    inputs: tuple[torch.Tensor, ...]


def decode_for_scoring(data: bytes, preprocess: PreprocessConfig, faces: FaceConfig | None) -> np.ndarray:
    """Decodes an upload for regions_to_score.

    Full size when faces are looked for, so a face keeps every pixel; else as the model input wants it
    (reduced JPEG decoding when the model was trained that way).
    """
    if faces is None:
        return decode_for_model(data, preprocess)
    return decode_rgb(data, preprocess.max_image_pixels)


def regions_to_score(rgb: np.ndarray, preprocess: PreprocessConfig, faces: FaceConfig | None) -> ScoredRegions:
    """The inputs for one decoded image: one per detected face when `faces` is set, else the whole image."""
    if faces is None:
        return ScoredRegions(REGION_WHOLE_IMAGE, (), (model_input_from_rgb(rgb, preprocess),))
    boxes = tuple(detect_faces(rgb, faces))
    if not boxes:
        return ScoredRegions(REGION_NO_FACE, (), (model_input_from_rgb(rgb, preprocess),))
    inputs = tuple(model_input_from_rgb(crop_face(rgb, box, faces.margin), preprocess) for box in boxes)
    return ScoredRegions(REGION_FACES, boxes, inputs)


def scores_from_logits(logits: np.ndarray, calibration: Calibration, fake_index: int) -> list[ItemScores]:
    """Calibrated and raw probability of fake for each row of logits [N, 2]."""
    calibrated = calibration.probabilities(logits, fake_index)[:, fake_index]
    raw = softmax(logits)[:, fake_index]
    return [ItemScores(float(c), float(r)) for c, r in zip(calibrated, raw, strict=True)]


def most_fake(scores: list[ItemScores]) -> int:
    """Index of the region that decides the image: the highest calibrated probability of fake."""
    if not scores:
        raise ValueError("an image needs at least one scored region")
    return max(range(len(scores)), key=lambda index: scores[index].calibrated)


def load_calibration(model_dir: Path, metadata: ModelMetadata) -> Calibration:
    """The model's calibration.json, applied by the same code training measured the calibrated metrics with.

    Raises:
        FileNotFoundError: training calibrated the model but the file is missing. Serving the raw softmax
            against a threshold chosen on calibrated scores would be silently wrong, so loading fails instead.

    """
    path = model_dir / CALIBRATION_FILENAME
    if path.is_file():
        return Calibration.load(path)
    expected = metadata.training.get("calibration", "none")
    if expected != "none":
        raise FileNotFoundError(f"{CALIBRATION_FILENAME} is missing from {model_dir}, but the model was "
                                f"trained with '{expected}' calibration; re-package the whole export folder")
    return Calibration.none()


@dataclass
class ExportedDetector:
    """An export folder (or unpacked .mar) loaded for scoring outside TorchServe, e.g. by training.evaluate.

    The model is prepared with the same ServingOptions as a worker's (frozen, channels_last by default), so
    scores match what the service answers for the same inputs.
    """

    model: torch.jit.ScriptModule
    metadata: ModelMetadata
    calibration: Calibration
    device: torch.device
    serving: ServingOptions = field(default_factory=ServingOptions)

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu",
             serving: ServingOptions | None = None) -> ExportedDetector:
        """Reads model.torchscript.pt, metadata.json and calibration.json from `folder`."""
        folder = Path(folder)
        device = torch.device(device)
        serving = serving or ServingOptions()
        metadata = ModelMetadata.load(folder / METADATA_FILENAME)
        calibration = load_calibration(folder, metadata)
        model = serving.prepare(load_torchscript(folder / MODEL_FILENAME, device))
        return cls(model, metadata, calibration, device, serving)

    def score(self, inputs: torch.Tensor) -> list[ItemScores]:
        """Scores a batch [N, 4, H, W] of model inputs."""
        batch = inputs.to(self.device, dtype=self.serving.dtype, memory_format=self.serving.memory_format)
        with torch.inference_mode():
            logits = self.model(batch).float().cpu().numpy()
        return scores_from_logits(logits, self.calibration, self.metadata.fake_index)
