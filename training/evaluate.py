"""Scores a labelled dataset through an exported model, exactly as the service would, and writes a report.

The numbers of a training run come from the eager model on the run's own split. A user who wants to
know what the *served* model does on *their* data needs the export folder (TorchScript, metadata.json,
calibration.json) run through serving's own path: handler.forensics.decode_rgb → handler.scoring
(faces or whole image) → TorchScript → calibration → the most-fake region of each image. This command
does exactly that, so every figure it writes is what TorchServe would have answered for the same
files, and adds what a single AUC hides: metrics at the served threshold, calibration, a breakdown by
any manifest column, and robustness to everyday degradations (re-compression, downscaling, blur).

Usage:
    python -m training.evaluate --model RUN/export --dataset RUN/splits.csv --split test --output-dir eval/
    python -m training.evaluate --model RUN/export --dataset crops/manifest.csv --sbi --group-by dataset --output-dir ev

Outputs in --output-dir: evaluation.json (every figure, the command, model identity, data fingerprint,
versions), evaluation.md (tables to paste into docs), scores.csv (one row per image and condition) and
plots/ (ROC per condition, reliability diagram, score histogram).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from handler.faces import FaceBox, FaceConfig, detect_faces
from handler.forensics import PreprocessConfig, decode_for_model, decode_rgb
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME
from handler.scoring import REGION_NO_FACE, ExportedDetector, ScoredRegions, most_fake, regions_to_score
from handler.verdict import ItemScores
from training.dataset import (
    CLASS_NAMES,
    SPLIT_ALIASES,
    DatasetError,
    Sample,
    ScannedDataset,
    relative_key,
    scan_dataset,
)
from training.intervals import auc_interval, rate_intervals
from training.jsonsafe import write_json
from training.metrics import classification_metrics, expected_calibration_error
from training.perturbations import (
    DEFAULT_PERTURBATIONS,
    PERTURBATION_GROUPS,
    PERTURBATIONS,
    expand_perturbations,
)
from training.plots import plot_reliability, plot_roc_curves, plot_score_histogram
from training.prepare import FACES_FILENAME, PrepareError, read_face_config
from training.pseudo_fakes import PseudoFakeMaker
from training.report import package_versions
from training.sbi import SbiConfig, inner_face_box

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
SCORES_CSV = "scores.csv"
PLOTS_FOLDER = "plots"
CLEAN = "clean"
# What was scored when the image is itself a face crop made by training/prepare.py: the whole crop, no detection.
REGION_PRECROPPED = "precropped_face"
# Group columns every dataset has, whatever its layout; any other column must come from a CSV manifest.
SAMPLE_COLUMNS = ("split", "subject")
BLANK_GROUP = "(blank)"
# How face regions are chosen (--faces): the user's words, resolved into a FacePlan.
FACE_MODES = {
    "auto": "precropped when the model is a face model and the dataset has a faces.json (written by training.prepare"
            "; for a manifest such as splits.csv also looked for above its files); detect faces as serving does for "
            "a face model on other data; whole image for a whole-image model",
    "on": "detect faces as serving does (metadata.json's face settings, else FaceConfig defaults)",
    "off": "score the whole image",
    "precropped": "each image IS a face crop (training.prepare): score it whole, no detection",
}


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message names the flag, file or column at fault and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything one evaluation depends on; written into evaluation.json so the report can be reproduced.

    Attributes:
        model: the export folder (model.torchscript.pt, metadata.json, calibration.json).
        dataset: anything training.dataset.scan_dataset reads: class folders, split folders or a CSV manifest
            (e.g. a run's splits.csv).
        output_dir: where evaluation.json, evaluation.md, scores.csv and plots/ are written.
        split: keep only samples of this split (train, val or test; the manifest's split column or split folders).
        sbi: add one self-blended pseudo-fake per real image (training.sbi), so real-only data can be evaluated.
        faces: a key of :data:`FACE_MODES`.
        group_by: manifest columns to break the metrics down by (plus `split` and `subject` for any layout).
        perturbations: keys of :data:`training.perturbations.PERTURBATIONS` for the robustness and probe rows;
            empty for none.
        batch_size: model inputs per forward pass.
        seed: fixes the SBI pseudo-fakes and the --limit subset.
        limit: evaluate a seeded random subset of this many files (after --split), for a quick look.
        device: torch device the TorchScript model runs on.
        command: the command line, recorded in the report (set by the CLI).

    """

    model: Path
    dataset: Path
    output_dir: Path
    split: str | None = None
    sbi: bool = False
    faces: str = "auto"
    group_by: tuple[str, ...] = ()
    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    batch_size: int = 32
    seed: int = 0
    limit: int | None = None
    device: str = "cpu"
    command: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "group_by", tuple(self.group_by))
        object.__setattr__(self, "perturbations", tuple(self.perturbations))
        if self.split is not None:
            if self.split.lower() not in SPLIT_ALIASES:
                raise EvaluationError(f"--split {self.split!r} is not a split name; use train, val or test")
            object.__setattr__(self, "split", SPLIT_ALIASES[self.split.lower()])
        if self.faces not in FACE_MODES:
            raise EvaluationError(f"--faces {self.faces!r} is not one of {sorted(FACE_MODES)}")
        unknown = [name for name in self.perturbations if name not in PERTURBATIONS]
        if unknown or CLEAN in self.perturbations:
            raise EvaluationError(f"unknown perturbation(s) {unknown or [CLEAN]}; known: {sorted(PERTURBATIONS)}")
        if self.batch_size < 1:
            raise EvaluationError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"--limit must be at least 1, got {self.limit}")

    @property
    def conditions(self) -> tuple[str, ...]:
        """The clean images first, then each perturbation, in the order of the report's rows."""
        return (CLEAN, *self.perturbations)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for evaluation.json."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class FacePlan:
    """How regions are cut for scoring and where an SBI pseudo-fake's face is, resolved from --faces.

    Attributes:
        mode: "detect" (faces as serving finds them), "precropped" (the image is the crop) or "whole_image".
        detection: the face settings serving detects with (mode "detect"), else None.
        sbi_faces: face settings for SBI: detection for a full photo, or the crop margin for a precropped image.
        reason: one sentence for the report: why this mode.

    """

    mode: str
    detection: FaceConfig | None
    sbi_faces: FaceConfig
    reason: str


