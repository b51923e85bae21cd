import json
import struct

import pytest
import torch

from handler.calibration import Calibration
from handler.metadata import ModelMetadata
from training.config import TrainConfig
from training.model import create_detector
from training.train import main, parse_args, train

EPOCH_METRICS = {"loss", "roc_auc", "average_precision", "accuracy", "precision", "recall", "f1", "eer", "ece",
                 "confusion_matrix", "train_loss", "train_images_per_s", "learning_rate", "epoch"}
TIMING_KEYS = {"train_images_per_s", "seconds_training"}


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


def test_tiny_run_writes_everything_a_run_promises(tiny_training):
    run_dir = tiny_training.report_path.parent
    assert tiny_training.report_path.name == "report.json"
    report = json.loads(tiny_training.report_path.read_text())
    assert report["best_epoch"] == 1 and len(report["history"]) == 1
    assert set(report["history"][0]) == EPOCH_METRICS
    assert report["versions"]["torch"].startswith("2.15.0") and report["seed"] == 0
    assert len(report["data"]["fingerprint"]) == 64
    split = report["data"]["split"]
    assert split["method"] == "stratified" and report["evaluation"]["split"] == "test"
    assert report["evaluation"]["images"] == 6 and report["faults"]["specs"] == []
    assert report["calibration"]["method"] == "temperature" and report["calibration"]["fitted_on"] == "validation"
    assert (run_dir / "config.yaml").is_file()

    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["state_dict"]["conv1.weight"].shape[1] == 4  # RGB + Laplacian

    export_dir = tiny_training.export.model_path.parent
    metadata = ModelMetadata.load(export_dir / "metadata.json")
    assert metadata.preprocessing.input_size == (64, 64)
    assert metadata.threshold == report["threshold"]["value"]  # the validation-chosen threshold is what serving uses
    assert Calibration.load(export_dir / "calibration.json").method == "temperature"
    assert json.loads((export_dir / "metrics.json").read_text())["evaluation"] == report["evaluation"]

    for name in ("training_curves", "roc", "confusion_matrix", "reliability"):
        width, height = _png_size(run_dir / report["plots"][name])
        assert width > 200 and height > 200


