"""The evaluation command on the tiny export: its numbers against sklearn and the served path, its files, its flags."""

import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from handler.faces import FaceConfig, crop_face, detect_faces
from handler.forensics import decode_rgb
from handler.metadata import METADATA_FILENAME
from handler.scoring import ExportedDetector, decode_for_scoring, most_fake, regions_to_score
from training import evaluate as evaluate_module
from training.dataset import scan_dataset
from training.evaluate import (
    CLEAN,
    EVALUATION_JSON,
    EVALUATION_MD,
    REGION_PRECROPPED,
    SCORES_CSV,
    EvaluationConfig,
    EvaluationError,
    evaluate,
    main,
    regions_for,
    resolve_face_plan,
    sbi_config_of,
)
from training.metrics import equal_error_rate, expected_calibration_error
from training.perturbations import DEFAULT_PERTURBATIONS, PERTURBATION_GROUPS, PERTURBATIONS, Perturbation
from training.prepare import FACES_FILENAME, read_face_config
from training.pseudo_fakes import PseudoFakeMaker, twin
from training.sbi import SbiConfig, image_rng, inner_face_box, self_blend

from .dataset_helpers import images, write_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_scores(output_dir: Path) -> list[dict[str, str]]:
    with (output_dir / SCORES_CSV).open(newline="") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], name: str, condition: str = CLEAN) -> np.ndarray:
    chosen = [row for row in rows if row["condition"] == condition]
    if name == "label":
        return np.array([row["label"] == "fake" for row in chosen], dtype=np.int64)
    return np.array([float(row[name]) for row in chosen])


def read_report(output_dir: Path) -> dict:
    return json.loads((output_dir / EVALUATION_JSON).read_text())


def run(model: Path, dataset: Path, output_dir: Path, **settings) -> dict:
    evaluate(EvaluationConfig(model=model, dataset=dataset, output_dir=output_dir, **settings))
    return read_report(output_dir)


@pytest.fixture(scope="module")
def photos(face_photos_dir) -> list[Path]:
    """The first two photos of each source set (london, amfd) of the shared real faces, read in place."""
    rows = list(csv.DictReader((face_photos_dir / "manifest.csv").open()))
    chosen: dict[str, list[Path]] = {}
    for row in rows:
        if len(chosen.setdefault(row["dataset"], [])) < 2:
            chosen[row["dataset"]].append(face_photos_dir / row["path"])
    found = [path for paths in chosen.values() for path in paths]
    assert len(found) == 4, f"expected two photos of each of london and amfd in {face_photos_dir}"
    return found


@pytest.fixture(scope="module")
def crops(photos, tmp_path_factory) -> Path:
    """Real face crops cut as training.prepare cuts them, a real-only manifest with groups, and faces.json."""
    root = tmp_path_factory.mktemp("crops")
    (root / "real").mkdir()
    faces = FaceConfig()
    rows = []
    for photo in photos:
        rgb = decode_rgb(photo.read_bytes())
        crop = crop_face(rgb, detect_faces(rgb, faces)[0], faces.margin)
        name = f"real/{photo.parent.name}_{photo.stem}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        rows.append([name, "real", photo.stem.split("_")[0], photo.parent.name])
    write_csv(root / "manifest.csv", ["path", "label", "subject", "dataset"], rows)
    (root / FACES_FILENAME).write_text(json.dumps({"schema_version": 1, "faces": faces.to_dict()}))
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def clean_run(tiny_export, tiny_dataset, tmp_path_factory) -> Path:
    """The tiny demo set through the tiny export, with every perturbation, via the command line."""
    output_dir = tmp_path_factory.mktemp("clean_run")
    main(["--model", str(tiny_export), "--dataset", str(tiny_dataset), "--output-dir", str(output_dir),
          "--batch-size", "7"])  # 7: batches straddle images and conditions
    return output_dir


# --- numbers ---------------------------------------------------------------------------------------------------------