def resolve_face_plan(requested: str, model_faces: FaceConfig | None, dataset_faces: FaceConfig | None) -> FacePlan:
    """Turns --faces into what is done, given the model's face settings and the dataset's faces.json (if any).

    Serving detects with metadata.json's settings, or FaceConfig defaults when faces are forced on for a
    whole-image model (handler `faces: on`); doing the same keeps the numbers those of the service. The
    crop margin of a precropped dataset is the model's, because the model was trained on crops cut with it;
    faces.json's margin comes second, for a whole-image model evaluated on crops.
    """
    serving_faces = model_faces or FaceConfig()
    crop_faces = model_faces or dataset_faces or FaceConfig()
    if requested == "auto":
        if model_faces is not None and dataset_faces is not None:
            return FacePlan("precropped", None, crop_faces,
                            "auto: the dataset has a faces.json (face crops) and the model is a face model")
        if model_faces is not None:
            return FacePlan("detect", model_faces, model_faces,
                            "auto: a face model on data that are not crops, so faces are detected as serving does")
        return FacePlan("whole_image", None, dataset_faces or FaceConfig(),
                        "auto: a whole-image model (metadata.json has no faces), scored on whole images as served")
    if requested == "on":
        return FacePlan("detect", serving_faces, serving_faces, "--faces on: faces detected as serving does")
    if requested == "precropped":
        return FacePlan("precropped", None, crop_faces, "--faces precropped: each image is a face crop")
    return FacePlan("whole_image", None, dataset_faces or serving_faces, "--faces off: whole images")


def dataset_face_config(dataset: Path, samples: Sequence[Sample]) -> tuple[FaceConfig | None, Path | None]:
    """The faces.json of a prepared (face-crop) dataset and where it was found, or (None, None).

    Looked for in the dataset folder or beside the manifest, then, for a manifest, in the deepest folder
    holding all of its files and that folder's parents: a run's splits.csv lists the crops by absolute path,
    away from their faces.json, which training.prepare wrote above its real/ and fake/ folders.
    """
    own = dataset.parent if dataset.is_file() else dataset
    faces = read_face_config(own)  # a broken faces.json of the dataset itself is an error worth stopping for
    if faces is not None:
        return faces, own / FACES_FILENAME
    if dataset.is_file() and samples:
        common = Path(os.path.commonpath([sample.path.parent for sample in samples]))
        for place in (common, *common.parents):
            try:
                faces = read_face_config(place)
            except PrepareError:  # some other program's faces.json far above the data: not ours
                continue
            if faces is not None:
                return faces, place / FACES_FILENAME
    return None, None


def sbi_config_of(training: Mapping[str, Any]) -> SbiConfig:
    """The pseudo-fake recipe the model was trained with (metadata.training["sbi"]), else the defaults; enabled."""
    trained = training.get("sbi")
    config = SbiConfig.from_dict(trained) if isinstance(trained, Mapping) else SbiConfig()
    return replace(config, enabled=True)


# ---------------------------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class EvaluationData:
    """The samples to score and what became of the rest.

    Attributes:
        scanned: the whole dataset as scanned (its skipped files are reported).
        samples: the samples evaluated: --split and --limit applied, dataset order kept.
        excluded_by_split: readable samples left out because they belong to another split.
        groups: per sample path, the --group-by column values.

    """

    scanned: ScannedDataset
    samples: list[Sample]
    excluded_by_split: int
    groups: dict[Path, dict[str, str]]

    def fingerprint(self) -> str:
        """training.dataset's fingerprint of exactly the evaluated files: same files and labels, same value."""
        return replace(self.scanned, samples=self.samples).fingerprint()


def select_split(samples: Sequence[Sample], split: str | None, source: Path) -> list[Sample]:
    """The samples of `split` (all when None).

    Raises:
        EvaluationError: the dataset has no split information, or none of its samples is in `split`.

    """
    if split is None:
        return list(samples)
    present = sorted({sample.split for sample in samples if sample.split is not None})
    if not present:
        raise EvaluationError(f"--split {split}: {source} says nothing about splits (no 'split' column in the "
                              "manifest, no train/val/test folders); drop --split to evaluate every image, or pass "
                              "a run's splits.csv")
    kept = [sample for sample in samples if sample.split == split]
    if not kept:
        raise EvaluationError(f"--split {split}: {source} has no readable '{split}' sample; its splits are {present}")
    return kept