def test_cli_reports_and_skips_a_corrupt_file(tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
        for path in sorted((tiny_dataset / label).glob("*.jpg"))[:8]:
            (data / label / path.name).write_bytes(path.read_bytes())
    (data / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    main(["--dataset", str(data), "--output-dir", str(tmp_path / "run"), "--epochs", "2", "--input-size", "64",
          "--batch-size", "4", "--set", "val_fraction=0.25", "--set", "test_fraction=0.25", "--device", "cpu",
          "--set", "early_stopping_patience=0"])
    out = capsys.readouterr().out
    assert "broken.jpg" in out and "1 skipped" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["skipped_count"] == 1
    assert report["data"]["skipped"][0]["path"].endswith("broken.jpg")
    assert [h["epoch"] for h in report["history"]] == [1, 2]


def _tiny_config(tiny_dataset, output_dir, **changes) -> TrainConfig:
    settings = {"dataset": tiny_dataset / "manifest.csv", "output_dir": output_dir, "input_size": 48, "epochs": 2,
                "batch_size": 4, "val_fraction": 0.25, "test_fraction": 0.25, "device": "cpu",
                "early_stopping_patience": 0, **changes}
    return TrainConfig(**settings)


def _without_timing(history):
    return [{key: value for key, value in epoch.items() if key not in TIMING_KEYS} for epoch in history]


def test_same_seed_same_data_gives_identical_metrics_on_cpu(tiny_dataset, tmp_path):
    first = train(_tiny_config(tiny_dataset, tmp_path / "a"))
    second = train(_tiny_config(tiny_dataset, tmp_path / "b"))
    history = [json.loads(result.report_path.read_text())["history"] for result in (first, second)]
    assert _without_timing(history[0]) == _without_timing(history[1])
    assert first.final.metrics == second.final.metrics
    other_seed = train(_tiny_config(tiny_dataset, tmp_path / "c", seed=1))
    assert _without_timing(json.loads(other_seed.report_path.read_text())["history"]) != _without_timing(history[0])


def test_manifest_with_subjects_is_split_by_subject(tiny_dataset, tmp_path):
    result = train(_tiny_config(tiny_dataset, tmp_path / "run", epochs=1))
    assert json.loads(result.report_path.read_text())["data"]["split"]["method"] == "subject"


def test_bf16_autocast_path_trains_and_exports(tiny_dataset, tmp_path):
    result = train(_tiny_config(tiny_dataset, tmp_path / "run", epochs=1, amp="bf16", calibration="isotonic"))
    report = json.loads(result.report_path.read_text())
    assert report["mixed_precision"] == "bf16" and report["calibration"]["method"] == "isotonic"
    assert result.export.max_abs_diff <= 1e-4  # exported in fp32 whatever the training precision


def test_skipped_gradients_leave_every_weight_untouched(tiny_dataset, tmp_path):
    result = train(_tiny_config(tiny_dataset, tmp_path / "run", epochs=1, faults=("skip_grad:1.0",), weights="none"))
    report = json.loads(result.report_path.read_text())
    assert report["faults"]["optimizer_steps_taken"] == 0 and report["faults"]["optimizer_steps_skipped"] == 3
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    torch.manual_seed(0)  # training initialises with the run's seed right before building the model
    initial = create_detector("resnet18").state_dict()
    parameters = {name for name, _ in create_detector("resnet18").named_parameters()}
    assert all(torch.equal(trained[name], initial[name]) for name in parameters)
    buffers_changed = [name for name in initial if name.endswith("running_mean")
                       and not torch.equal(trained[name], initial[name])]
    assert buffers_changed  # batch-norm statistics did move, so the run really saw data


def test_unknown_fault_stops_before_any_work(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown fault 'bogus'"):
        train(_tiny_config(tiny_dataset, tmp_path / "run", faults=("bogus",)))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def real_face_crops(tmp_path_factory):
    """16 face crops of 16 people from the shared photos, laid out as training.prepare writes them (no fakes)."""
    import csv

    import cv2

    from handler.faces import FaceConfig
    from tests.shared_faces import FACES_DIR, face_crop
    from training.prepare import FACES_FILENAME, FACES_SCHEMA_VERSION

    root = tmp_path_factory.mktemp("face_crops")
    (root / "real").mkdir()
    with (FACES_DIR / "manifest.csv").open() as handle:
        photos = [row for row in csv.DictReader(handle) if row["expression"] == "neutral"][:16]
    rows = []
    for row in photos:
        name = f"real/{row['subject']}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(face_crop(row["path"]), cv2.COLOR_RGB2BGR))
        rows.append([name, "real", row["subject"], row["dataset"]])
    (root / FACES_FILENAME).write_text(json.dumps({"schema_version": FACES_SCHEMA_VERSION,
                                                   "faces": FaceConfig().to_dict()}))
    with (root / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "subject", "dataset"], *rows])
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def crops_listed_elsewhere(real_face_crops, tmp_path_factory):
    """A manifest of the same crops in a folder of its own (with a copy of faces.json), listing them by absolute path:
    how the leave-one-source-out runs train on a subset of prepared crops."""
    import csv
    import shutil

    from training.prepare import FACES_FILENAME

    folder = tmp_path_factory.mktemp("train_data")
    shutil.copyfile(real_face_crops.parent / FACES_FILENAME, folder / FACES_FILENAME)
    with real_face_crops.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "path": str(real_face_crops.parent / row["path"])} for row in rows)
    return folder / "manifest.csv"