def test_metrics_equal_sklearn_on_the_scores_written(clean_run):
    report, rows = read_report(clean_run), read_scores(clean_run)
    labels, probability = column(rows, "label"), column(rows, "probability_fake")
    threshold = report["threshold"]
    predicted = (probability >= threshold).astype(int)
    metrics = report["metrics"]
    assert len(labels) == report["counts"]["images"] == 24
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probability))
    assert metrics["average_precision"] == pytest.approx(average_precision_score(labels, probability))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["precision"] == pytest.approx(precision_score(labels, predicted, zero_division=0))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predicted, zero_division=0))
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted, zero_division=0))
    assert metrics["eer"] == pytest.approx(equal_error_rate(labels, probability))
    assert metrics["ece"] == pytest.approx(expected_calibration_error(labels, probability))
    uncalibrated = column(rows, "probability_fake_uncalibrated")
    assert metrics["uncalibrated_roc_auc"] == pytest.approx(roc_auc_score(labels, uncalibrated))
    assert metrics["uncalibrated_ece"] == pytest.approx(expected_calibration_error(labels, uncalibrated))


def test_rates_at_the_served_threshold_are_counts_from_the_scores(clean_run, tiny_export):
    report, rows = read_report(clean_run), read_scores(clean_run)
    served = json.loads((tiny_export / "metadata.json").read_text())["threshold"]
    assert report["threshold"] == served
    labels, probability = column(rows, "label"), column(rows, "probability_fake")
    false_positives = int(((labels == 0) & (probability >= served)).sum())
    true_positives = int(((labels == 1) & (probability >= served)).sum())
    reals, fakes = int((labels == 0).sum()), int((labels == 1).sum())
    assert report["metrics"]["fpr_at_threshold"] == pytest.approx(false_positives / reals)
    assert report["metrics"]["tpr_at_threshold"] == pytest.approx(true_positives / fakes)
    assert report["metrics"]["confusion_matrix"] == [[reals - false_positives, false_positives],
                                                     [fakes - true_positives, true_positives]]
    assert (report["counts"]["reals"], report["counts"]["fakes"]) == (reals, fakes)


def test_scores_are_what_the_served_path_gives_each_file(clean_run, tiny_export, tiny_dataset):
    detector = ExportedDetector.load(tiny_export)
    rows = [row for row in read_scores(clean_run) if row["condition"] == CLEAN]
    for row in rows[::5]:
        rgb = decode_for_scoring((tiny_dataset / row["path"]).read_bytes(), detector.metadata.preprocessing, None)
        regions = regions_to_score(rgb, detector.metadata.preprocessing, None)
        scores = detector.score(torch.stack(regions.inputs))
        assert float(row["probability_fake"]) == pytest.approx(scores[most_fake(scores)].calibrated, abs=1e-6)
        assert row["scored"] == "whole_image"


