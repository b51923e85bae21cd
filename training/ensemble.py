"""Evaluates two (or more) exported models against their ensemble on the same split, and writes ensemble.json.

The ensemble is what the `deepfake_ensemble` TorchServe workflow serves (handler/ensemble_workflow.py): the
weighted mean of the members' CALIBRATED probability of fake, judged against a threshold of its own. That
threshold is chosen on the validation split by the rule training uses (training.metrics.choose_threshold, the
members' `threshold_rule`), never on test. Every member is scored through handler.scoring.ExportedDetector via
training.evaluate's scoring (decode, faces or whole image, TorchScript, calibration, most-fake region), so each
figure is what the service would answer for the same file.

The members must have been trained on the same data with the same split: the same data fingerprint in
metadata.json and identical run splits.csv files (same files, labels and split of every file). Otherwise
"validation" and "test" would mean different images for different members, and the comparison would leak.

Usage:
    python -m training.ensemble --member resnet18=build/ensemble/resnet18/export \
        --member efficientnet=build/demo/run/export --output-dir build/ensemble/eval [--weight resnet18=1]

Outputs in --output-dir: ensemble.json (members with their identities, weights, threshold: what
scripts/package_workflow.py packs into the .war), ensemble_report.json and ensemble_report.md (per member and
ensemble: ROC AUC, accuracy, F1 at its threshold, log loss, ECE on the test split, and whether the ensemble
helps), scores.csv and plots/roc_test.png.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from handler.ensemble_workflow import DEFAULT_BORDERLINE_BAND, ENSEMBLE_FILENAME, RULE
from handler.metadata import METADATA_FILENAME, MODEL_FILENAME
from handler.scoring import ExportedDetector
from training.evaluate import (
    EvaluationConfig,
    dataset_face_config,
    load_data,
    model_identity,
    resolve_face_plan,
    score_samples,
)
from training.jsonsafe import write_json
from training.metrics import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES, choose_threshold, classification_metrics
from training.plots import plot_roc_curves
from training.report import package_versions

SPLITS_FILENAME = "splits.csv"  # written by training.train next to export/: every file with its label and split
REPORT_JSON = "ensemble_report.json"
REPORT_MD = "ensemble_report.md"
SCORES_CSV = "scores.csv"
ENSEMBLE_NAME = "ensemble"
# The figures of the report table, in order; all from training.metrics.classification_metrics.
TABLE_METRICS = ("roc_auc", "accuracy", "f1", "loss", "ece")
# "Helps" is judged on ROC AUC (threshold-free) and, at each model's own threshold, on accuracy: the ensemble
# helps when it beats the best member on ROC AUC without losing accuracy to it.
HELPS_TOLERANCE = 1e-9


class EnsembleError(ValueError):
    """The ensemble cannot be evaluated as asked; the message names the member or file at fault and the fix."""


@dataclass(frozen=True)
class Member:
    """One exported model in the ensemble.

    Attributes:
        name: the workflow node name (letters, digits, '_'): how the workflow and ensemble.json refer to it.
        export_dir: the run's export/ folder; its parent holds the run's splits.csv.
        weight: relative weight in the mean (normalised over the members).

    """

    name: str
    export_dir: Path
    weight: float = 1.0

    @property
    def splits_file(self) -> Path:
        """The run's splits.csv: which file was train, val or test for this member."""
        return self.export_dir.parent / SPLITS_FILENAME


