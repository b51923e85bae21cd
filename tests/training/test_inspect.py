"""training.inspect on artefacts built here (a resnet18 checkpoint, its export folder, a .mar of that export).

Built in this module rather than taken from conftest's trained fixtures, so all but the last test depend on the
artefact formats alone, not on the training loop; the last one checks what a real (tiny) training run writes.
"""

import hashlib
import json
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import yaml

from handler.calibration import CALIBRATION_FILENAME, Calibration
from handler.forensics import PreprocessConfig
from handler.metadata import METADATA_FILENAME, METRICS_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.torchscript import torchscript_deprecation_silenced
from scripts.package_model import DEFAULT_MODEL_CONFIG, PackageConfig, package_model
from training.inspect import InspectError, inspect_path, main

INPUT_SIZE = 64
THRESHOLD = 0.37
TRAINING_FACTS = {"best_epoch": 2, "validation": {"roc_auc": 0.81, "accuracy": 0.75}, "data_fingerprint": "3f2a"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", in_chans=4, num_classes=2).eval()


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    config = {"model_name": "resnet18", "input_size": INPUT_SIZE, "epochs": 3, "augment": {"flip": True}}
    torch.save({"state_dict": detector().state_dict(), "config": config, "epoch": 3,
                "metrics": {"roc_auc": 0.81, "accuracy": 0.75}}, path)
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    with torch.no_grad(), torchscript_deprecation_silenced():
        traced = torch.jit.trace(detector(), torch.zeros(1, 4, INPUT_SIZE, INPUT_SIZE))
        torch.jit.save(traced, str(folder / MODEL_FILENAME))
    ModelMetadata(architecture="resnet18", threshold=THRESHOLD,
                  preprocessing=PreprocessConfig(input_size=(INPUT_SIZE, INPUT_SIZE)),
                  training=TRAINING_FACTS).save(folder / METADATA_FILENAME)
    return folder


@pytest.fixture(scope="module")
def mar_path(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package_model(PackageConfig(export_dir=export_dir, model_store=tmp_path_factory.mktemp("model_store")))


@pytest.fixture
def export_copy(export_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "export"))


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_checkpoint_report(checkpoint_path):
    report = inspect_path(checkpoint_path)
    assert report["kind"] == "checkpoint"
    assert report["architecture"] == "resnet18"
    assert report["input"] == {"channels": 4, "size": [INPUT_SIZE, INPUT_SIZE]}
    # BatchNorm running statistics are in the state dict but are not parameters.
    assert report["parameters"] == sum(parameter.numel() for parameter in detector().parameters())
    assert report["epoch"] == 3
    assert report["metrics"] == {"checkpoint": {"roc_auc": 0.81, "accuracy": 0.75}}
    assert report["config"]["augment"] == {"flip": True}
    data = checkpoint_path.read_bytes()
    assert report["files"] == [{"name": "checkpoint.pt", "bytes": len(data), "sha256": sha256(data)}]
    assert report["problems"] == []


def test_export_report(export_dir):
    report = inspect_path(export_dir)
    assert report["kind"] == "export"
    assert report["architecture"] == "resnet18"
    assert report["class_names"] == ["real", "fake"]
    assert report["threshold"] == THRESHOLD
    defaults = PreprocessConfig()
    assert report["input"] == {"channels": 4, "channel_names": ["red", "green", "blue", "laplacian"],
                               "size": [INPUT_SIZE, INPUT_SIZE], "mean": list(defaults.mean), "std": list(defaults.std)}
    assert report["calibration"] is None
    assert report["metrics"] == {METADATA_FILENAME: {"best_epoch": 2, "validation.roc_auc": 0.81,
                                                     "validation.accuracy": 0.75}}
    expected_files = [{"name": path.name, "bytes": path.stat().st_size, "sha256": sha256(path.read_bytes())}
                      for path in sorted(export_dir.iterdir())]
    assert report["files"] == expected_files
    assert [item["name"] for item in expected_files] == [METADATA_FILENAME, MODEL_FILENAME]
    assert report["problems"] == []


def test_mar_report_reads_the_archive_in_place(mar_path, export_dir):
    store_before = sorted(mar_path.parent.rglob("*"))
    scratch_before = set(Path(tempfile.gettempdir()).glob("inspect-*"))
    report = inspect_path(mar_path, verify=True)
    assert sorted(mar_path.parent.rglob("*")) == store_before
    assert set(Path(tempfile.gettempdir()).glob("inspect-*")) == scratch_before  # --verify's scratch copy is gone

    assert report["kind"] == "mar"
    manifest = report["manifest"]
    assert (manifest["model_name"], manifest["version"]) == ("deepfake", "1.0")
    assert (manifest["handler"], manifest["serialized_file"]) == ("deepfake_handler.py", MODEL_FILENAME)
    assert manifest["archiver_version"]
    data = mar_path.read_bytes()
    assert report["archive"] == {"name": mar_path.name, "bytes": len(data), "sha256": sha256(data)}
    assert (report["architecture"], report["threshold"]) == ("resnet18", THRESHOLD)
    assert report["input"]["channels"] == 4 and report["input"]["size"] == [INPUT_SIZE, INPUT_SIZE]
    settings = yaml.safe_load(DEFAULT_MODEL_CONFIG.read_text())
    assert report["model_config"]["batchSize"] == settings["batchSize"]
    assert report["model_config"]["maxBatchDelay"] == settings["maxBatchDelay"]
    assert report["model_config"]["handler"] == settings["handler"]
    assert report["verify"] == {"input_shape": [1, 4, INPUT_SIZE, INPUT_SIZE], "output_shape": [1, 2]}
    assert report["problems"] == []

    with zipfile.ZipFile(mar_path) as archive:
        expected = {name: sha256(archive.read(name)) for name in archive.namelist() if not name.endswith("/")}
    assert {item["name"]: item["sha256"] for item in report["files"]} == expected
    assert "MAR-INF/MANIFEST.json" in expected and "handler/deepfake_handler.py" in expected
    # The model inside the archive is byte-identical to the export it came from: that is how to match them.
    assert expected[MODEL_FILENAME] == sha256((export_dir / MODEL_FILENAME).read_bytes())


def test_mar_with_calibration_and_metrics_members(mar_path, tmp_path):
    archive_path = Path(shutil.copy(mar_path, tmp_path / "calibrated.mar"))
    with zipfile.ZipFile(archive_path, "a") as archive:
        archive.writestr(CALIBRATION_FILENAME, json.dumps(Calibration("temperature", temperature=1.25).to_dict()))
        archive.writestr(METRICS_FILENAME, json.dumps({"test": {"roc_auc": 0.9}}))
    report = inspect_path(archive_path)
    assert report["problems"] == []
    assert report["calibration"] == {"method": "temperature", "temperature": 1.25, "knots": 0}
    assert report["metrics"][METRICS_FILENAME] == {"test.roc_auc": 0.9}


@pytest.mark.parametrize(("calibration", "summary", "line"), [
    (Calibration("temperature", temperature=1.7), {"method": "temperature", "temperature": 1.7, "knots": 0},
     "temperature (temperature 1.7)"),
    (Calibration("isotonic", x=(0.0, 0.3, 0.6, 1.0), y=(0.0, 0.2, 0.7, 1.0)),
     {"method": "isotonic", "temperature": 1.0, "knots": 4}, "isotonic (4 knots)"),
    (Calibration.none(), {"method": "none", "temperature": 1.0, "knots": 0}, "none"),
])
def test_export_with_calibration_and_metrics(export_copy, capsys, calibration, summary, line):
    calibration.save(export_copy / CALIBRATION_FILENAME)
    metrics = {"best_epoch": 4, "validation": {"roc_auc": 0.93, "ece": 0.041, "images": 60, "loss": 0.3},
               "test": {"roc_auc": 0.9, "f1": 0.8}, "notes": "held-out subjects", "history": [0.1, 0.2]}
    (export_copy / METRICS_FILENAME).write_text(json.dumps(metrics))
    report = inspect_path(export_copy)
    assert report["calibration"] == summary
    # Quality measures at any depth and top-level numbers; nested counts and losses stay in the file.
    assert report["metrics"] == {METRICS_FILENAME: {"best_epoch": 4, "validation.roc_auc": 0.93,
                                                    "validation.ece": 0.041, "test.roc_auc": 0.9, "test.f1": 0.8}}
    assert {item["name"] for item in report["files"]} == {METADATA_FILENAME, MODEL_FILENAME, CALIBRATION_FILENAME,
                                                          METRICS_FILENAME}
    status, out, _ = run_main([str(export_copy)], capsys)
    assert status == 0
    assert re.search(rf"^  calibration +{re.escape(line)}$", out, re.MULTILINE)
    assert re.search(r"^  metrics \(metrics\.json\) +best_epoch 4$", out, re.MULTILINE)
    assert re.search(r"^    validation +roc_auc 0\.93, ece 0\.041$", out, re.MULTILINE)
    assert re.search(r"^    test +roc_auc 0\.9, f1 0\.8$", out, re.MULTILINE)


@pytest.mark.parametrize("artefact", ["checkpoint_path", "export_dir", "mar_path"])
def test_text_output_names_the_model(artefact, request, export_dir, capsys):
    path = request.getfixturevalue(artefact)
    status, out, err = run_main([str(path)], capsys)
    assert status == 0, err
    assert "resnet18" in out and "4 channels" in out and f"{INPUT_SIZE}x{INPUT_SIZE}" in out
    model_file = path if artefact == "checkpoint_path" else export_dir / MODEL_FILENAME
    assert sha256(model_file.read_bytes()) in out
    if artefact == "checkpoint_path":
        assert re.search(r"^  epoch +3$", out, re.MULTILINE) and "11,180,674" in out
    else:
        assert re.search(rf"^  threshold +{THRESHOLD}$", out, re.MULTILINE)
    if artefact == "mar_path":
        assert re.search(r"^  model name +deepfake$", out, re.MULTILINE)
        assert sha256(path.read_bytes()) in out  # the archive's own hash, beside its members'


@pytest.mark.parametrize("artefact", ["checkpoint_path", "export_dir", "mar_path"])
def test_json_output_is_the_report(artefact, request, capsys):
    path = request.getfixturevalue(artefact)
    status, out, _ = run_main([str(path), "--json"], capsys)
    assert status == 0
    assert json.loads(out) == inspect_path(path)


def test_verify_runs_the_exported_model(export_dir, capsys):
    status, out, _ = run_main([str(export_dir), "--verify"], capsys)
    assert status == 0
    assert f"zero input [1, 4, {INPUT_SIZE}, {INPUT_SIZE}] -> output [1, 2]" in out


def test_verify_reports_a_model_that_does_not_take_the_exported_input(export_copy, capsys):
    metadata = json.loads((export_copy / METADATA_FILENAME).read_text())
    preprocessing = metadata["preprocessing"]
    preprocessing.update(channels=preprocessing["channels"][:3], mean=preprocessing["mean"][:3],
                         std=preprocessing["std"][:3])
    (export_copy / METADATA_FILENAME).write_text(json.dumps(metadata))
    status, out, _ = run_main([str(export_copy), "--verify"], capsys)
    assert status == 1
    assert f"the model failed on a zero input of shape [1, 3, {INPUT_SIZE}, {INPUT_SIZE}]" in out


@pytest.mark.parametrize("position", [0.1, 0.5, 0.9])
def test_damaged_mar_is_an_error_not_a_traceback(mar_path, tmp_path, capsys, position):
    damaged = Path(shutil.copy(mar_path, tmp_path / "damaged.mar"))
    with zipfile.ZipFile(damaged) as archive:
        member = archive.getinfo(METADATA_FILENAME)
    data = bytearray(damaged.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name_length + extra_length + int(member.compress_size * position)] ^= 0xFF
    damaged.write_bytes(bytes(data))
    status, out, err = run_main([str(damaged)], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"error: {damaged} is a damaged .mar")


def test_kind_is_detected_by_content_not_by_name(mar_path, checkpoint_path, tmp_path):
    # torch.save files are zips too; only the MAR manifest makes a zip a .mar.
    assert inspect_path(Path(shutil.copy(mar_path, tmp_path / "model.pt")))["kind"] == "mar"
    assert inspect_path(Path(shutil.copy(checkpoint_path, tmp_path / "weights.bin")))["kind"] == "checkpoint"


def test_missing_export_files_are_reported_not_raised(export_copy, capsys):
    (export_copy / METADATA_FILENAME).unlink()
    status, out, err = run_main([str(export_copy)], capsys)
    assert status == 1
    assert "metadata.json is missing" in out
    assert re.search(r"^  architecture +unknown$", out, re.MULTILINE)
    assert re.search(r"^  mean / std +unknown$", out, re.MULTILINE)
    assert "Traceback" not in out + err
    (export_copy / MODEL_FILENAME).unlink()
    assert inspect_path(export_copy)["problems"] == ["metadata.json is missing", "model.torchscript.pt is missing"]


def test_calibration_the_handler_would_refuse_is_reported(export_copy, capsys):
    (export_copy / CALIBRATION_FILENAME).write_text(json.dumps({"schema_version": 1, "method": "platt", "a": 2.0}))
    status, out, _ = run_main([str(export_copy)], capsys)
    assert status == 1
    assert re.search(r"^  calibration +platt \(a 2.0\)$", out, re.MULTILINE)
    assert "calibration.json would be refused by the handler: calibration has unknown field(s) ['a']" in out


def test_invalid_metadata_is_reported(export_copy):
    (export_copy / METADATA_FILENAME).write_text('{"architecture": "resnet18", "schema_version": 99}')
    problems = inspect_path(export_copy)["problems"]
    assert problems == ["metadata.json would be refused by the handler: metadata schema_version 99 is not supported "
                        "(expected 1)"]
    (export_copy / METADATA_FILENAME).write_text("{not json")
    assert inspect_path(export_copy)["problems"][0].startswith("metadata.json is not valid JSON")


def test_bare_state_dict_reports_weights_without_config(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(detector().state_dict(), path)
    report = inspect_path(path)
    assert report["input"]["channels"] == 4 and report["architecture"] is None
    assert report["problems"] == ["no 'config' in the checkpoint; architecture and input size are unknown"]


def _record_execution(marker: str) -> None:
    Path(marker).write_text("this ran while the checkpoint was being loaded")


class CodeOnLoad:
    """Unpickling it calls _record_execution: a stand-in for a checkpoint crafted to run code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _record_execution, (str(self.marker),)


class TrainingSettings:
    """An ordinary custom class: harmless, but outside the weights-only allowlist all the same."""

    model_name = "resnet18"


@pytest.mark.parametrize(("payload", "culprit"), [
    (CodeOnLoad, "tests.training.test_inspect._record_execution"),
    (lambda marker: TrainingSettings(), "tests.training.test_inspect.TrainingSettings"),
])
def test_checkpoint_with_a_pickled_object_is_refused_not_run(tmp_path, capsys, payload, culprit):
    marker = tmp_path / "executed"
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": detector().state_dict(), "config": payload(marker), "epoch": 1}, path)
    with pytest.raises(InspectError, match=rf"outside torch's weights-only allowlist \({culprit}\); refused"):
        inspect_path(path)
    status, out, err = run_main([str(path)], capsys)
    assert status == 2 and out == ""
    assert str(path) in err and "refused" in err
    assert not marker.exists()


def test_the_code_on_load_payload_is_live(tmp_path):
    # Guards the test above: with the full unpickler the payload does run, so its marker is a real witness.
    marker = tmp_path / "executed"
    torch.save({"config": CodeOnLoad(marker)}, tmp_path / "checkpoint.pt")
    torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.txt", "not a model\n", "is not an export folder, a .mar (zip with MAR-INF/MANIFEST.json) or a .pt/.pth"),
    ("garbage.pt", "not a model\n", "could not be read as a torch checkpoint (weights-only loader: Unsupported"),
    ("empty.pth", "", "could not be read as a torch checkpoint (EOFError"),
    ("absent.pt", None, "does not exist; expected an export folder"),
])
def test_unrecognised_paths_exit_2_with_a_message(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    status, out, err = run_main([str(path)], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"error: {path} ") and message in err


def test_torchscript_file_is_pointed_at_its_export(export_dir, capsys):
    status, _, err = run_main([str(export_dir / MODEL_FILENAME)], capsys)
    assert status == 2
    assert "is a TorchScript model, not a training checkpoint" in err


@pytest.mark.parametrize("artefact", ["checkpoint", "export", "mar"])
def test_the_training_pipeline_artefacts(artefact, tiny_training, tiny_export, model_store):
    # conftest's tiny run: what `python -m training.train` and scripts/package_model.py really write.
    path = {"checkpoint": tiny_training.report_path.parent / "checkpoint.pt", "export": tiny_export,
            "mar": model_store / "deepfake.mar"}[artefact]
    report = inspect_path(path)
    assert report["kind"] == artefact
    assert report["architecture"] == "resnet18"
    assert report["input"]["channels"] == 4 and report["input"]["size"] == [64, 64]
    assert report["problems"] == []
    if artefact == "checkpoint":
        assert report["epoch"] == tiny_training.best_epoch
        assert sha256(path.read_bytes()) == report["files"][0]["sha256"]
    else:
        metadata = ModelMetadata.load(tiny_export / METADATA_FILENAME)
        assert report["threshold"] == metadata.threshold
        hashes = {item["name"]: item["sha256"] for item in report["files"]}
        assert hashes[MODEL_FILENAME] == sha256((tiny_export / MODEL_FILENAME).read_bytes())
        if (tiny_export / CALIBRATION_FILENAME).is_file():
            method = json.loads((tiny_export / CALIBRATION_FILENAME).read_text())["method"]
            assert report["calibration"]["method"] == method
        if (tiny_export / METRICS_FILENAME).is_file():
            assert report["metrics"][METRICS_FILENAME]
    if artefact == "mar":
        assert report["manifest"]["model_name"] == "deepfake"


@pytest.mark.parametrize("artefact", ["export", "mar"])
def test_explanations_are_shown_available_when_the_artefact_has_the_explain_model(artefact, tiny_export, model_store,
                                                                                  capsys):
    path = {"export": tiny_export, "mar": model_store / "deepfake.mar"}[artefact]
    report = inspect_path(path)
    assert report["explanations"] == {"available": True, "method": "grad-cam", "layer": "layer4", "reason": None}
    status, out, _ = run_main([str(path)], capsys)
    assert status == 0 and re.search(r"explanations\s+grad-cam on layer4 \(model\.explain\.pt\)", out)


def test_explanations_unavailable_say_why(export_dir, export_copy, capsys):
    assert inspect_path(export_dir)["explanations"]["reason"].startswith("exported before explanations existed")
    metadata = json.loads((export_copy / METADATA_FILENAME).read_text())
    metadata["explain"] = {"file": "model.explain.pt", "method": "grad-cam", "layer": "layer4"}
    (export_copy / METADATA_FILENAME).write_text(json.dumps(metadata))
    report = inspect_path(export_copy)  # metadata.json names the file, the folder lacks it: the server answers 501
    assert report["explanations"]["available"] is False
    assert any("model.explain.pt but it is missing" in problem for problem in report["problems"])
    metadata["explain"] = {"file": None, "reason": "NoSplit has no forward_features/forward_head"}
    (export_copy / METADATA_FILENAME).write_text(json.dumps(metadata))
    status, out, _ = run_main([str(export_copy)], capsys)
    assert status == 0 and "unavailable: NoSplit has no forward_features/forward_head" in out
