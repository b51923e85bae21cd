"""Grad-CAM on the errors of an evaluation: where the model looks when it calls a real photo fake.

training.evaluate says how often a real photo is called fake; this command shows where the evidence for "fake"
sits on those photos, next to the same maps on correct answers, in numbers every later lever can be judged by.
It reads an evaluation's scores.csv, picks the false positives of one condition (real, not a pseudo-fake, scored at
or above the threshold; highest first) and, as a contrast, the most confidently correct reals and the most
confidently caught fakes. Each image is rebuilt as the evaluation scored it (decode, SBI twin, perturbation and
regions through training.evaluate's and handler.scoring's own functions), scored again by the served model to pick
the deciding region (and to prove the rebuild: the probability must match scores.csv), and explained with the
handler's Grad-CAM (handler.explain) on the export's model.explain.pt.

Region shares are measured in the frame of the model input (the face crop, or the whole image): the mass of each
group's mean heat map inside the face ellipse the pseudo-fakes are blended through (training.sbi: centred in the
crop's inner face box, semi-axes the mean of the recipe's mask sizes), in a ring around its edge (the blending
seam), outside it (background, hair, clothes), and in the top and bottom halves.

Usage:
    python -m training.error_cams --model RUN/export --scores EVAL/scores.csv --output-dir EVAL/cams

Outputs in --output-dir: false_positives.png (each image as the model saw it, its heat-map overlay, the probability
under it), contrast.png (correct reals, then caught fakes) and error_cams.json (selection, shares, per image).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from handler.explain import grad_cam, heatmap_rgba, load_explain_model, paste_heat
from handler.faces import FaceBox, crop_face
from handler.forensics import PreprocessConfig, decode_for_model, decode_rgb, resize_rgb
from handler.metadata import EXPLAIN_FILENAME, METADATA_FILENAME, ModelMetadata
from handler.scoring import REGION_FACES, ExportedDetector, ScoredRegions, most_fake
from training.dataset import Sample
from training.evaluate import (
    CLEAN,
    EVALUATION_JSON,
    FacePlan,
    regions_for,
    resolve_face_plan,
    sbi_config_of,
    sbi_face_box,
)
from training.jsonsafe import write_json
from training.perturbations import PERTURBATIONS
from training.prepare import read_face_config
from training.pseudo_fakes import PseudoFakeMaker
from training.sbi import SbiConfig, inner_face_box

ERROR_CAMS_JSON = "error_cams.json"
FALSE_POSITIVES_PNG = "false_positives.png"
CONTRAST_PNG = "contrast.png"
FALSE_POSITIVES, CORRECT_REALS, CAUGHT_FAKES = "false_positives", "correct_reals", "caught_fakes"
GROUPS = {
    FALSE_POSITIVES: "false positives: real photos scored at or above the threshold, highest first",
    CORRECT_REALS: "correct reals: real photos scored lowest",
    CAUGHT_FAKES: "caught fakes: fakes (SBI pseudo-fakes included) scored highest",
}
# --faces: the user's words → training.evaluate's --faces words; None (the default) repeats the evaluation's mode.
FACE_CHOICES = ("precropped", "on", "off")
EVALUATED_MODES = {"precropped": "precropped", "detect": "on", "whole_image": "off"}  # evaluation.json faces.mode
REGIONS = ("inner_face", "face_border", "outside")
HALVES = ("top_half", "bottom_half")
REPRODUCTION_TOLERANCE = 1e-3  # |recomputed - scores.csv| above this means the input was not rebuilt as evaluated


class ErrorCamError(ValueError):
    """The command cannot run as asked; the message names the flag, file or column at fault and the fix."""


@dataclass(frozen=True)
class RegionConfig:
    """Where the face regions lie, in units of the face ellipse (elliptic radius 1 = the mean SBI mask's edge).

    Attributes:
        inner: radius below which a pixel is inner face: well inside every pseudo-fake's paste.
        outer: radius beyond which a pixel is outside the face; between inner and outer lies the blending seam,
            which the SBI mask jitter (size ±14 %, elastic ±4 %, blur up to 8 % of the face) spreads out.

    """

    inner: float = 0.75
    outer: float = 1.25

    def __post_init__(self) -> None:
        if not 0.0 < self.inner < self.outer:
            raise ValueError(f"invalid RegionConfig {self}: need 0 < inner < outer")


@dataclass(frozen=True)
class MontageConfig:
    """How a montage is drawn: pairs of tiles (image as the model saw it | heat overlay) with a caption under each.

    Attributes:
        tile: side of each square tile in pixels.
        columns: image/overlay pairs per row.
        caption: caption band height in pixels (two lines: probability, name).
        header: title band height in pixels.

    """

    tile: int = 160
    columns: int = 4
    caption: int = 36
    header: int = 28

    def size(self, count: int) -> tuple[int, int]:
        """(width, height) of a montage of `count` images (an empty one keeps one row, which says so)."""
        rows = max(1, math.ceil(count / self.columns))
        return self.columns * 2 * self.tile, self.header + rows * (self.tile + self.caption)


@dataclass(frozen=True)
class ErrorCamConfig:
    """One run of the command.

    Attributes:
        model: the export folder (model.torchscript.pt, model.explain.pt, metadata.json, calibration.json).
        scores: an evaluation's scores.csv (its evaluation.json beside it says how the images were scored).
        output_dir: where the PNGs and error_cams.json go.
        threshold: probability of fake at or above which an image counts as called fake; None: the served one.
        top: images per group.
        condition: which rows of scores.csv: "clean" or a perturbation of training.evaluate.
        faces: one of FACE_CHOICES; None repeats what the evaluation did (evaluation.json).
        dataset: the dataset the evaluation read (its paths are relative to it); None: evaluation.json's.
        device: torch device.
        regions: region geometry for the shares.
        montage: montage layout.
        command: the command line, recorded in error_cams.json.

    """

    model: Path
    scores: Path
    output_dir: Path
    threshold: float | None = None
    top: int = 12
    condition: str = CLEAN
    faces: str | None = None
    dataset: Path | None = None
    device: str = "cpu"
    regions: RegionConfig = field(default_factory=RegionConfig)
    montage: MontageConfig = field(default_factory=MontageConfig)
    command: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "scores", "output_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.dataset is not None:
            object.__setattr__(self, "dataset", Path(self.dataset))
        if self.top < 1:
            raise ErrorCamError(f"--top must be at least 1, got {self.top}")
        if self.faces is not None and self.faces not in FACE_CHOICES:
            raise ErrorCamError(f"--faces {self.faces!r} is not one of {list(FACE_CHOICES)}")
        if self.condition != CLEAN and self.condition not in PERTURBATIONS:
            raise ErrorCamError(f"--condition {self.condition!r} is not one of {[CLEAN, *PERTURBATIONS]}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ErrorCamError(f"--threshold must lie in [0, 1], got {self.threshold}")


# ---------------------------------------------------------------------------------------------------------------------
# Selection (pure)


@dataclass(frozen=True)
class ScoreRow:
    """The columns of one scores.csv row this command uses."""

    path: str
    label: str
    sbi: bool
    condition: str
    probability_fake: float
    subject: str


def read_scores(path: Path) -> list[ScoreRow]:
    """The rows of an evaluation's scores.csv.

    Raises:
        ErrorCamError: the file is missing or lacks a column training.evaluate writes.

    """
    if not path.is_file():
        raise ErrorCamError(f"--scores {path} does not exist; pass the scores.csv a training.evaluate run wrote")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label", "sbi", "condition", "probability_fake"} - set(reader.fieldnames or ())
        if missing:
            raise ErrorCamError(f"{path} lacks the column(s) {sorted(missing)}: is it a training.evaluate scores.csv?")
        return [ScoreRow(row["path"], row["label"], row["sbi"] in ("1", "True", "true"), row["condition"],
                         float(row["probability_fake"]), row.get("subject") or "") for row in reader]


def select_groups(rows: Sequence[ScoreRow], threshold: float, top: int, condition: str = CLEAN
                  ) -> dict[str, list[ScoreRow]]:
    """The false positives (highest first), the most confidently correct reals and the most confidently caught fakes.

    A pseudo-fake is never a real photo, whatever its label column says, so `sbi` rows only join the caught fakes.
    Ties keep the file order (a stable sort), so the same scores.csv always gives the same pictures.
    """
    chosen = [row for row in rows if row.condition == condition]
    reals = [row for row in chosen if row.label == "real" and not row.sbi]
    fakes = [row for row in chosen if row.label == "fake"]
    false_positives = sorted((row for row in reals if row.probability_fake >= threshold),
                             key=lambda row: -row.probability_fake)
    correct = sorted((row for row in reals if row.probability_fake < threshold), key=lambda row: row.probability_fake)
    caught = sorted((row for row in fakes if row.probability_fake >= threshold), key=lambda row: -row.probability_fake)
    return {FALSE_POSITIVES: false_positives[:top], CORRECT_REALS: correct[:top], CAUGHT_FAKES: caught[:top]}


# ---------------------------------------------------------------------------------------------------------------------
# Regions of the model input (pure)


def face_ellipse(shape: tuple[int, int], margin: float, sbi: SbiConfig) -> tuple[float, float, float, float]:
    """(centre x, centre y, semi-axis x, semi-axis y) of the mean SBI paste ellipse in a crop of `shape` (H, W).

    training.sbi puts the face box in the crop's centre (inner_face_box) and draws the mask centred at 50 % of its
    width and 53 % of its height (the middle of the 45-55 % and 50-56 % jitter) with semi-axes the middle of
    mask_width and mask_height.
    """
    box = inner_face_box(shape, margin)
    return (box.x + 0.5 * box.width, box.y + 0.53 * box.height,
            box.width * float(np.mean(sbi.mask_width)), box.height * float(np.mean(sbi.mask_height)))


def region_masks(shape: tuple[int, int], margin: float, sbi: SbiConfig, config: RegionConfig) -> dict[str, np.ndarray]:
    """Boolean masks [H, W] of inner_face, face_border, outside (a partition) and top_half, bottom_half (another)."""
    height, width = shape
    centre_x, centre_y, axis_x, axis_y = face_ellipse(shape, margin, sbi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    radius = np.sqrt(((xs - centre_x) / axis_x) ** 2 + ((ys - centre_y) / axis_y) ** 2)
    top = ys < height / 2.0
    return {"inner_face": radius < config.inner, "face_border": (radius >= config.inner) & (radius < config.outer),
            "outside": radius >= config.outer, "top_half": top, "bottom_half": ~top}


def region_shares(heat: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Share of the heat map's mass in each mask; NaN everywhere for an all-zero map (no evidence anywhere)."""
    total = float(heat.sum())
    return {name: float(heat[mask].sum()) / total if total > 0 else math.nan for name, mask in masks.items()}


def upsampled(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A feature-resolution map stretched over the model input (H, W), bilinearly, as the handler overlays it."""
    height, width = shape
    return paste_heat(cam[None], [FaceBox(0, 0, width, height)], (width, height), (width, height))


# ---------------------------------------------------------------------------------------------------------------------
# Rebuilding the model inputs as the evaluation did (I/O)


@dataclass(frozen=True)
class EvaluationContext:
    """What evaluation.json says about how scores.csv was made.

    Attributes:
        root: the folder scores.csv's relative paths are relative to (training.dataset's root), or None.
        faces: the evaluation's face mode in --faces words (precropped, on, off), or None when unknown.
        faces_json: the prepared dataset's faces.json the evaluation found (its face settings), or None.
        sbi: whether the evaluation added SBI twins (a real with a twin was decoded at full size).
        seed: the evaluation's seed (fixes each twin).

    """

    root: Path | None
    faces: str | None
    faces_json: Path | None
    sbi: bool
    seed: int


def dataset_root(dataset: Path) -> Path:
    """training.dataset's root of a dataset: a manifest's folder, or the dataset folder itself."""
    return dataset.parent if dataset.is_file() or dataset.suffix.lower() == ".csv" else dataset


def read_evaluation_context(scores: Path, dataset: Path | None) -> EvaluationContext:
    """The context of scores.csv from its evaluation.json (absent: defaults, and paths must be absolute)."""
    path = scores.parent / EVALUATION_JSON
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    recorded = report.get("config", {}).get("dataset")
    source = dataset if dataset is not None else Path(recorded) if recorded else None
    faces = report.get("faces", {})
    faces_json = faces.get("faces_json")
    return EvaluationContext(root=dataset_root(source) if source is not None else None,
                             faces=EVALUATED_MODES.get(faces.get("mode", "")),
                             faces_json=Path(faces_json) if faces_json else None,
                             sbi=bool(report.get("sbi", {}).get("enabled", False)),
                             seed=int(report.get("sbi", {}).get("seed", report.get("config", {}).get("seed", 0))))


def resolve_path(row: ScoreRow, context: EvaluationContext) -> Path:
    """The file of a row: absolute as written, else relative to the evaluation's dataset root.

    Raises:
        ErrorCamError: the file cannot be found (the message says which flag fixes it).

    """
    path = Path(row.path)
    if not path.is_absolute():
        if context.root is None:
            raise ErrorCamError(f"scores.csv names {row.path!r} relative to the evaluated dataset, but there is no "
                                f"{EVALUATION_JSON} beside it to say which; pass --dataset")
        path = Path(os.path.normpath(context.root / path))
    if not path.is_file():
        raise ErrorCamError(f"{path} (scores.csv row {row.path!r}) does not exist; pass --dataset with the dataset the "
                            "evaluation read")
    return path


@dataclass(frozen=True)
class RebuiltInput:
    """One row's deciding region as the served model scored it.

    Attributes:
        tensor: the model input [4, H, W] (handler.forensics, through handler.scoring).
        view: the region's RGB as the model saw it (resized to the input size), for the montage.
        probability_fake: the served model's calibrated probability of that region, recomputed.
        scored: what was scored (handler.scoring's REGION_* or training.evaluate's precropped_face).

    """

    tensor: torch.Tensor
    view: np.ndarray
    probability_fake: float
    scored: str


def rebuild_regions(row: ScoreRow, path: Path, preprocess: PreprocessConfig, plan: FacePlan,
                    context: EvaluationContext, sbi: SbiConfig) -> tuple[np.ndarray, ScoredRegions]:
    """The image (RGB) and model inputs of one row, decoded, twinned, perturbed and cut as training.evaluate did.

    Raises:
        ErrorCamError: an SBI row whose face cannot be found again (the evaluation would have made no twin).

    """
    encoded = path.read_bytes()
    twinned = (context.sbi and row.label == "real") or row.sbi  # the evaluation decoded these at full size
    rgb = (decode_rgb(encoded, preprocess.max_image_pixels) if plan.mode == "detect" or twinned
           else decode_for_model(encoded, preprocess))
    if row.sbi:
        box = sbi_face_box(rgb, plan)
        if box is None:
            raise ErrorCamError(f"{path}: no face found to rebuild its SBI pseudo-fake; was --faces as evaluated?")
        rgb = PseudoFakeMaker(sbi, fixed_seed=context.seed).blend(rgb, box, Sample(path, 0))  # as evaluate made it
    if row.condition != CLEAN:
        rgb = PERTURBATIONS[row.condition].apply(rgb)
    rgb = np.ascontiguousarray(rgb)
    return rgb, regions_for(rgb, plan, preprocess)


def rebuild_inputs(rows: Sequence[ScoreRow], paths: Sequence[Path], detector: ExportedDetector, plan: FacePlan,
                   context: EvaluationContext, sbi: SbiConfig, batch_size: int = 32) -> list[RebuiltInput]:
    """Each row's deciding region (its most-fake one), scored by the served model in batches as the evaluation was."""
    preprocess = detector.metadata.preprocessing
    images = [rebuild_regions(row, path, preprocess, plan, context, sbi) for row, path in zip(rows, paths, strict=True)]
    inputs = [tensor for _, regions in images for tensor in regions.inputs]
    scores = [score for start in range(0, len(inputs), batch_size)
              for score in detector.score(torch.stack(inputs[start:start + batch_size]))]
    rebuilt, offset = [], 0
    for rgb, regions in images:
        own = scores[offset:offset + len(regions.inputs)]
        offset += len(regions.inputs)
        deciding = most_fake(own)
        region = (crop_face(rgb, regions.boxes[deciding], plan.detection.margin)
                  if regions.scored == REGION_FACES and plan.detection is not None else rgb)
        rebuilt.append(RebuiltInput(regions.inputs[deciding], resize_rgb(region, preprocess.input_size),
                                    own[deciding].calibrated, regions.scored))
    return rebuilt


# ---------------------------------------------------------------------------------------------------------------------
# Montage (pure)


def overlay(view: np.ndarray, heat: np.ndarray, ellipse: tuple[float, float, float, float] | None) -> np.ndarray:
    """The view with the handler's heat-map colours alpha-blended over it, and the face ellipse outlined in white."""
    rgba = heatmap_rgba(heat).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    blended = np.round(view.astype(np.float32) * (1.0 - alpha) + rgba[..., :3] * alpha).astype(np.uint8)
    if ellipse is not None:
        centre_x, centre_y, axis_x, axis_y = ellipse
        cv2.ellipse(blended, (round(centre_x), round(centre_y)), (max(1, round(axis_x)), max(1, round(axis_y))),
                    0.0, 0, 360, (255, 255, 255), 1, cv2.LINE_AA)
    return blended


@dataclass(frozen=True)
class Tile:
    """One image of a montage: the view and its overlay (same size), and the caption's two lines."""

    view: np.ndarray
    overlay: np.ndarray
    caption: tuple[str, str]


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.42) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def montage(tiles: Sequence[Tile], title: str, config: MontageConfig) -> np.ndarray:
    """An RGB uint8 montage of config.size(len(tiles)): a title band, then rows of image | overlay pairs."""
    width, height = config.size(len(tiles))
    canvas = np.full((height, width, 3), 255, np.uint8)
    _text(canvas, title, (6, config.header - 9), 0.5)
    if not tiles:
        _text(canvas, "none", (6, config.header + config.tile // 2))
    max_chars = max(4, (2 * config.tile) // 8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, config.columns)
        top, left = config.header + row * (config.tile + config.caption), column * 2 * config.tile
        size = (config.tile, config.tile)
        canvas[top:top + config.tile, left:left + config.tile] = cv2.resize(tile.view, size,
                                                                             interpolation=cv2.INTER_AREA)
        canvas[top:top + config.tile, left + config.tile:left + 2 * config.tile] = cv2.resize(
            tile.overlay, size, interpolation=cv2.INTER_AREA)
        for line, text in enumerate(tile.caption):
            _text(canvas, text[-max_chars:], (left + 4, top + config.tile + 14 + 15 * line))
    return canvas


# ---------------------------------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class ExplainedRow:
    """A selected row with its rebuilt input, recomputed probability, Grad-CAM map and region shares."""

    row: ScoreRow
    rebuilt: RebuiltInput
    cam: np.ndarray
    heat: np.ndarray
    shares: dict[str, float]


def group_summary(explained: Sequence[ExplainedRow], masks: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per group: counts, probabilities, the mean heat map's region shares and grid, and each image's shares."""
    if not explained:
        return {"count": 0, "mean_heat_shares": None, "mean_heat_grid": None, "zero_maps": 0, "items": []}
    probabilities = np.array([item.row.probability_fake for item in explained])
    mean_heat = np.mean([item.heat for item in explained], axis=0)
    return {
        "count": len(explained),
        "probability_fake": {"mean": float(probabilities.mean()), "min": float(probabilities.min()),
                             "max": float(probabilities.max())},
        "mean_heat_shares": region_shares(mean_heat, masks),
        "mean_heat_grid": np.round(np.mean([item.cam for item in explained], axis=0), 4),
        "zero_maps": sum(not item.cam.any() for item in explained),
        "items": [{"path": item.row.path, "subject": item.row.subject, "sbi": item.row.sbi,
                   "probability_fake": item.row.probability_fake,
                   "probability_fake_recomputed": item.rebuilt.probability_fake, "scored": item.rebuilt.scored,
                   "shares": item.shares} for item in explained],
    }


def _caption(item: ExplainedRow) -> tuple[str, str]:
    name = Path(item.row.path).stem + (" (SBI)" if item.row.sbi else "")
    return f"p {item.row.probability_fake:.3f}", name


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The console summary: the selection, then each group's mean-heat region shares next to the areas."""
    groups = report["groups"]
    lines = [f"{report['counts']['false_positives']} false positives among {report['counts']['reals']} reals at "
             f"threshold {report['threshold']:.3f} ({report['condition']}); showing {groups[FALSE_POSITIVES]['count']}",
             f"{'mean heat share':18s}" + "".join(f"{name:>13s}" for name in (*REGIONS, *HALVES))]
    rows = [("area (flat map)", report["area_shares"])]
    rows += [(name, groups[name]["mean_heat_shares"]) for name in GROUPS]
    for name, shares in rows:
        values = "".join(f"{'n/a':>13s}" if shares is None or shares[key] is None or not math.isfinite(shares[key])
                         else f"{shares[key]:13.3f}" for key in (*REGIONS, *HALVES))
        lines.append(f"{name:18s}{values}")
    lines.append(f"largest |recomputed - scores.csv| probability: {report['reproduction']['max_abs_diff']:.2e}")
    return lines


def error_cams(config: ErrorCamConfig) -> dict[str, Any]:
    """Selects, rebuilds, explains and draws; writes the two PNGs and error_cams.json and returns the report.

    Raises:
        ErrorCamError: a flag, the export folder or a scores.csv row is wrong.

    """
    for name in (METADATA_FILENAME, EXPLAIN_FILENAME):
        if not (config.model / name).is_file():
            raise ErrorCamError(f"--model {config.model} has no {name}; pass an export folder written by "
                                "training.export (it writes the Grad-CAM twin model.explain.pt)")
    metadata = ModelMetadata.load(config.model / METADATA_FILENAME)
    threshold = metadata.threshold if config.threshold is None else config.threshold
    rows = read_scores(config.scores)
    context = read_evaluation_context(config.scores, config.dataset)
    dataset_faces = read_face_config(context.faces_json.parent) if context.faces_json is not None else None
    plan = resolve_face_plan(config.faces or context.faces or "auto", metadata.faces, dataset_faces)
    sbi = sbi_config_of(metadata.training)
    groups = select_groups(rows, threshold, config.top, config.condition)
    selected = [(name, row) for name, members in groups.items() for row in members]
    paths = [resolve_path(row, context) for _, row in selected]  # a missing file fails before the models load

    device = torch.device(config.device)
    detector = ExportedDetector.load(config.model, device)
    rebuilt = rebuild_inputs([row for _, row in selected], paths, detector, plan, context, sbi)
    cams = (grad_cam(load_explain_model(config.model, device), [item.tensor for item in rebuilt],
                     metadata.fake_index, device) if rebuilt else np.zeros((0, 1, 1), np.float32))
    shape = tuple(metadata.preprocessing.input_size)
    margin = plan.detection.margin if plan.mode == "detect" and plan.detection else plan.sbi_faces.margin
    masks = region_masks(shape, margin, sbi, config.regions)
    ellipse = face_ellipse(shape, margin, sbi) if plan.mode != "whole_image" else None
    explained: dict[str, list[ExplainedRow]] = {name: [] for name in GROUPS}
    for (name, row), item, cam in zip(selected, rebuilt, cams, strict=True):
        heat = upsampled(cam, shape)
        explained[name].append(ExplainedRow(row, item, cam, heat, region_shares(heat, masks)))

    config.output_dir.mkdir(parents=True, exist_ok=True)

    def tiles(name: str) -> list[Tile]:
        return [Tile(item.rebuilt.view, overlay(item.rebuilt.view, item.heat, ellipse), _caption(item))
                for item in explained[name]]

    false_positives = _write_png(config.output_dir / FALSE_POSITIVES_PNG,
                                 montage(tiles(FALSE_POSITIVES), GROUPS[FALSE_POSITIVES], config.montage))
    contrast = _write_png(config.output_dir / CONTRAST_PNG,
                          np.vstack([montage(tiles(CORRECT_REALS), GROUPS[CORRECT_REALS], config.montage),
                                     montage(tiles(CAUGHT_FAKES), GROUPS[CAUGHT_FAKES], config.montage)]))
    chosen = [row for row in rows if row.condition == config.condition]
    differences = [abs(item.rebuilt.probability_fake - item.row.probability_fake)
                   for members in explained.values() for item in members]
    report: dict[str, Any] = {
        "command": config.command or "training.error_cams.error_cams(...)",
        "model": str(config.model.resolve()), "scores": str(config.scores.resolve()),
        "threshold": threshold, "condition": config.condition, "top": config.top,
        "faces": {"mode": plan.mode, "reason": plan.reason, "margin": margin},
        "counts": {"rows": len(chosen), "reals": sum(row.label == "real" and not row.sbi for row in chosen),
                   "fakes": sum(row.label == "fake" for row in chosen),
                   "false_positives": sum(row.label == "real" and not row.sbi and row.probability_fake >= threshold
                                          for row in chosen)},
        "regions": {**asdict(config.regions), "frame": "the model input" + (" (a whole image: no face frame, the "
                    "regions assume a centred face)" if plan.mode == "whole_image" else " (the face crop)"),
                    "ellipse": dict(zip(("centre_x", "centre_y", "axis_x", "axis_y"),
                                        face_ellipse(shape, margin, sbi), strict=True)),
                    "input_size": list(shape)},
        "area_shares": {name: float(mask.mean()) for name, mask in masks.items()},
        "reproduction": {"max_abs_diff": max(differences, default=0.0), "tolerance": REPRODUCTION_TOLERANCE},
        "groups": {name: group_summary(explained[name], masks) for name in GROUPS},
        "files": {"false_positives": false_positives, "contrast": contrast},
    }
    write_json(config.output_dir / ERROR_CAMS_JSON, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, each explained in --help."""
    parser = argparse.ArgumentParser(prog="python -m training.error_cams", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", type=Path, required=True, help="export folder with model.explain.pt (RUN/export)")
    parser.add_argument("--scores", type=Path, required=True, help="scores.csv of a training.evaluate run")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the PNGs and error_cams.json go")
    parser.add_argument("--threshold", type=float, help="called fake at or above this (default: metadata.json's)")
    parser.add_argument("--top", type=int, default=12, help="images per group (default 12)")
    parser.add_argument("--condition", default=CLEAN, choices=[CLEAN, *PERTURBATIONS], metavar="CONDITION",
                        help="which scores.csv rows: clean (default) or a perturbation training.evaluate ran")
    parser.add_argument("--faces", choices=FACE_CHOICES,
                        help="how regions are cut (default: as the evaluation did, from its evaluation.json)")
    parser.add_argument("--dataset", type=Path,
                        help="the dataset the evaluation read, when scores.csv's relative paths must be resolved "
                             "against another place than evaluation.json says")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> ErrorCamConfig:
    """CLI → ErrorCamConfig, with the command line recorded for the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return ErrorCamConfig(model=args.model, scores=args.scores, output_dir=args.output_dir,
                              threshold=args.threshold, top=args.top, condition=args.condition, faces=args.faces,
                              dataset=args.dataset, device=args.device,
                              command=shlex.join(["python", "-m", "training.error_cams", *argv]))
    except ErrorCamError as error:
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; a wrong flag or file ends with the message, not a traceback."""
    config = parse_args(argv)
    try:
        report = error_cams(config)
    except ErrorCamError as error:
        sys.exit(f"error: {error}")
    print("\n".join(summary_lines(report)))
    if report["reproduction"]["max_abs_diff"] > REPRODUCTION_TOLERANCE:
        print("warning: recomputed probabilities differ from scores.csv: the inputs were not rebuilt as the "
              "evaluation scored them (--faces, --dataset or the export differ?)")
    print(f"wrote {config.output_dir / FALSE_POSITIVES_PNG}, {config.output_dir / CONTRAST_PNG}, "
          f"{config.output_dir / ERROR_CAMS_JSON}")


if __name__ == "__main__":
    main()