def test_large_jpegs_are_decoded_as_the_service_decodes_them(tiny_export, tiny_dataset, tmp_path):
    """A model trained with jpeg_reduced_decode is served reduced-size decodes of large JPEGs: evaluate scores those."""
    detector = ExportedDetector.load(tiny_export)
    preprocessing = detector.metadata.preprocessing
    assert preprocessing.jpeg_reduced_decode  # new trainings set it
    large = tmp_path / "large"
    for label in ("real", "fake"):
        (large / label).mkdir(parents=True)
        for path in sorted((tiny_dataset / label).glob("*.jpg"))[:3]:
            rgb = cv2.resize(decode_rgb(path.read_bytes()), (640, 640), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(large / label / path.name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    run(tiny_export, large, tmp_path / "out", faces="off", perturbations=())
    differs = False
    for row in read_scores(tmp_path / "out"):
        data = (large / row["path"]).read_bytes()
        served = regions_to_score(decode_for_scoring(data, preprocessing, None), preprocessing, None)
        full = regions_to_score(decode_rgb(data), preprocessing, None)
        [score] = detector.score(torch.stack(served.inputs))
        assert float(row["probability_fake"]) == pytest.approx(score.calibrated, abs=1e-6)
        differs |= not torch.equal(served.inputs[0], full.inputs[0])
    assert differs  # the reduced decode really is another input than the full-size one


def test_robustness_rows_recompute_from_the_scores(clean_run):
    report, rows = read_report(clean_run), read_scores(clean_run)
    assert [row["condition"] for row in report["robustness"]] == [CLEAN, *DEFAULT_PERTURBATIONS]
    clean_auc = roc_auc_score(column(rows, "label"), column(rows, "probability_fake"))
    for entry in report["robustness"]:
        labels, probability = column(rows, "label", entry["condition"]), column(rows, "probability_fake",
                                                                                 entry["condition"])
        assert len(labels) == 24  # the same images in every condition
        auc = roc_auc_score(labels, probability)
        assert entry["roc_auc"] == pytest.approx(auc)
        assert entry["roc_auc_change"] == pytest.approx(auc - clean_auc)
        assert entry["ece"] == pytest.approx(expected_calibration_error(labels, probability))
        real_scores = probability[labels == 0]
        assert entry["fpr_at_threshold"] == pytest.approx((real_scores >= report["threshold"]).mean())
    jpeg = column(rows, "probability_fake", "jpeg_q50")
    assert not np.array_equal(jpeg, column(rows, "probability_fake")), "JPEG q50 changed no score at all"


def test_the_trainers_split_csv_reproduces_the_runs_test_metrics(tiny_training, tiny_export, tmp_path):
    # splits.csv + --split test evaluates exactly the run's held-out images; through the TorchScript export
    # and serving's preprocessing they must score as the trainer measured them on the eager model.
    splits_csv = tiny_training.report_path.parent / "splits.csv"
    with splits_csv.open(newline="") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    report = run(tiny_export, splits_csv, tmp_path, split="test", perturbations=())
    assert report["counts"]["files"] == len(test_rows)
    assert report["data"]["excluded_by_split"] > 0
    evaluated = {Path(row["path"]).name for row in read_scores(tmp_path)}
    assert evaluated == {Path(row["path"]).name for row in test_rows}
    trained = json.loads((tiny_export / "metadata.json").read_text())["training"]["evaluation"]["calibrated"]
    assert report["metrics"]["confusion_matrix"] == trained["confusion_matrix"]
    for key in ("roc_auc", "average_precision", "accuracy", "ece"):
        # The trainer measured the eager model; serving (and evaluate) run it frozen in channels_last, whose
        # logits differ by ~1e-5 (folded BatchNorm, another summation order).
        assert report["metrics"][key] == pytest.approx(trained[key], abs=1e-4), key


# --- data handling ---------------------------------------------------------------------------------------------------


@pytest.fixture
def split_manifest(tiny_dataset, tmp_path) -> Path:
    rows = []
    for index, path in enumerate(images(tiny_dataset, "real") + images(tiny_dataset, "fake")):
        rows.append([str(path), path.parent.name, f"person-{index}", ("train", "test", "validation")[index % 3],
                     "studio" if index % 2 else "phone"])
    return write_csv(tmp_path / "manifest.csv", ["path", "label", "subject", "split", "camera"], rows)


def test_split_keeps_only_that_split(tiny_export, split_manifest, tmp_path):
    with split_manifest.open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    report = run(tiny_export, split_manifest, tmp_path / "out", split="test", perturbations=())
    wanted = {row["path"] for row in manifest if row["split"] == "test"}
    assert {row["path"] for row in read_scores(tmp_path / "out")} == wanted
    assert report["counts"]["files"] == len(wanted) == 8
    assert report["data"]["excluded_by_split"] == 16
    # "validation" in the manifest and --split val are the same split
    report = run(tiny_export, split_manifest, tmp_path / "val", split="validation", perturbations=())
    assert report["config"]["split"] == "val" and report["counts"]["files"] == 8


def test_split_on_a_dataset_without_splits_says_so(tiny_export, tiny_dataset, tmp_path):
    with pytest.raises(EvaluationError, match="says nothing about splits"):
        run(tiny_export, tiny_dataset, tmp_path, split="test")
    assert not (tmp_path / EVALUATION_JSON).exists()


def test_corrupt_file_is_skipped_and_counted(tiny_export, dataset_copy, tmp_path):
    (dataset_copy / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = run(tiny_export, dataset_copy, tmp_path, perturbations=())
    assert report["counts"]["skipped"] == 1
    assert report["data"]["skipped"][0]["path"].endswith("broken.jpg")
    assert "could not be decoded" in report["data"]["skipped"][0]["reason"]
    assert report["counts"]["files"] == 24
    assert all("broken" not in row["path"] for row in read_scores(tmp_path))
    assert "1 unreadable files skipped" in (tmp_path / EVALUATION_MD).read_text()


def test_group_by_gives_a_table_per_column_value(tiny_export, split_manifest, tmp_path):
    report = run(tiny_export, split_manifest, tmp_path, group_by=("camera", "split"), perturbations=())
    rows = read_scores(tmp_path)
    assert [entry["value"] for entry in report["groups"]["camera"]] == ["phone", "studio"]
    assert [entry["value"] for entry in report["groups"]["split"]] == ["test", "train", "val"]
    for entry in report["groups"]["camera"]:
        members = [row for row in rows if row["camera"] == entry["value"]]
        labels = np.array([row["label"] == "fake" for row in members], dtype=int)
        probability = np.array([float(row["probability_fake"]) for row in members])
        assert entry["images"] == len(members) == 12
        assert entry["roc_auc"] == pytest.approx(roc_auc_score(labels, probability))
        assert entry["note"] is None
    markdown = (tmp_path / EVALUATION_MD).read_text()
    assert "## By camera (clean)" in markdown and "| studio | 12 |" in markdown


def test_a_group_with_one_class_reports_no_auc_and_says_why(tiny_export, tiny_dataset, tmp_path):
    rows = [[str(path), path.parent.name, "only-real" if path.parent.name == "real" and index < 4 else "mixed"]
            for index, path in enumerate(images(tiny_dataset, "real") + images(tiny_dataset, "fake"))]
    manifest = write_csv(tmp_path / "manifest.csv", ["path", "label", "source"], rows)
    report = run(tiny_export, manifest, tmp_path / "out", group_by=("source",), perturbations=())
    groups = {entry["value"]: entry for entry in report["groups"]["source"]}
    assert groups["only-real"]["roc_auc"] is None  # NaN in memory, null in strict JSON
    assert "only real images" in groups["only-real"]["note"]
    assert groups["only-real"]["fpr_at_threshold"] is not None and groups["only-real"]["tpr_at_threshold"] is None
    assert groups["mixed"]["roc_auc"] is not None
    assert "only-real: only real images" in (tmp_path / "out" / EVALUATION_MD).read_text()


def test_unknown_group_column_names_the_columns_there_are(tiny_export, split_manifest, tiny_dataset, tmp_path):
    with pytest.raises(EvaluationError, match=r"no such column; its columns are \['camera', 'label', 'path'"):
        run(tiny_export, split_manifest, tmp_path, group_by=("expression",))
    with pytest.raises(EvaluationError, match="needs a CSV manifest"):
        run(tiny_export, tiny_dataset, tmp_path, group_by=("camera",))


def test_limit_takes_the_same_mixed_subset_for_the_same_seed(tiny_export, tiny_dataset, tmp_path):
    first = run(tiny_export, tiny_dataset, tmp_path / "a", limit=6, seed=3, perturbations=())
    second = run(tiny_export, tiny_dataset, tmp_path / "b", limit=6, seed=3, perturbations=())
    assert first["counts"]["files"] == 6
    assert first["data"]["fingerprint"] == second["data"]["fingerprint"]
    assert first["counts"]["reals"] > 0 and first["counts"]["fakes"] > 0


# --- perturbations ---------------------------------------------------------------------------------------------------


def test_a_registered_perturbation_gets_its_row(tiny_export, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(PERTURBATIONS, "grey", Perturbation(
        lambda rgb: np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2), "colour", "greyscale"))
    report = run(tiny_export, tiny_dataset, tmp_path, perturbations=("grey",), limit=6)
    assert [row["condition"] for row in report["robustness"]] == [CLEAN, "grey"]
    assert report["robustness"][1]["description"] == "greyscale"
    assert {row["condition"] for row in read_scores(tmp_path)} == {CLEAN, "grey"}


def test_unknown_perturbation_is_refused(tmp_path):
    with pytest.raises(EvaluationError, match="unknown perturbation"):
        EvaluationConfig(model=tmp_path, dataset=tmp_path, output_dir=tmp_path, perturbations=("sepia",))


# --- faces -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "model_faces", "dataset_faces", "mode"), [
    ("auto", True, True, "precropped"),
    ("auto", True, False, "detect"),
    ("auto", False, True, "whole_image"),
    ("auto", False, False, "whole_image"),
    ("on", False, False, "detect"),
    ("off", True, False, "whole_image"),
    ("precropped", False, False, "precropped"),
])
def test_face_mode_resolution(requested, model_faces, dataset_faces, mode):
    model = FaceConfig(margin=0.25) if model_faces else None
    dataset = FaceConfig(margin=0.4) if dataset_faces else None
    plan = resolve_face_plan(requested, model, dataset)
    assert plan.mode == mode
    assert (plan.detection is not None) == (mode == "detect")
    if mode == "detect":
        assert plan.detection == (model or FaceConfig())  # what serving detects with
    if mode == "precropped":  # the model's margin first: it was trained on crops cut with it
        assert plan.sbi_faces.margin == (0.25 if model_faces else 0.4 if dataset_faces else FaceConfig().margin)


def test_precropped_faces_are_scored_whole(face_export, crops, tmp_path):
    report = run(face_export, crops, tmp_path, sbi=True, perturbations=())  # auto: faces.json + a face model
    assert report["faces"]["mode"] == "precropped"
    detector = ExportedDetector.load(face_export)
    rows = [row for row in read_scores(tmp_path) if row["sbi"] == "0"]
    assert {row["scored"] for row in rows} == {REGION_PRECROPPED}
    assert all(row["faces_found"] == "0" and row["face_x"] == "" for row in rows)
    for row in rows:
        rgb = decode_rgb((crops.parent / row["path"]).read_bytes())
        scores = detector.score(torch.stack(regions_to_score(rgb, detector.metadata.preprocessing, None).inputs))
        assert float(row["probability_fake"]) == pytest.approx(scores[0].calibrated, abs=1e-6)


def test_photos_are_scored_on_detected_faces_as_served(face_export, photos, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 400, 3), 128, np.uint8))
    rows = [[str(photo), "real"] for photo in photos] + [[str(blank), "fake"]]
    manifest = write_csv(tmp_path / "photos.csv", ["path", "label"], rows)
    report = run(face_export, manifest, tmp_path / "out", perturbations=("downscale_0.5",))
    assert report["faces"]["mode"] == "detect"
    assert report["counts"]["no_face_fallbacks"] == 1
    assert report["robustness"][1]["no_face_fallbacks"] >= 1
    detector = ExportedDetector.load(face_export)
    faces = detector.metadata.faces
    for row in (row for row in read_scores(tmp_path / "out") if row["condition"] == CLEAN):
        rgb = decode_rgb((tmp_path / row["path"]).read_bytes())  # photos: absolute; blank.png: beside the CSV
        regions = regions_to_score(rgb, detector.metadata.preprocessing, faces)
        scores = detector.score(torch.stack(regions.inputs))
        deciding = most_fake(scores)
        assert row["scored"] == regions.scored
        assert float(row["probability_fake"]) == pytest.approx(scores[deciding].calibrated, abs=1e-6)
        if row["scored"] == "faces":
            box = [int(row[key]) for key in ("face_x", "face_y", "face_width", "face_height")]
            assert box == regions.boxes[deciding].to_list() == detect_faces(rgb, faces)[deciding].to_list()
        else:
            assert row["path"] == blank.name and row["scored"] == "whole_image_no_face"


