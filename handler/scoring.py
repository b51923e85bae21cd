"""Scoring an image with an exported detector: which regions are scored, and how their scores become one.

The handler and the evaluation command (training.evaluate) both score through here, so a figure in
an evaluation report is what the service would have answered for the same file.

With a face model (metadata.json has `faces`) an image is scored once per detected face and the
image takes the score of its most-fake face: one manipulated face makes a manipulated image. An
image with no detectable face is, by the handler setting `no_face`, refused (the service's default: a face
model judging a whole photo is outside what it was trained on, so its verdict would look confident and mean
little) or scored whole with a result that says so (what evaluation does, to report how often it happens).
Images whose geometry no photo of a face has (a thin strip, a thumbnail) are refused for every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from handler.calibration import CALIBRATION_FILENAME, Calibration, softmax
from handler.faces import FaceBox, FaceConfig, crop_face, detect_faces
from handler.forensics import ImageDecodeError, PreprocessConfig, decode_for_model, decode_rgb, model_input_from_rgb
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.torchscript import ServingOptions, load_torchscript
from handler.verdict import ItemScores

# What was scored for an image: its faces, the whole image because no face was found, or the whole
# image because face detection is off (a whole-image model, or turned off in model-config.yaml).
REGION_FACES = "faces"
REGION_NO_FACE = "whole_image_no_face"
REGION_WHOLE_IMAGE = "whole_image"
# Nothing: a face model found no face and `no_face: refuse` keeps it from judging the whole image. An image is then
# answered 422 no_face_found; a video frame stays in the timeline without a score.
REGION_NONE = "no_face"

# `no_face:` values: what a face model does with an image (or video frame) in which it finds no face.
NO_FACE_REFUSE = "refuse"
NO_FACE_WHOLE_IMAGE = "whole_image"
NO_FACE_MODES = (NO_FACE_REFUSE, NO_FACE_WHOLE_IMAGE)
NO_FACE_FOUND = "no_face_found"
DEGENERATE_IMAGE = "degenerate_image"
# Said when a face model refuses an image: why there is no verdict, and what to send instead.
NO_FACE_ADVICE = ("this model judges faces only, so it gives no verdict on the whole image. Send a photo in which a "
                  "face is clearly visible and turned to the camera, or crop the image to the face")


@dataclass(frozen=True)
class GeometryLimits:
    """Image shapes no photo a detector can judge has (handler settings min_image_side and max_aspect_ratio).

    The model resizes every region to its square-ish input: a 2000x20 banner or a 16x16 icon comes out as a
    smear of stretched or invented pixels, and the score of such input is confident noise. Such images are
    refused (422 degenerate_image) for every model, face or whole-image.

    Attributes:
        min_side: the shorter side must be at least this many pixels.
        max_aspect_ratio: the long side over the short side must be at most this.

    """

    min_side: int = 32
    max_aspect_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.min_side < 1 or not self.max_aspect_ratio >= 1.0:
            raise ValueError(f"invalid {self}: min_side must be at least 1 and max_aspect_ratio at least 1")

    def refusal(self, size: tuple[int, int]) -> ImageDecodeError | None:
        """422 degenerate_image naming the measured (width, height) and the limit it breaks; None when it fits."""
        width, height = size
        short, long = min(width, height), max(width, height)
        problems = []
        if short < self.min_side:
            problems.append(f"its shorter side ({short} px) is under the minimum of {self.min_side} px")
        if short > 0 and long / short > self.max_aspect_ratio:
            problems.append(f"its aspect ratio ({long / short:.3g}:1) is over the maximum of "
                            f"{self.max_aspect_ratio:g}:1")
        if not problems:
            return None
        return ImageDecodeError(DEGENERATE_IMAGE, f"the image is {width}x{height} pixels: {' and '.join(problems)}; "
                                f"no photo a detector can judge has this shape")


def no_face_found(frames: int | None = None) -> ImageDecodeError:
    """422 no_face_found for an image (or, given `frames`, a video none of whose sampled frames shows a face)."""
    where = "in the image" if frames is None else f"in any of the video's {frames} sampled frames"
    return ImageDecodeError(NO_FACE_FOUND, f"no face was found {where}; {NO_FACE_ADVICE}")


@dataclass(frozen=True)
class ScoredRegions:
    """The model inputs cut from one image, and what they are.

    Attributes:
        scored: REGION_FACES, REGION_NO_FACE, REGION_WHOLE_IMAGE or REGION_NONE.
        boxes: one face box per input when `scored` is REGION_FACES, else empty.
        inputs: model inputs [4, H, W], one per face (or one for the whole image; none for REGION_NONE).

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


def regions_to_score(rgb: np.ndarray, preprocess: PreprocessConfig, faces: FaceConfig | None,
                     no_face: str = NO_FACE_WHOLE_IMAGE) -> ScoredRegions:
    """The inputs for one decoded image: one per detected face when `faces` is set, else the whole image.

    Args:
        rgb: the decoded, upright image.
        preprocess: how a region becomes a model input.
        faces: how faces are found and cut; None scores the whole image.
        no_face: without a face, NO_FACE_WHOLE_IMAGE scores the whole image (REGION_NO_FACE) and NO_FACE_REFUSE
            gives no input (REGION_NONE). Evaluation keeps the default to count such images; the handler
            follows its `no_face` setting.

    """
    if no_face not in NO_FACE_MODES:
        raise ValueError(f"no_face must be one of {list(NO_FACE_MODES)}, got {no_face!r}")
    if faces is None:
        return ScoredRegions(REGION_WHOLE_IMAGE, (), (model_input_from_rgb(rgb, preprocess),))
    boxes = tuple(detect_faces(rgb, faces))
    if not boxes:
        if no_face == NO_FACE_REFUSE:
            return ScoredRegions(REGION_NONE, (), ())
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
