"""Builds model_store/<name>.mar from an export folder with torch-model-archiver.

The archive holds the TorchScript file, metadata.json, calibration.json and metrics.json (when the
export has them), config/model-config.yaml, the handler
entry point and the whole handler/ package, so the worker imports `handler.*` exactly as the
repository does.

Usage:
    python -m scripts.package_model --export-dir build/demo/run/export [--model-store model_store]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from handler.calibration import CALIBRATION_FILENAME
from handler.metadata import METADATA_FILENAME, METRICS_FILENAME, MODEL_FILENAME

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

    """

    export_dir: Path
    model_store: Path = REPO_ROOT / "model_store"
    model_name: str = "deepfake"
    version: str = "1.0"
    model_config: Path = DEFAULT_MODEL_CONFIG


def package_model(config: PackageConfig) -> Path:
    """Runs torch-model-archiver; returns the .mar path.

    Raises:
        FileNotFoundError: the export folder lacks the model or its metadata.
        RuntimeError: torch-model-archiver failed (its output is in the message).

    """
    model_file = config.export_dir / MODEL_FILENAME
    metadata_file = config.export_dir / METADATA_FILENAME
    for required in (model_file, metadata_file, config.model_config):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing; train and export first (python -m training.train ...)")
    config.model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="package-") as staging_name:
        staging = Path(staging_name)
        # The archiver copies a folder's *contents* into the archive root, so stage a folder that
        # contains handler/ (a clean copy: no __pycache__) and the export's JSON files.
        shutil.copytree(HANDLER_PACKAGE, staging / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in (METADATA_FILENAME, CALIBRATION_FILENAME, METRICS_FILENAME):
            if (config.export_dir / name).is_file():
                shutil.copy2(config.export_dir / name, staging / name)
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", config.model_name,
            "--version", config.version,
            "--serialized-file", str(model_file),
            "--handler", str(HANDLER_ENTRY),
            "--extra-files", str(staging),
            "--config-file", str(config.model_config),
            "--export-path", str(config.model_store),
            "--archive-format", "default",
            "--force",
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        output = completed.stdout + completed.stderr
        raise RuntimeError(f"torch-model-archiver failed ({completed.returncode}):\n{output}")
    return config.model_store / f"{config.model_name}.mar"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--model-store", type=Path, default=PackageConfig.model_store)
    parser.add_argument("--model-name", default=PackageConfig.model_name)
    parser.add_argument("--version", default=PackageConfig.version)
    parser.add_argument("--model-config", type=Path, default=PackageConfig.model_config)
    args = parser.parse_args(argv)
    mar = package_model(PackageConfig(args.export_dir, args.model_store, args.model_name, args.version,
                                      args.model_config))
    print(f"built {mar} ({mar.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