def test_crops_listed_from_elsewhere_are_still_known_as_crops(face_export, crops, tmp_path):
    # A run's splits.csv lists the crops by absolute path from the run folder; their faces.json is found beside them.
    with crops.open(newline="") as handle:
        rows = [[str(crops.parent / row["path"]), "real", "test"] for row in csv.DictReader(handle)]
    splits_csv = write_csv(tmp_path / "splits.csv", ["path", "label", "split"], rows)
    report = run(face_export, splits_csv, tmp_path / "out", split="test", sbi=True, perturbations=())
    assert report["faces"]["mode"] == "precropped"
    assert report["faces"]["faces_json"] == str(crops.parent / FACES_FILENAME)


def test_faces_on_detects_inside_crops_and_off_scores_whole(face_export, crops, tmp_path):
    detected = run(face_export, crops, tmp_path / "on", faces="on", sbi=True, perturbations=())
    assert detected["faces"]["mode"] == "detect"
    assert {row["scored"] for row in read_scores(tmp_path / "on")} <= {"faces", "whole_image_no_face"}
    assert any(row["face_x"] for row in read_scores(tmp_path / "on"))
    whole = run(face_export, crops, tmp_path / "off", faces="off", sbi=True, perturbations=())
    assert whole["faces"]["mode"] == "whole_image"
    assert {row["scored"] for row in read_scores(tmp_path / "off")} == {"whole_image"}