def limit_samples(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of `limit` samples in dataset order: both classes stay represented, unlike a head."""
    if limit is None or limit >= len(samples):
        return list(samples)
    chosen = np.random.default_rng(seed).choice(len(samples), size=limit, replace=False)
    return [samples[index] for index in sorted(chosen.tolist())]


def read_manifest_columns(manifest: Path, columns: Sequence[str], required: bool = True) -> dict[Path, dict[str, str]]:
    """The `columns` of every manifest row, by the file path as training.dataset resolves it.

    Args:
        manifest: a CSV manifest.
        columns: the columns wanted.
        required: a missing column is an error; False leaves it out of every row instead.

    Raises:
        EvaluationError: a required column is not in the manifest (the message lists the columns it has).

    """
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = {name.strip().lower(): name for name in reader.fieldnames or [] if name is not None}
        missing = [column for column in columns if column.lower() not in header and column not in SAMPLE_COLUMNS]
        if missing and required:
            raise EvaluationError(f"--group-by {' '.join(missing)}: {manifest} has no such column; its columns are "
                                  f"{sorted(header)}")
        path_column = header.get("path")
        values: dict[Path, dict[str, str]] = {}
        for row in reader:
            cell = (row.get(path_column) or "").strip() if path_column else ""
            if not cell:
                continue
            path = Path(os.path.normpath(manifest.parent / cell))  # as training.dataset resolves it
            values[path] = {column: (row.get(header[column.lower()]) or "").strip()
                            for column in columns if column.lower() in header}
    return values


def sample_groups(samples: Sequence[Sample], columns: Sequence[str],
                  manifest_values: Mapping[Path, Mapping[str, str]]) -> dict[Path, dict[str, str]]:
    """Each sample's group values: its split/subject, or the manifest's cell; blank values become BLANK_GROUP."""
    groups: dict[Path, dict[str, str]] = {}
    for sample in samples:
        row = manifest_values.get(sample.path, {})
        # split and subject as the dataset reader understood them ("validation" → "val"), else the manifest's cell
        values = {column: (getattr(sample, column) if column in SAMPLE_COLUMNS else row.get(column)) or BLANK_GROUP
                  for column in columns}
        groups[sample.path] = values
    return groups


def load_data(config: EvaluationConfig, max_image_pixels: int) -> EvaluationData:
    """Scans the dataset (bad files skipped and counted) and applies --split, --limit and --group-by."""
    required = ("real",) if config.sbi else CLASS_NAMES
    scanned = scan_dataset(config.dataset, max_image_pixels, required_classes=required)
    in_split = select_split(scanned.samples, config.split, config.dataset)
    samples = limit_samples(in_split, config.limit, config.seed)
    manifest_values: dict[Path, dict[str, str]] = {}
    if config.group_by:
        if scanned.layout == "manifest":
            manifest_values = read_manifest_columns(config.dataset, config.group_by)
        else:
            other = [column for column in config.group_by if column not in SAMPLE_COLUMNS]
            if other:
                raise EvaluationError(f"--group-by {' '.join(other)} needs a CSV manifest with those columns; "
                                      f"{config.dataset} is a '{scanned.layout}' dataset, which only knows "
                                      f"{' and '.join(SAMPLE_COLUMNS)}")
    groups = sample_groups(samples, config.group_by, manifest_values)
    return EvaluationData(scanned, samples, len(scanned.samples) - len(in_split), groups)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class ScoredItem:
    """One row of scores.csv: an image, or the SBI pseudo-fake made from it, under one condition.

    Attributes:
        path: the source file, relative to the dataset root when inside it.
        label: 0 real, 1 fake (an SBI pseudo-fake is fake).
        sbi: whether this is a pseudo-fake generated from the real image at `path`.
        condition: CLEAN or a key of PERTURBATIONS.
        probability_fake: calibrated probability of fake of the deciding region (what is served).
        probability_fake_uncalibrated: the softmax probability of the same region.
        scored: what was scored: handler.scoring's REGION_* or REGION_PRECROPPED.
        box: the deciding face's box in the (perturbed) image's pixels, when faces were detected.
        faces_found: faces detected (0 unless scored is "faces").
        subject: the person, when the dataset says.
        groups: the --group-by values (an SBI fake has its real's).

    """

    path: str
    label: int
    sbi: bool
    condition: str
    probability_fake: float
    probability_fake_uncalibrated: float
    scored: str
    box: FaceBox | None
    faces_found: int
    subject: str
    groups: dict[str, str] = field(default_factory=dict)


def regions_for(rgb: np.ndarray, plan: FacePlan, preprocess: PreprocessConfig) -> ScoredRegions:
    """The model inputs of one image under the face plan, through handler.scoring as serving cuts them."""
    if plan.mode == "detect":
        return regions_to_score(rgb, preprocess, plan.detection)
    regions = regions_to_score(rgb, preprocess, None)
    return replace(regions, scored=REGION_PRECROPPED) if plan.mode == "precropped" else regions


def sbi_face_box(rgb: np.ndarray, plan: FacePlan) -> FaceBox | None:
    """Where the SBI blend goes: the crop's inner face box for a crop, else the largest detected face (or None)."""
    if plan.mode == "precropped":
        return inner_face_box(rgb.shape, plan.sbi_faces.margin)
    boxes = detect_faces(rgb, plan.sbi_faces)
    return boxes[0] if boxes else None  # detect_faces returns the largest first


class _BatchScorer:
    """Queues model inputs from many images and scores them in full batches, keeping each region's owner."""

    def __init__(self, detector: ExportedDetector, batch_size: int) -> None:
        self.detector = detector
        self.batch_size = batch_size
        self.scores: dict[int, list[ItemScores]] = defaultdict(list)
        self._queue: list[tuple[int, torch.Tensor]] = []

    def add(self, owner: int, inputs: Iterable[torch.Tensor]) -> None:
        for tensor in inputs:
            self._queue.append((owner, tensor))
            if len(self._queue) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        if not self._queue:
            return
        scores = self.detector.score(torch.stack([tensor for _, tensor in self._queue]))
        for (owner, _), score in zip(self._queue, scores, strict=True):
            self.scores[owner].append(score)  # regions of one owner arrive in order: they are queued in order
        self._queue.clear()


@dataclass(frozen=True)
class _Pending:
    """A scored item whose regions are queued but not yet through the model."""

    path: str
    label: int
    sbi: bool
    condition: str
    scored: str
    boxes: tuple[FaceBox, ...]  # not the inputs: those leave memory with their batch
    subject: str
    groups: dict[str, str]


@dataclass
class ScoringRun:
    """What scoring produced: every row, and the SBI bookkeeping the report counts."""

    items: list[ScoredItem]
    sbi_fakes: int = 0
    sbi_no_face: list[str] = field(default_factory=list)
    sbi_ellipse_fallbacks: int = 0  # landmark-mask blends made through the ellipse: the face had no usable landmarks


def score_samples(data: EvaluationData, detector: ExportedDetector, plan: FacePlan, config: EvaluationConfig,
                  sbi: SbiConfig | None) -> ScoringRun:
    """Decodes each file once, adds its SBI pseudo-fake, perturbs each image, and scores every condition.

    The pseudo-fake is made from the clean image and then perturbed like its real, so a robustness row
    compares the same pairs under the same degradation. It is made by training's own maker
    (training.pseudo_fakes.PseudoFakeMaker.blend, seeded by the image's pixels and --seed) as training
    makes its fixed validation and test fakes, so evaluating a run's test split with the run's seed
    scores the very fakes the run's own report measured, wherever the run's manifest listed the files.
    """
    preprocess = detector.metadata.preprocessing
    scorer = _BatchScorer(detector, config.batch_size)
    pending: list[_Pending] = []
    run = ScoringRun([])
    root = data.scanned.root
    fakes = PseudoFakeMaker(sbi, fixed_seed=config.seed) if sbi is not None else None
    for sample in tqdm(data.samples, desc="evaluating", unit="image", disable=None, dynamic_ncols=True):
        key = relative_key(sample.path, root)
        makes_sbi = fakes is not None and sample.label == CLASS_NAMES.index("real")
        encoded = sample.path.read_bytes()
        # Decoded as the service decodes it: full size where faces are cut, else as the model input wants it
        # (reduced JPEG decoding for a model trained so). A real that gets an SBI twin is decoded at full size,
        # because the blend needs the face's pixels and real and twin must come from the same decode.
        rgb = (decode_rgb(encoded, preprocess.max_image_pixels) if plan.mode == "detect" or makes_sbi
               else decode_for_model(encoded, preprocess))
        images = [(sample.label, False, rgb)]
        if makes_sbi:
            box = sbi_face_box(rgb, plan)
            if box is None:
                run.sbi_no_face.append(key)
            else:
                images.append((CLASS_NAMES.index("fake"), True, fakes.blend(rgb, box, sample)))
                run.sbi_fakes += 1
        for label, is_sbi, image in images:
            for condition in config.conditions:
                perturbed = image if condition == CLEAN else PERTURBATIONS[condition].apply(image)
                regions = regions_for(np.ascontiguousarray(perturbed), plan, preprocess)
                scorer.add(len(pending), regions.inputs)
                pending.append(_Pending(key, label, is_sbi, condition, regions.scored, regions.boxes,
                                        sample.subject or "", data.groups.get(sample.path, {})))
    scorer.flush()
    run.sbi_ellipse_fallbacks = fakes.landmarks.fallbacks if fakes is not None else 0
    for owner, item in enumerate(pending):
        scores = scorer.scores[owner]
        deciding = most_fake(scores)
        box = item.boxes[deciding] if item.boxes else None
        run.items.append(ScoredItem(item.path, item.label, item.sbi, item.condition, scores[deciding].calibrated,
                                    scores[deciding].uncalibrated, item.scored, box, len(item.boxes), item.subject,
                                    item.groups))
    return run


# ---------------------------------------------------------------------------------------------------------------------
# Metrics (pure)


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def score_metrics(labels: np.ndarray, calibrated: np.ndarray, uncalibrated: np.ndarray,
                  threshold: float) -> dict[str, Any]:
    """training.metrics' classification metrics of the calibrated scores at the served threshold, plus more.

    Adds the false and true positive rates at that threshold (NaN without reals / fakes), the class
    counts, and the ROC AUC and ECE of the uncalibrated softmax, which show what calibration changed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    metrics: dict[str, Any] = classification_metrics(labels, calibrated, threshold)
    (true_negatives, false_positives), (false_negatives, true_positives) = metrics["confusion_matrix"]
    both = len(np.unique(labels)) == 2
    metrics.update(
        images=int(len(labels)), reals=int((labels == 0).sum()), fakes=int((labels == 1).sum()),
        threshold=float(threshold),
        fpr_at_threshold=_rate(false_positives, false_positives + true_negatives),
        tpr_at_threshold=_rate(true_positives, true_positives + false_negatives),
        uncalibrated_roc_auc=float(roc_auc_score(labels, uncalibrated)) if both else math.nan,
        uncalibrated_ece=expected_calibration_error(labels, uncalibrated),
    )
    return metrics


def one_class_note(labels: np.ndarray) -> str | None:
    """Why AUC, AP and EER are missing for these labels, or None when both classes are present."""
    present = {CLASS_NAMES[int(label)] for label in np.unique(labels)}
    if len(present) == 2:
        return None
    only = " and ".join(sorted(present)) or "no"
    return f"only {only} images: ROC AUC, average precision and EER need both classes"


def _arrays(items: Sequence[ScoredItem]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([item.label for item in items], dtype=np.int64),
            np.array([item.probability_fake for item in items], dtype=np.float64),
            np.array([item.probability_fake_uncalibrated for item in items], dtype=np.float64))


def by_condition(items: Iterable[ScoredItem]) -> dict[str, list[ScoredItem]]:
    """Rows grouped by condition, in first-seen order (clean first)."""
    grouped: dict[str, list[ScoredItem]] = {}
    for item in items:
        grouped.setdefault(item.condition, []).append(item)
    return grouped


def condition_summary(items: Sequence[ScoredItem], threshold: float) -> dict[str, Any]:
    """Metrics of one condition's rows plus how many images fell back to the whole image for want of a face."""
    labels, calibrated, uncalibrated = _arrays(items)
    summary = score_metrics(labels, calibrated, uncalibrated, threshold)
    summary["no_face_fallbacks"] = sum(item.scored == REGION_NO_FACE for item in items)
    summary["note"] = one_class_note(labels)
    summary["intervals"] = rate_intervals(labels, calibrated, threshold)
    return summary


def robustness_rows(summaries: Mapping[str, Mapping[str, Any]], descriptions: Mapping[str, str]) -> list[dict]:
    """One row per condition (clean first): AUC and its change vs clean, ECE and the rates at the served threshold."""
    clean_auc = summaries[CLEAN]["roc_auc"]
    rows = []
    for condition, summary in summaries.items():
        rows.append({
            "condition": condition,
            "description": descriptions.get(condition, "the images as decoded"),
            "roc_auc": summary["roc_auc"],
            "roc_auc_change": summary["roc_auc"] - clean_auc,
            "ece": summary["ece"],
            "fpr_at_threshold": summary["fpr_at_threshold"],
            "fpr_interval": summary["intervals"]["fpr_at_threshold"],
            "tpr_at_threshold": summary["tpr_at_threshold"],
            "tpr_interval": summary["intervals"]["tpr_at_threshold"],
            "accuracy": summary["accuracy"],
            "no_face_fallbacks": summary["no_face_fallbacks"],
        })
    return rows


def group_tables(items: Sequence[ScoredItem], columns: Sequence[str], threshold: float) -> dict[str, list[dict]]:
    """Per --group-by column, the metrics of each of its values (sorted), over the given (clean) rows."""
    tables: dict[str, list[dict]] = {}
    for column in columns:
        members: dict[str, list[ScoredItem]] = defaultdict(list)
        for item in items:
            members[item.groups.get(column, BLANK_GROUP)].append(item)
        tables[column] = [{"value": value, **condition_summary(members[value], threshold)}
                          for value in sorted(members)]
    return tables


# ---------------------------------------------------------------------------------------------------------------------
# Report (pure rendering, then I/O)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _with_interval(value: Any, interval: Sequence[float] | None) -> str:
    """'0.0323 [0.0089, 0.1099]': the figure and its 95 % interval, or the figure alone when there is none."""
    return _number(value) + ("" if interval is None else f" [{interval[0]:.4f}, {interval[1]:.4f}]")


def _signed(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """evaluation.md: headline metrics, robustness and per-group tables a user can paste into docs."""
    metrics, counts, model = report["metrics"], report["counts"], report["model"]
    threshold = report["threshold"]
    lines = [
        f"# Evaluation: {model['architecture']} on {report['data']['source']}", "",
        "```", report["command"], "```", "",
        f"- Model: `{model['folder']}` (TorchScript sha256 `{model['sha256'][:16]}`), served threshold "
        f"{threshold:.4f}, calibration {model['calibration']}.",
        f"- Data: {counts['files']} files" + (f" of split '{report['data']['split']}'" if report["data"]["split"]
                                               else "")
        + (f" (a random subset, --limit {report['data']['limit']})" if report["data"]["limit"] else "") +
        f"; {counts['images']} images scored ({counts['reals']} real, {counts['fakes']} fake"
        + (f", of which {counts['sbi_fakes']} SBI pseudo-fakes" if report["sbi"]["enabled"] else "") + "); "
        f"{counts['skipped']} unreadable files skipped; fingerprint `{report['data']['fingerprint'][:16]}`.",
        f"- Faces: {report['faces']['mode']} ({report['faces']['reason']})"
        + (f"; {counts['no_face_fallbacks']} images scored whole because no face was found."
           if report["faces"]["mode"] == "detect" else "."),
    ]
    if report["sbi"]["enabled"]:
        lines.append(f"- SBI: one self-blended pseudo-fake per real image (seed {report['sbi']['seed']})"
                     + (f"; {counts['sbi_no_face']} real images got no pseudo-fake because no face was found."
                        if report["faces"]["mode"] != "precropped" else "."))
    lines += ["", f"## Headline (calibrated scores, threshold {threshold:.4f})", ""]
    intervals = metrics["intervals"]
    headline = [("ROC AUC", metrics["roc_auc"], intervals.get("roc_auc")),
                ("average precision", metrics["average_precision"], None), ("accuracy", metrics["accuracy"], None),
                ("precision", metrics["precision"], None), ("recall", metrics["recall"], None),
                ("F1", metrics["f1"], None), ("EER", metrics["eer"], None), ("ECE (15 bins)", metrics["ece"], None),
                ("FPR at threshold", metrics["fpr_at_threshold"], intervals["fpr_at_threshold"]),
                ("TPR at threshold", metrics["tpr_at_threshold"], intervals["tpr_at_threshold"]),
                ("ROC AUC, uncalibrated", metrics["uncalibrated_roc_auc"], None),
                ("ECE, uncalibrated", metrics["uncalibrated_ece"], None)]
    lines += _table(("metric", "value [95 % interval]"),
                    ((name, _with_interval(value, interval)) for name, value, interval in headline))
    lines += ["", "Intervals: ROC AUC by bootstrap (1000 resamples of each class), rates by Wilson score."]
    (true_negatives, false_positives), (false_negatives, true_positives) = metrics["confusion_matrix"]
    lines += ["", f"Confusion at the threshold: {true_negatives} real kept real, {false_positives} real called fake, "
              f"{false_negatives} fakes missed, {true_positives} fakes caught."]
    if metrics.get("note"):
        lines += ["", f"Note: {metrics['note']}."]
    if len(report["robustness"]) > 1:
        lines += ["", "## Robustness (same images, degraded after decoding, before face detection)", ""]
        lines += _table(("condition", "ROC AUC", "Δ AUC vs clean", "ECE", "FPR at threshold", "TPR at threshold",
                         "no-face fallbacks"),
                        ((row["condition"], _number(row["roc_auc"]), _signed(row["roc_auc_change"]),
                          _number(row["ece"]), _with_interval(row["fpr_at_threshold"], row["fpr_interval"]),
                          _number(row["tpr_at_threshold"]), str(row["no_face_fallbacks"]))
                         for row in report["robustness"]))
        lines += [""] + [f"- {row['condition']}: {row['description']}" for row in report["robustness"]]
    for column, table in report["groups"].items():
        lines += ["", f"## By {column} (clean)", ""]
        lines += _table((column, "images", "real", "fake", "ROC AUC", "accuracy", "FPR at threshold",
                         "TPR at threshold", "ECE"),
                        ((row["value"], str(row["images"]), str(row["reals"]), str(row["fakes"]),
                          _number(row["roc_auc"]), _number(row["accuracy"]),
                          _with_interval(row["fpr_at_threshold"], row["intervals"]["fpr_at_threshold"]),
                          _number(row["tpr_at_threshold"]), _number(row["ece"])) for row in table))
        notes = [f"- {row['value']}: {row['note']}" for row in table if row["note"]]
        if notes:
            lines += ["", "n/a: a metric that needs both classes, or a rate with no image to count.", *notes]
    lines += ["", "Plots: " + ", ".join(f"`{PLOTS_FOLDER}/{Path(path).name}`" for path in report["plots"].values()),
              ""]
    return "\n".join(lines)


SCORE_COLUMNS = ("path", "label", "sbi", "condition", "probability_fake", "probability_fake_uncalibrated", "scored",
                 "faces_found", "face_x", "face_y", "face_width", "face_height", "subject")


def write_scores_csv(path: Path, items: Sequence[ScoredItem], group_columns: Sequence[str]) -> None:
    """scores.csv: one row per item and condition; probabilities at full float precision (repr)."""
    extra = [column if column not in SCORE_COLUMNS else f"group_{column}" for column in group_columns]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*SCORE_COLUMNS, *extra])
        for item in items:
            box = item.box.to_list() if item.box is not None else ["", "", "", ""]
            writer.writerow([item.path, CLASS_NAMES[item.label], int(item.sbi), item.condition,
                             repr(item.probability_fake), repr(item.probability_fake_uncalibrated), item.scored,
                             item.faces_found, *box, item.subject,
                             *(item.groups.get(column, BLANK_GROUP) for column in group_columns)])


def write_plots(folder: Path, conditions: Mapping[str, Sequence[ScoredItem]], threshold: float) -> dict[str, Path]:
    """ROC of every condition on one chart, reliability before/after calibration and the score histogram (clean)."""
    labels, calibrated, uncalibrated = _arrays(conditions[CLEAN])
    plots = {
        "reliability": plot_reliability(labels, uncalibrated, calibrated, folder / "reliability.png"),
        "score_histogram": plot_score_histogram(labels, calibrated, folder / "score_histogram.png", threshold),
    }
    if len(np.unique(labels)) == 2:  # a ROC curve needs both classes
        curves = {name: _arrays(items)[:2] for name, items in conditions.items()}
        plots["roc"] = plot_roc_curves(curves, folder / "roc.png", title="ROC per condition")
    return plots


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(folder: Path, detector: ExportedDetector) -> dict[str, Any]:
    """What tells this model apart from another: file hash, architecture, threshold, calibration, training data."""
    metadata = detector.metadata
    return {
        "folder": str(folder.resolve()),
        "sha256": _sha256(folder / MODEL_FILENAME),
        "architecture": metadata.architecture,
        "class_names": list(metadata.class_names),
        "threshold": metadata.threshold,
        "input_size": list(metadata.preprocessing.input_size),
        "calibration": detector.calibration.method,
        "faces": None if metadata.faces is None else metadata.faces.to_dict(),
        "trained_on_fingerprint": metadata.training.get("data_fingerprint"),
    }


@dataclass(frozen=True)
class EvaluationResult:
    """Where the report went, and its content."""

    report: dict[str, Any]
    json_path: Path
    markdown_path: Path
    scores_path: Path
    plots: dict[str, Path]

    def summary_line(self) -> str:
        """One line for the console."""
        metrics = self.report["metrics"]
        return (f"{self.report['counts']['images']} images: ROC AUC {_number(metrics['roc_auc'])}, accuracy "
                f"{_number(metrics['accuracy'], 3)}, FPR {_number(metrics['fpr_at_threshold'], 3)} and TPR "
                f"{_number(metrics['tpr_at_threshold'], 3)} at threshold {self.report['threshold']:.3f}, ECE "
                f"{_number(metrics['ece'], 3)}; report: {self.markdown_path}")


def _check_export(folder: Path) -> None:
    missing = [name for name in (MODEL_FILENAME, METADATA_FILENAME) if not (folder / name).is_file()]
    if missing:
        raise EvaluationError(f"--model {folder} is not an export folder: {' and '.join(missing)} missing; pass the "
                              "run's export/ folder (model.torchscript.pt, metadata.json, calibration.json)")


def evaluate(config: EvaluationConfig) -> EvaluationResult:
    """Runs the whole evaluation and writes evaluation.json, evaluation.md, scores.csv and plots/.

    Raises:
        EvaluationError: a flag, the export folder or a --group-by column is wrong.
        training.dataset.DatasetError: the dataset cannot be read (message names the file and the fix).

    """
    started = time.time()
    _check_export(config.model)
    detector = ExportedDetector.load(config.model, config.device)
    metadata = detector.metadata
    data = load_data(config, metadata.preprocessing.max_image_pixels)
    if not data.samples:
        raise EvaluationError(f"{config.dataset} has no readable image to evaluate")
    dataset_faces, faces_json = dataset_face_config(config.dataset, data.scanned.samples)
    plan = resolve_face_plan(config.faces, metadata.faces, dataset_faces)
    sbi = sbi_config_of(metadata.training) if config.sbi else None
    run = score_samples(data, detector, plan, config, sbi)

    threshold = metadata.threshold
    conditions = by_condition(run.items)
    summaries = {name: condition_summary(items, threshold) for name, items in conditions.items()}
    clean = conditions[CLEAN]
    # Bootstrap only where the headline is read: 1000 AUCs per condition and group would dominate the run.
    clean_labels, clean_scores, _ = _arrays(clean)
    summaries[CLEAN]["intervals"]["roc_auc"] = auc_interval(clean_labels, clean_scores, seed=config.seed)
    descriptions = {name: PERTURBATIONS[name].description for name in config.perturbations}
    config.output_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(config.output_dir / PLOTS_FOLDER, conditions, threshold)
    scores_path = config.output_dir / SCORES_CSV
    write_scores_csv(scores_path, run.items, config.group_by)

    report: dict[str, Any] = {
        "command": config.command or "training.evaluate.evaluate(...)",
        "config": config.to_dict(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_identity(config.model, detector),
        "data": {
            "source": str(config.dataset), "layout": data.scanned.layout, "split": config.split,
            "fingerprint": data.fingerprint(), "limit": config.limit, "excluded_by_split": data.excluded_by_split,
            "skipped": [{"path": str(skipped.path), "reason": skipped.reason} for skipped in data.scanned.skipped],
        },
        "faces": {"mode": plan.mode, "reason": plan.reason, "faces_json": faces_json,
                  "detection": None if plan.detection is None else plan.detection.to_dict()},
        "sbi": {"enabled": sbi is not None, "config": None if sbi is None else sbi.to_dict(),
                "seed": config.seed, "no_face": run.sbi_no_face},
        "counts": {
            "files": len(data.samples), "images": len(clean),
            "reals": sum(item.label == 0 for item in clean), "fakes": sum(item.label == 1 for item in clean),
            "sbi_fakes": run.sbi_fakes, "sbi_no_face": len(run.sbi_no_face),
            "sbi_ellipse_fallbacks": run.sbi_ellipse_fallbacks, "skipped": len(data.scanned.skipped),
            "no_face_fallbacks": summaries[CLEAN]["no_face_fallbacks"],
        },
        "threshold": threshold,
        "metrics": summaries[CLEAN],
        "robustness": robustness_rows(summaries, descriptions),
        "conditions": summaries,
        "groups": group_tables(clean, config.group_by, threshold),
        "plots": {name: str(path) for name, path in plots.items()},
        "scores": str(scores_path),
        "versions": package_versions(),
        "seconds": round(time.time() - started, 1),
    }
    json_path = config.output_dir / EVALUATION_JSON
    write_json(json_path, report)
    markdown_path = config.output_dir / EVALUATION_MD
    markdown_path.write_text(render_markdown(json.loads(json_path.read_text())))  # the JSON's nulls, not NaNs
    return EvaluationResult(report, json_path, markdown_path, scores_path, plots)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _epilog() -> str:
    def listing(title: str, entries: Mapping[str, Any]) -> str:
        lines = [f"  {name:16s} {entry if isinstance(entry, str) else entry[-1]}" for name, entry in entries.items()]
        return f"{title}:\n" + "\n".join(lines)

    return "\n\n".join([
        __doc__.split("\n\n", 2)[2].strip(),
        listing("perturbation groups (--perturbation GROUP)", PERTURBATION_GROUPS),
        listing("perturbations (--perturbation NAME, repeatable; training.perturbations.PERTURBATIONS)",
                PERTURBATIONS),
        listing("face modes (--faces)", FACE_MODES),
    ])


def build_parser() -> argparse.ArgumentParser:
    """The command's flags, each explained in --help."""
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    parser.add_argument("--model", type=Path, required=True,
                        help="export folder: model.torchscript.pt, metadata.json, calibration.json (RUN/export)")
    parser.add_argument("--dataset", type=Path, required=True,
                        help="labelled data: real/ + fake/ folders, train/val/test split folders, or a CSV manifest "
                             "(path,label[,subject][,split][,any group column]) such as a run's splits.csv")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the report, scores.csv and plots go")
    parser.add_argument("--split", help="keep only this split (train, val, test): the manifest's split column or the "
                                        "split folders; --split test on RUN/splits.csv is the run's held-out test set")
    parser.add_argument("--sbi", action="store_true",
                        help="add a self-blended pseudo-fake of every real image (deterministic per file and --seed), "
                             "so real photos alone can be evaluated; fakes present are scored too")
    parser.add_argument("--faces", choices=list(FACE_MODES), default="auto", help="how faces are found (see below)")
    parser.add_argument("--group-by", nargs="+", default=[], metavar="COLUMN",
                        help="also report metrics per value of these manifest columns (e.g. dataset expression); "
                             "split and subject work for any layout")
    parser.add_argument("--no-robustness", action="store_true", help="score the clean images only (4x faster)")
    parser.add_argument("--perturbation", action="append", choices=[*PERTURBATION_GROUPS, *PERTURBATIONS],
                        metavar="NAME", help="robustness/probe conditions to run, by name or group (repeatable; "
                                             "default: the robustness group; 'all' for every row listed below)")
    parser.add_argument("--batch-size", type=int, default=32, help="model inputs per forward pass (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="fixes SBI pseudo-fakes and the --limit subset (default 0)")
    parser.add_argument("--limit", type=int, help="evaluate a seeded random subset of N files, for a quick look")
    parser.add_argument("--device", default="cpu", help="torch device for the TorchScript model (default cpu)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> EvaluationConfig:
    """CLI → EvaluationConfig, with the command line recorded for the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    perturbations = () if args.no_robustness else expand_perturbations(args.perturbation or DEFAULT_PERTURBATIONS)
    try:
        return EvaluationConfig(
            model=args.model, dataset=args.dataset, output_dir=args.output_dir, split=args.split, sbi=args.sbi,
            faces=args.faces, group_by=tuple(args.group_by), perturbations=perturbations,
            batch_size=args.batch_size, seed=args.seed, limit=args.limit, device=args.device,
            command=shlex.join(["python", "-m", "training.evaluate", *argv]))
    except EvaluationError as error:
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; a bad dataset, model or column ends with the message, not a traceback."""
    config = parse_args(argv)
    try:
        result = evaluate(config)
    except (EvaluationError, DatasetError, PrepareError) as error:
        real_only = not config.sbi and "no readable 'fake'" in str(error)
        hint = "; to evaluate real photos alone, add --sbi" if real_only else ""
        sys.exit(f"error: {error}{hint}")
    print(result.summary_line())


if __name__ == "__main__":
    main()