@dataclass(frozen=True)
class EnsembleConfig:
    """What training.ensemble does.

    Attributes:
        members: at least two; names unique.
        output_dir: where ensemble.json and the report go.
        threshold_rule: key of training.metrics.THRESHOLD_RULES; None = the rule the members were trained with.
        batch_size: images per TorchScript call.
        device: torch device the members run on.
        name: the workflow name the ensemble is served under.
        command: the command line, recorded in the report (set by the CLI).

    """

    members: tuple[Member, ...]
    output_dir: Path
    threshold_rule: str | None = None
    batch_size: int = 32
    device: str = "cpu"
    name: str = "deepfake_ensemble"
    command: str = ""
    borderline_band: tuple[float, float] = field(default=DEFAULT_BORDERLINE_BAND)

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise EnsembleError(f"an ensemble needs at least two --member NAME=EXPORT_DIR, got {len(self.members)}")
        names = [member.name for member in self.members]
        if len(set(names)) != len(names):
            raise EnsembleError(f"member names must be unique, got {names}")
        for member in self.members:
            if not member.name.replace("_", "").isalnum() or not member.name.isascii():
                raise EnsembleError(f"member name {member.name!r}: use letters, digits and '_' only (it becomes a "
                                    "TorchServe model name)")
            if not math.isfinite(member.weight) or member.weight < 0:
                raise EnsembleError(f"member {member.name}: weight must be finite and >= 0, got {member.weight}")
        if sum(member.weight for member in self.members) <= 0:
            raise EnsembleError("at least one member needs a weight above 0")
        if self.threshold_rule is not None and self.threshold_rule not in THRESHOLD_RULES:
            raise EnsembleError(f"--threshold-rule {self.threshold_rule!r}: choose one of {sorted(THRESHOLD_RULES)}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_rows(path: Path) -> list[tuple[str, str, str]]:
    """The (path, label, split) rows of a run's splits.csv, sorted: what "the same split" compares."""
    with path.open(newline="", encoding="utf-8") as handle:
        return sorted((row["path"], row["label"], row["split"]) for row in csv.DictReader(handle))


def check_same_data(members: Sequence[Member], metadata: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuses members trained on different data or with different splits.

    Raises:
        EnsembleError: an export or splits.csv is missing, or fingerprints or splits differ (the message says which).

    """
    for member in members:
        for required in (member.export_dir / MODEL_FILENAME, member.export_dir / METADATA_FILENAME, member.splits_file):
            if not required.is_file():
                raise EnsembleError(f"member {member.name}: {required} is missing; pass a training run's export/ "
                                    f"folder (the run folder above it holds {SPLITS_FILENAME})")
    first = members[0]
    first_fingerprint = metadata[first.name].get("data_fingerprint")
    first_rows = split_rows(first.splits_file)
    for member in members[1:]:
        fingerprint = metadata[member.name].get("data_fingerprint")
        if fingerprint != first_fingerprint:
            raise EnsembleError(f"members {first.name} and {member.name} were trained on different data (data "
                                f"fingerprints {first_fingerprint} and {fingerprint}); train both on the same "
                                "dataset with the same seed")
        rows = split_rows(member.splits_file)
        if rows != first_rows:
            differing = len(set(rows) ^ set(first_rows))
            raise EnsembleError(f"members {first.name} and {member.name} split the data differently ({differing} "
                                f"rows of {first.splits_file} and {member.splits_file} differ); train both with the "
                                "same seed, val_fraction and test_fraction")


def member_scores(member: Member, detector: ExportedDetector, split: str, config: EnsembleConfig,
                  ) -> dict[str, tuple[int, float]]:
    """Path → (label, calibrated probability of fake) for every file of `split`, scored as the service scores it."""
    evaluation = EvaluationConfig(model=member.export_dir, dataset=member.splits_file, output_dir=config.output_dir,
                                  split=split, perturbations=(), batch_size=config.batch_size, device=config.device)
    data = load_data(evaluation, detector.metadata.preprocessing.max_image_pixels)
    dataset_faces, _ = dataset_face_config(evaluation.dataset, data.scanned.samples)
    plan = resolve_face_plan(evaluation.faces, detector.metadata.faces, dataset_faces)
    run = score_samples(data, detector, plan, evaluation, None)
    return {item.path: (item.label, item.probability_fake) for item in run.items}


def aligned(scores: Mapping[str, Mapping[str, tuple[int, float]]],
            ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """The files every member scored, their labels, and each member's probabilities in that order.

    Raises:
        EnsembleError: the members scored different files or disagree on a label.

    """
    names = list(scores)
    paths = sorted(scores[names[0]])
    for name in names[1:]:
        if sorted(scores[name]) != paths:
            raise EnsembleError(f"members {names[0]} and {name} scored different files; check their splits.csv")
    labels = np.array([scores[names[0]][path][0] for path in paths], dtype=np.int64)
    for name in names[1:]:
        if any(scores[name][path][0] != label for path, label in zip(paths, labels, strict=True)):
            raise EnsembleError(f"members {names[0]} and {name} disagree on labels")
    return paths, labels, {name: np.array([scores[name][path][1] for path in paths]) for name in names}


def weighted_mean(probabilities: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """The ensemble's probability of fake: the weighted mean of the members' calibrated probabilities."""
    total = sum(weights.values())
    return sum(weights[name] / total * probabilities[name] for name in weights)


def helps_verdict(table: Mapping[str, Mapping[str, float]], members: Sequence[str]) -> dict[str, Any]:
    """Whether the ensemble beats its best member on the test split, and by how much (ROC AUC, accuracy)."""
    best = max(members, key=lambda name: (table[name]["roc_auc"], table[name]["accuracy"]))
    # Rounded (and -0.0 made 0.0): float noise between two equal AUCs is no difference to report.
    auc_gain = round(table[ENSEMBLE_NAME]["roc_auc"] - table[best]["roc_auc"], 6) or 0.0
    accuracy_gain = round(table[ENSEMBLE_NAME]["accuracy"] - table[best]["accuracy"], 6) or 0.0
    helps = auc_gain > HELPS_TOLERANCE and accuracy_gain >= -HELPS_TOLERANCE
    sentence = (f"ensemble {'helps' if helps else 'does not help'} on this test split: ROC AUC "
                f"{table[ENSEMBLE_NAME]['roc_auc']:.4f} vs {table[best]['roc_auc']:.4f} for the best member ({best}), "
                f"{auc_gain:+.4f}; accuracy {accuracy_gain:+.4f} at each model's own threshold")
    return {"helps": helps, "best_member": best, "roc_auc_gain": auc_gain, "accuracy_gain": accuracy_gain,
            "sentence": sentence}


def threshold_rule_of(config: EnsembleConfig, metadata: Mapping[str, Mapping[str, Any]]) -> str:
    """--threshold-rule, else the rule the members were trained with (they must agree), else training's default."""
    if config.threshold_rule is not None:
        return config.threshold_rule
    rules = {str(training.get("threshold_rule", DEFAULT_THRESHOLD_RULE)) for training in metadata.values()}
    if len(rules) > 1:
        raise EnsembleError(f"the members chose their thresholds by different rules {sorted(rules)}; pass "
                            "--threshold-rule to say which the ensemble uses")
    return rules.pop()


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report's table and verdict, ready to paste into docs/ENSEMBLES.md."""
    test = report["test"]
    lines = [f"# Ensemble evaluation: {', '.join(report['members'])}", "",
             f"Test split: {test['images']} images ({test['fakes']} fake); ensemble threshold "
             f"{report['ensemble']['threshold']:.4f} chosen on {report['validation']['images']} validation images by "
             f"the `{report['ensemble']['threshold_rule']}` rule; weights "
             + ", ".join(f"{name} {weight:.2f}" for name, weight in report["ensemble"]["weights"].items()) + ".", "",
             "| model | threshold | ROC AUC | accuracy | F1 | log loss | ECE |", "|---|---|---|---|---|---|---|"]
    for name, row in test["metrics"].items():
        lines.append(f"| {name} | {row['threshold']:.4f} | " + " | ".join(f"{row[key]:.4f}" for key in TABLE_METRICS)
                     + " |")
    lines += ["", report["verdict"]["sentence"] + ".", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class EnsembleResult:
    """Where everything went, and the report."""

    report: dict[str, Any]
    ensemble_path: Path
    report_json: Path
    report_md: Path

    def summary_line(self) -> str:
        """One line for the console."""
        return f"{self.report['verdict']['sentence']}; wrote {self.ensemble_path} and {self.report_md}"


def evaluate_ensemble(config: EnsembleConfig) -> EnsembleResult:
    """Scores every member on validation and test, chooses the ensemble threshold, writes ensemble.json and the report.

    Raises:
        EnsembleError: members trained on different data or splits, or files missing.

    """
    started = time.time()
    metadata: dict[str, dict[str, Any]] = {}
    detectors: dict[str, ExportedDetector] = {}
    for member in config.members:
        if not (member.export_dir / METADATA_FILENAME).is_file():
            raise EnsembleError(f"member {member.name}: {member.export_dir / METADATA_FILENAME} is missing; pass a "
                                "training run's export/ folder")
        detectors[member.name] = ExportedDetector.load(member.export_dir, config.device)
        metadata[member.name] = dict(detectors[member.name].metadata.training)
    check_same_data(config.members, metadata)
    rule = threshold_rule_of(config, metadata)
    weights = {member.name: member.weight / sum(m.weight for m in config.members) for member in config.members}

    splits: dict[str, tuple[list[str], np.ndarray, dict[str, np.ndarray]]] = {}
    for split in ("val", "test"):
        scores = {member.name: member_scores(member, detectors[member.name], split, config)
                  for member in config.members}
        paths, labels, probabilities = aligned(scores)
        probabilities[ENSEMBLE_NAME] = weighted_mean(probabilities, weights)
        splits[split] = (paths, labels, probabilities)

    _, val_labels, val_probabilities = splits["val"]
    threshold = choose_threshold(val_labels, val_probabilities[ENSEMBLE_NAME], rule)
    thresholds = {name: float(detectors[name].metadata.threshold) for name in detectors}
    thresholds[ENSEMBLE_NAME] = float(threshold)

    test_paths, test_labels, test_probabilities = splits["test"]
    table = {name: {"threshold": thresholds[name],
                    **classification_metrics(test_labels, probabilities, thresholds[name])}
             for name, probabilities in test_probabilities.items()}
    member_names = [member.name for member in config.members]
    verdict = helps_verdict(table, member_names)

    config.output_dir.mkdir(parents=True, exist_ok=True)
    identities = {member.name: {**model_identity(member.export_dir, detectors[member.name]),
                                "metadata_sha256": _sha256(member.export_dir / METADATA_FILENAME),
                                "splits_sha256": _sha256(member.splits_file)}
                  for member in config.members}
    ensemble_document = {
        "schema_version": 1,
        "name": config.name,
        "rule": RULE,
        "threshold": float(threshold),
        "threshold_rule": rule,
        "borderline_band": list(config.borderline_band),
        "members": [{"name": member.name, "weight": weights[member.name], **identities[member.name]}
                    for member in config.members],
        "data_fingerprint": metadata[member_names[0]].get("data_fingerprint"),
        "validation": {"images": len(val_labels), "metrics_at_threshold": classification_metrics(
            val_labels, val_probabilities[ENSEMBLE_NAME], threshold)},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ensemble_path = config.output_dir / ENSEMBLE_FILENAME
    write_json(ensemble_path, ensemble_document)

    curves = {name: (test_labels, probabilities) for name, probabilities in test_probabilities.items()}
    roc_path = plot_roc_curves(curves, config.output_dir / "plots" / "roc_test.png", title="ROC on the test split")
    scores_path = config.output_dir / SCORES_CSV
    with scores_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "label", *test_probabilities])
        for split, (paths, labels, probabilities) in splits.items():
            for index, path in enumerate(paths):
                writer.writerow([split, path, int(labels[index]),
                                 *(f"{probabilities[name][index]:.6f}" for name in probabilities)])

    report = {
        "command": config.command or "training.ensemble.evaluate_ensemble(...)",
        "created": ensemble_document["created"],
        "members": member_names,
        "ensemble": {"rule": RULE, "weights": weights, "threshold": float(threshold), "threshold_rule": rule,
                     "file": str(ensemble_path)},
        "identities": identities,
        "validation": {"images": len(val_labels), "fakes": int(val_labels.sum())},
        "test": {"images": len(test_labels), "fakes": int(test_labels.sum()), "metrics": table},
        "verdict": verdict,
        "plots": {"roc_test": str(roc_path)},
        "scores": str(scores_path),
        "versions": package_versions(),
        "seconds": round(time.time() - started, 1),
    }
    report_json = config.output_dir / REPORT_JSON
    write_json(report_json, report)
    report_md = config.output_dir / REPORT_MD
    report_md.write_text(render_markdown(json.loads(report_json.read_text())), encoding="utf-8")
    return EnsembleResult(report, ensemble_path, report_json, report_md)


def _key_value(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", action="append", type=_key_value, required=True, metavar="NAME=EXPORT_DIR",
                        help="a member: its node name and its run's export/ folder (repeat, at least twice)")
    parser.add_argument("--weight", action="append", type=_key_value, default=[], metavar="NAME=W",
                        help="relative weight of a member (default 1 each)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--threshold-rule", choices=sorted(THRESHOLD_RULES), default=None,
                        help="how the ensemble threshold is chosen on validation (default: the members' rule)")
    parser.add_argument("--name", default="deepfake_ensemble", help="workflow name it is served under")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> EnsembleConfig:
    """EnsembleConfig from the command line."""
    args = build_parser().parse_args(argv)
    weights = {name: float(value) for name, value in args.weight}
    names = [name for name, _ in args.member]
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise EnsembleError(f"--weight for unknown member(s) {unknown}; members are {names}")
    members = tuple(Member(name, Path(folder), weights.get(name, 1.0)) for name, folder in args.member)
    command = shlex.join([sys.executable, "-m", "training.ensemble", *(argv if argv is not None else sys.argv[1:])])
    return EnsembleConfig(members, args.output_dir, args.threshold_rule, args.batch_size, args.device, args.name,
                          command)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: prints the verdict line; exits 2 with the reason when the members do not fit."""
    try:
        result = evaluate_ensemble(parse_args(argv))
    except EnsembleError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(result.summary_line())


if __name__ == "__main__":
    main()