# --- SBI -------------------------------------------------------------------------------------------------------------


def test_sbi_adds_one_deterministic_fake_per_real(face_export, crops, tmp_path):
    first = run(face_export, crops, tmp_path / "a", sbi=True, group_by=("dataset",), seed=5)
    rows = read_scores(tmp_path / "a")
    reals = [row for row in rows if row["condition"] == CLEAN and row["sbi"] == "0"]
    fakes = [row for row in rows if row["condition"] == CLEAN and row["sbi"] == "1"]
    assert len(reals) == len(fakes) == 4 == first["counts"]["sbi_fakes"]
    assert [row["path"] for row in fakes] == [row["path"] for row in reals]
    assert {row["label"] for row in fakes} == {"fake"} and {row["label"] for row in reals} == {"real"}
    # the fake keeps its real's subject and groups
    assert [(row["subject"], row["dataset"]) for row in fakes] == [(row["subject"], row["dataset"]) for row in reals]
    assert first["metrics"]["roc_auc"] is not None  # real-only data, yet both classes
    assert {entry["value"]: entry["fakes"] for entry in first["groups"]["dataset"]} == {"amfd": 2, "london": 2}
    # each perturbation degrades the same fake: 4 reals + 4 fakes in every condition
    assert all(sum(row["condition"] == name for row in rows) == 8 for name in DEFAULT_PERTURBATIONS)

    run(face_export, crops, tmp_path / "b", sbi=True, group_by=("dataset",), seed=5, perturbations=("blur_sigma1",))
    again = [row for row in rows if row["condition"] in (CLEAN, "blur_sigma1")]
    assert read_scores(tmp_path / "b") == again  # same seed: same pixels, same scores
    run(face_export, crops, tmp_path / "c", sbi=True, seed=6, perturbations=())
    other = [row["probability_fake"] for row in read_scores(tmp_path / "c") if row["sbi"] == "1"]
    assert other != [row["probability_fake"] for row in fakes]


