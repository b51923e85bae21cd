"""training/ensemble.py on two really trained tiny members: scores, threshold, report, and the same-data checks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from handler.ensemble_workflow import ENSEMBLE_FILENAME, EnsembleSpec
from handler.scoring import ExportedDetector, decode_for_scoring, regions_to_score
from tests.conftest import TINY_INPUT_SIZE
from training.config import TrainConfig
from training.ensemble import (
    ENSEMBLE_NAME,
    REPORT_JSON,
    REPORT_MD,
    SCORES_CSV,
    EnsembleConfig,
    EnsembleError,
    EnsembleResult,
    Member,
    evaluate_ensemble,
    helps_verdict,
    main,
    weighted_mean,
)
from training.metrics import choose_threshold, classification_metrics
from training.train import train

SECOND_ARCHITECTURE = "mobilenetv2_100"


def train_second_member(dataset: Path, output_dir: Path) -> Path:
    """A second tiny model on the same data, seed and fractions as conftest's tiny_training: the same split."""
    config = TrainConfig(dataset=dataset, output_dir=output_dir, model_name=SECOND_ARCHITECTURE, weights="none",
                         input_size=TINY_INPUT_SIZE, epochs=1, batch_size=4, val_fraction=0.25, test_fraction=0.25,
                         device="cpu")
    return train(config).export.model_path.parent