@pytest.mark.slow  # a real training run (about a minute on 2 cores)
def test_real_faces_plus_sbi_trains_a_face_model_from_real_photos_alone(crops_listed_elsewhere, tmp_path):
    import csv

    from handler.faces import FaceConfig
    from training.sbi import SbiConfig

    # Landmark masks, and a manifest away from the crops: the evaluation below must still find the same fakes.
    config = TrainConfig(dataset=crops_listed_elsewhere, output_dir=tmp_path / "run", input_size=64, epochs=1,
                         batch_size=8, val_fraction=0.25, test_fraction=0.25, device="cpu",
                         sbi=SbiConfig(enabled=True, mask="landmarks"))
    result = train(config)
    report = json.loads(result.report_path.read_text())
    split = report["data"]["split"]
    assert split["method"] == "subject+sbi"
    for name in ("train", "val", "test"):  # one self-blend per real image in every split
        assert split["splits"][name]["real"] == split["splits"][name]["fake"] > 0
    metadata = ModelMetadata.load(result.export.model_path.parent / "metadata.json")
    assert metadata.faces == FaceConfig()  # served on faces cut like the crops it was trained on
    assert metadata.training["sbi"]["enabled"] is True and metadata.training["sbi"]["mask"] == "landmarks"
    with (tmp_path / "run" / "splits.csv").open() as handle:
        listed = list(csv.DictReader(handle))
    assert len(listed) == 16 and {row["label"] for row in listed} == {"real"}
    assert {row["dataset"] for row in listed} <= {"london", "amfd"}
    assert sum(row["split"] == "test" for row in listed) == split["splits"]["test"]["real"]

    # The evaluation command, on the run's own test split, scores the very self-blends the run's report measured.
    from training.evaluate import EvaluationConfig, evaluate

    evaluated = evaluate(EvaluationConfig(
        model=result.export.model_path.parent, dataset=tmp_path / "run" / "splits.csv",
        output_dir=tmp_path / "evaluation", split="test", sbi=True, faces="precropped", perturbations=()))
    reported = report["evaluation"]["calibrated"]
    assert evaluated.report["metrics"]["roc_auc"] == pytest.approx(reported["roc_auc"], abs=1e-9)
    assert evaluated.report["metrics"]["ece"] == pytest.approx(reported["ece"], abs=1e-6)


def test_without_sbi_a_real_only_dataset_is_refused(real_face_crops, tmp_path):
    from training.dataset import DatasetError

    with pytest.raises(DatasetError, match="has no readable 'fake' image"):
        train(TrainConfig(dataset=real_face_crops, output_dir=tmp_path / "run", device="cpu"))


def test_every_set_of_one_section_survives(tmp_path):
    # Regression: each `--set augment.X` used to replace the whole augment section, keeping only the last one.
    config = parse_args(["--dataset", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                         "--set", "augment.colour_cast_probability=0.8", "--set", "augment.colour_cast=0.3",
                         "--set", "augment.hue=0.08", "--set", "sbi.mask=landmarks", "--set", "sbi.hue_shift=0",
                         "--set", "early_stopping_patience=9"])
    assert (config.augment.colour_cast_probability, config.augment.colour_cast, config.augment.hue) == (0.8, 0.3, 0.08)
    assert config.sbi.mask == "landmarks" and config.sbi.hue_shift == 0.0 and config.early_stopping_patience == 9


@pytest.mark.slow  # a real training run (under a minute on 2 cores)
def test_a_blend_map_trains_beside_the_classifier_and_the_export_is_the_classifier_alone(real_face_crops, tmp_path):
    from training.sbi import SbiConfig

    config = TrainConfig(dataset=real_face_crops, output_dir=tmp_path / "run", input_size=64, epochs=2,
                         batch_size=8, val_fraction=0.25, test_fraction=0.25, device="cpu",
                         sbi=SbiConfig(enabled=True), blend_map_weight=1.0, blend_map_target="boundary")
    result = train(config)
    report = json.loads(result.report_path.read_text())
    assert report["config"]["blend_map_weight"] == 1.0 and len(report["history"]) == 2
    assert all(entry["train_loss"] > 0 for entry in report["history"])
    # The checkpoint and the export hold the detector alone: the same keys as a plain detector, no map head.
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert set(checkpoint) == set(create_detector("resnet18").state_dict())
    from handler.torchscript import load_torchscript

    exported = load_torchscript(result.export.model_path, torch.device("cpu"))
    with torch.no_grad():
        assert exported(torch.randn(3, 4, 64, 64)).shape == (3, 2)