def test_sbi_fake_is_the_self_blend_of_the_crop(face_export, crops, tmp_path):
    # The scored fake is exactly training.sbi's blend on the crop's inner face box with the image's own generator.
    run(face_export, crops, tmp_path, sbi=True, seed=5, perturbations=())
    detector = ExportedDetector.load(face_export)
    row = next(row for row in read_scores(tmp_path) if row["sbi"] == "1")
    rgb = decode_rgb((crops.parent / row["path"]).read_bytes())
    fake = self_blend(rgb, inner_face_box(rgb.shape, detector.metadata.faces.margin),
                      sbi_config_of(detector.metadata.training), image_rng(rgb, 5))
    assert not np.array_equal(fake, rgb)
    scores = detector.score(torch.stack(regions_to_score(fake, detector.metadata.preprocessing, None).inputs))
    assert float(row["probability_fake"]) == pytest.approx(scores[0].calibrated, abs=1e-6)


def sbi_export(export: Path, sbi: SbiConfig, folder: Path) -> Path:
    """A copy of `export` (weights hard-linked) whose metadata.json says it was trained with `sbi`."""
    shutil.copytree(export, folder, copy_function=os.link)
    metadata = json.loads((folder / METADATA_FILENAME).read_text())
    (folder / METADATA_FILENAME).unlink()  # a link to the shared export's file: replaced, never written through
    metadata["training"]["sbi"] = sbi.to_dict()
    (folder / METADATA_FILENAME).write_text(json.dumps(metadata))
    return folder