@pytest.fixture(scope="module")
def second_export(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_second_member(tiny_dataset, tmp_path_factory.mktemp("second_member"))


@pytest.fixture(scope="module")
def result(tiny_export: Path, second_export: Path, tmp_path_factory: pytest.TempPathFactory) -> EnsembleResult:
    members = (Member("resnet18", tiny_export, 3.0), Member("mobilenet", second_export, 1.0))
    return evaluate_ensemble(EnsembleConfig(members, tmp_path_factory.mktemp("ensemble_eval")))


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_ensemble_json_names_members_weights_and_a_threshold_the_workflow_loads(result: EnsembleResult,
                                                                                  tiny_export: Path) -> None:
    document = json.loads(result.ensemble_path.read_text())
    assert result.ensemble_path.name == ENSEMBLE_FILENAME
    spec = EnsembleSpec.from_dict(document)
    assert spec.weights == {"resnet18": 0.75, "mobilenet": 0.25}
    first, second = document["members"]
    assert first["architecture"] == "resnet18" and second["architecture"] == SECOND_ARCHITECTURE
    assert first["folder"] == str(tiny_export.resolve())
    assert first["trained_on_fingerprint"] == second["trained_on_fingerprint"] == document["data_fingerprint"]
    assert len(first["metadata_sha256"]) == 64 and first["splits_sha256"] == second["splits_sha256"]


def test_threshold_is_chosen_on_validation_from_the_weighted_mean(result: EnsembleResult) -> None:
    rows = read_scores(result.report_json.parent / SCORES_CSV)
    val = [row for row in rows if row["split"] == "val"]
    labels = np.array([int(row["label"]) for row in val])
    mean = np.array([0.75 * float(row["resnet18"]) + 0.25 * float(row["mobilenet"]) for row in val])
    np.testing.assert_allclose([float(row[ENSEMBLE_NAME]) for row in val], mean, atol=2e-6)
    expected = choose_threshold(labels, np.array([float(row[ENSEMBLE_NAME]) for row in val]), "youden")
    assert result.report["ensemble"]["threshold"] == pytest.approx(expected, abs=2e-6)


def test_report_metrics_are_the_test_split_metrics_of_each_model(result: EnsembleResult, tiny_export: Path) -> None:
    rows = [row for row in read_scores(result.report_json.parent / SCORES_CSV) if row["split"] == "test"]
    labels = np.array([int(row["label"]) for row in rows])
    table = result.report["test"]["metrics"]
    assert set(table) == {"resnet18", "mobilenet", ENSEMBLE_NAME}
    for name, row in table.items():
        expected = classification_metrics(labels, np.array([float(r[name]) for r in rows]), row["threshold"])
        assert row["accuracy"] == pytest.approx(expected["accuracy"])
        assert row["f1"] == pytest.approx(expected["f1"])
        assert row["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    assert table["resnet18"]["threshold"] == ExportedDetector.load(tiny_export).metadata.threshold
    markdown = result.report_md.read_text()
    assert result.report_md.name == REPORT_MD and result.report_json.name == REPORT_JSON
    assert "| ensemble |" in markdown and result.report["verdict"]["sentence"] in markdown
    assert (result.report_json.parent / "plots" / "roc_test.png").stat().st_size > 1000


def test_member_scores_are_what_the_serving_path_answers(result: EnsembleResult, tiny_export: Path) -> None:
    detector = ExportedDetector.load(tiny_export)
    rows = read_scores(result.report_json.parent / SCORES_CSV)
    for row in rows[:3]:
        preprocess, faces = detector.metadata.preprocessing, detector.metadata.faces
        rgb = decode_for_scoring(Path(row["path"]).read_bytes(), preprocess, faces)
        regions = regions_to_score(rgb, preprocess, faces)
        served = max(score.calibrated for score in detector.score(torch.stack(regions.inputs)))
        assert float(row["resnet18"]) == pytest.approx(served, abs=2e-6)


def test_refuses_members_with_another_split(tiny_export: Path, second_export: Path, tmp_path: Path) -> None:
    run = tmp_path / "other_run"
    shutil.copytree(second_export.parent, run, ignore=shutil.ignore_patterns("checkpoint.pt"))
    lines = (run / "splits.csv").read_text().splitlines()
    header, first, *rest = lines
    moved = first.rsplit(",", 1)[0] + "," + ("val" if not first.endswith(",val") else "train")
    (run / "splits.csv").write_text("\n".join([header, moved, *rest]) + "\n")
    config = EnsembleConfig((Member("a", tiny_export), Member("b", run / "export")), tmp_path / "out")
    with pytest.raises(EnsembleError, match="split the data differently"):
        evaluate_ensemble(config)


def test_refuses_members_trained_on_other_data(tiny_export: Path, second_export: Path, tmp_path: Path) -> None:
    run = tmp_path / "other_data"
    shutil.copytree(second_export.parent, run, ignore=shutil.ignore_patterns("checkpoint.pt"))
    metadata = json.loads((run / "export" / "metadata.json").read_text())
    metadata["training"]["data_fingerprint"] = "0" * 64
    (run / "export" / "metadata.json").write_text(json.dumps(metadata))
    config = EnsembleConfig((Member("a", tiny_export), Member("b", run / "export")), tmp_path / "out")
    with pytest.raises(EnsembleError, match="different data"):
        evaluate_ensemble(config)


def test_weighted_mean_and_helps_verdict() -> None:
    mean = weighted_mean({"a": np.array([0.2, 1.0]), "b": np.array([0.6, 0.0])}, {"a": 1.0, "b": 3.0})
    np.testing.assert_allclose(mean, [0.5, 0.25])
    table = {"a": {"roc_auc": 0.90, "accuracy": 0.8}, "b": {"roc_auc": 0.95, "accuracy": 0.85},
             ENSEMBLE_NAME: {"roc_auc": 0.97, "accuracy": 0.85}}
    verdict = helps_verdict(table, ["a", "b"])
    assert verdict["helps"] and verdict["best_member"] == "b" and verdict["roc_auc_gain"] == pytest.approx(0.02)
    table[ENSEMBLE_NAME]["accuracy"] = 0.80  # better ranking, but more mistakes at its threshold
    assert not helps_verdict(table, ["a", "b"])["helps"]


def test_cli_refuses_a_single_member_with_exit_2(tiny_export: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--member", f"a={tiny_export}", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "at least two" in capsys.readouterr().err