@pytest.mark.parametrize("mask", ["ellipse", "landmarks"])
def test_sbi_fakes_are_the_trainers_own_test_fakes(face_export, crops, mask, tmp_path, monkeypatch):
    # training.train makes each test fake with PseudoFakeMaker (fixed seed; the training manifest's folder as root);
    # evaluating the run's splits.csv must score those very pixels, with either mask, also when the training
    # manifest lies in a folder of its own and lists the crops by absolute path, as the leave-one-source-out runs
    # train (a path key then names a file differently in training and in evaluation).
    sbi = SbiConfig(enabled=True, mask=mask)
    export = sbi_export(face_export, sbi, tmp_path / "export")
    with crops.open(newline="") as handle:
        listed = [str(crops.parent / row["path"]) for row in csv.DictReader(handle)]
    (tmp_path / "train-data").mkdir()
    shutil.copyfile(crops.parent / FACES_FILENAME, tmp_path / "train-data" / FACES_FILENAME)
    trained_on = write_csv(tmp_path / "train-data" / "manifest.csv", ["path", "label"],
                           [[path, "real"] for path in listed])
    scanned = scan_dataset(trained_on, required_classes=("real",))
    maker = PseudoFakeMaker(sbi, read_face_config(trained_on).margin, fixed_seed=7, root=scanned.root)  # as train does
    trained = [maker(decode_rgb(sample.path.read_bytes()), twin(sample)) for sample in scanned.samples]
    (tmp_path / "run").mkdir()
    splits_csv = write_csv(tmp_path / "run" / "splits.csv", ["path", "label", "split"],
                           [[path, "real", "test"] for path in listed])
    scored: list[np.ndarray] = []  # every image evaluate cuts into model inputs: each real, then its fake

    def spy(rgb: np.ndarray, plan, preprocess):
        scored.append(rgb.copy())
        return regions_for(rgb, plan, preprocess)

    monkeypatch.setattr(evaluate_module, "regions_for", spy)
    report = run(export, splits_csv, tmp_path / "out", split="test", sbi=True, faces="precropped", seed=7,
                 perturbations=())
    assert report["counts"]["sbi_fakes"] == len(trained) == 4
    assert report["counts"]["sbi_ellipse_fallbacks"] == maker.landmarks.fallbacks == 0
    assert maker.landmarks.blends == (4 if mask == "landmarks" else 0)  # the hull, from each crop's own points
    for path, fake, expected in zip(listed, scored[1::2], trained, strict=True):
        assert np.array_equal(fake, expected), f"{Path(path).name}: evaluate blended another fake than training"


def test_sbi_on_photos_needs_a_face(tiny_export, photos, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 400, 3), 200, np.uint8))
    manifest = write_csv(tmp_path / "real.csv", ["path", "label"],
                         [[str(photos[0]), "real"], [str(photos[2]), "real"], [str(blank), "real"]])
    report = run(tiny_export, manifest, tmp_path / "out", sbi=True, perturbations=())
    assert report["faces"]["mode"] == "whole_image"  # a whole-image model: the blend still needs the face box
    assert report["counts"]["sbi_fakes"] == 2 and report["counts"]["sbi_no_face"] == 1
    assert report["sbi"]["no_face"] == [blank.name]  # named relative to the manifest's folder
    assert "1 real images got no pseudo-fake" in (tmp_path / "out" / EVALUATION_MD).read_text()


def test_real_only_data_without_sbi_is_refused_with_the_fix(tiny_export, crops, tmp_path):
    with pytest.raises(SystemExit, match="no readable 'fake' image.*add --sbi"):
        main(["--model", str(tiny_export), "--dataset", str(crops), "--output-dir", str(tmp_path)])


# --- outputs ---------------------------------------------------------------------------------------------------------


def test_plots_and_markdown_are_written(clean_run):
    report = read_report(clean_run)
    assert set(report["plots"]) == {"roc", "reliability", "score_histogram"}
    for path in report["plots"].values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    markdown = (clean_run / EVALUATION_MD).read_text()
    assert report["command"] in markdown and report["command"].startswith("python -m training.evaluate --model ")
    assert "| metric | value [95 % interval] |" in markdown
    low, high = report["metrics"]["intervals"]["roc_auc"]
    assert low <= report["metrics"]["roc_auc"] <= high
    assert f"| ROC AUC | {report['metrics']['roc_auc']:.4f} [{low:.4f}, {high:.4f}] |" in markdown
    fpr_low, fpr_high = report["metrics"]["intervals"]["fpr_at_threshold"]
    assert f"| FPR at threshold | {report['metrics']['fpr_at_threshold']:.4f} [{fpr_low:.4f}, {fpr_high:.4f}] |" \
        in markdown
    assert "| condition | ROC AUC | Δ AUC vs clean |" in markdown
    for row in report["robustness"]:
        assert f"| {row['condition']} | {row['roc_auc']:.4f} | {row['roc_auc_change']:+.4f} |" in markdown


def test_report_identifies_model_data_and_versions(clean_run, tiny_export, tiny_dataset):
    import hashlib

    from training.dataset import scan_dataset

    report = read_report(clean_run)
    model_bytes = (tiny_export / "model.torchscript.pt").read_bytes()
    assert report["model"]["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert report["model"]["calibration"] == "temperature"
    assert report["data"]["fingerprint"] == scan_dataset(tiny_dataset).fingerprint()
    assert report["versions"]["python"] and report["versions"]["torch"]
    assert report["config"]["batch_size"] == 7


def test_help_lists_the_registries(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = ("precropped", "--group-by", "--no-robustness", "--sbi", "--split", "--limit")
    for name in (*PERTURBATIONS, *PERTURBATION_GROUPS, *flags):
        assert name in text


def test_a_bad_model_folder_ends_with_a_message(tiny_dataset, tmp_path):
    with pytest.raises(SystemExit, match="not an export folder"):
        main(["--model", str(tmp_path), "--dataset", str(tiny_dataset), "--output-dir", str(tmp_path / "out")])
