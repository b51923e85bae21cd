"""Builds the folder KServe's TorchServe runtimes expect behind an InferenceService's storageUri.

    OUT/config/config.properties   config/kserve.properties + a model_snapshot line for this archive
    OUT/config/metrics.yaml        config/metrics.yaml (config.properties names it relative to itself)
    OUT/model-store/<name>.mar     packaged from an export folder (scripts.package_model) or copied

KServe's storage initializer copies the folder to /mnt/models; both the stock kserve-torchserve runtime and ours
(docker/kserve/servingruntime.yaml) start TorchServe with --model-store /mnt/models/model-store and
--ts-config /mnt/models/config/config.properties. TorchServe then registers exactly what model_snapshot lists (it
wins over --models), so the snapshot carries the archive's workers and timeouts from its own model-config.yaml,
and batchSize 1: the kserve envelope scores only the first request of a TorchServe batch, the instances of one
request being the batch the handler sees.

Usage:
    python -m scripts.kserve_layout --export-dir build/demo/run/export --out build/kserve
    python -m scripts.kserve_layout --mar model_store/deepfake.mar --out build/kserve
    gsutil cp -r build/kserve/* gs://BUCKET/deepfake/v1/      # storageUri: gs://BUCKET/deepfake/v1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.package_model import DEFAULT_MODEL_CONFIG, PackageConfig, package_model
from scripts.serve import read_properties

REPO_ROOT = Path(__file__).resolve().parent.parent
KSERVE_PROPERTIES = REPO_ROOT / "config" / "kserve.properties"
METRICS_CONFIG = REPO_ROOT / "config" / "metrics.yaml"
CONFIG_DIR = "config"  # the layout's folders, as KServe's TorchServe runtimes name them under /mnt/models
MODEL_STORE_DIR = "model-store"
CONFIG_FILENAME = "config.properties"
MANIFEST_PATH = "MAR-INF/MANIFEST.json"
# The kserve envelope handles one request per TorchServe batch (ts/torch_handler/request_envelope/kserve.py).
ENVELOPE_BATCH_SIZE = 1
# TorchServe's defaults for what a model-config.yaml may leave out (RegisterModelRequest, ModelConfig).
SNAPSHOT_DEFAULTS = {"minWorkers": 1, "maxWorkers": 1, "maxBatchDelay": 100, "responseTimeout": 120,
                     "startupTimeout": 120}


@dataclass(frozen=True)
class LayoutConfig:
    """What goes into one KServe storage folder.

    Attributes:
        out: the folder to write (created; files of the same names are replaced).
        export_dir: an export folder to package; exactly one of export_dir and mar is set.
        mar: an existing archive to copy instead.
        model_name: the name served (/v1/models/<name>:predict) when packaging an export.
        version: the model version when packaging an export.
        model_config: model-config.yaml bundled when packaging an export.
        properties: the TorchServe config the layout's config.properties starts from.

    """

    out: Path
    export_dir: Path | None = None
    mar: Path | None = None
    model_name: str = PackageConfig.model_name
    version: str = PackageConfig.version
    model_config: Path = DEFAULT_MODEL_CONFIG
    properties: Path = KSERVE_PROPERTIES


@dataclass(frozen=True)
class ArchiveInfo:
    """What TorchServe learns from a .mar: its model name, version and bundled model-config.yaml."""

    model_name: str
    version: str
    model_config: dict[str, Any]

    @classmethod
    def read(cls, mar: Path) -> ArchiveInfo:
        """Reads MAR-INF/MANIFEST.json and the model-config.yaml it names from the archive.

        Raises:
            ValueError: the file is not a model archive (no manifest, or no model name in it).

        """
        try:
            with zipfile.ZipFile(mar) as archive:
                manifest = json.loads(archive.read(MANIFEST_PATH))
                model = manifest.get("model", {})
                config_file = model.get("configFile")
                model_config = yaml.safe_load(archive.read(config_file)) if config_file else {}
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"{mar} is not a TorchServe model archive ({error}); build one with "
                             f"python -m scripts.package_model") from error
        if not model.get("modelName"):
            raise ValueError(f"{mar}: {MANIFEST_PATH} names no model")
        return cls(model["modelName"], str(model.get("modelVersion", "1.0")), model_config or {})


def model_snapshot(info: ArchiveInfo, mar_name: str) -> dict[str, Any]:
    """The model_snapshot TorchServe restores at start: this one archive, as its default version.

    Workers and timeouts are the archive's own model-config.yaml values (TorchServe takes the snapshot's over
    the archive's, so copying them keeps one source of truth); batchSize is the envelope's 1, and the batch
    delay is kept only because TorchServe requires the key (with batchSize 1 nothing waits for it).
    """
    settings = {key: int(info.model_config.get(key, default)) for key, default in SNAPSHOT_DEFAULTS.items()}
    version = {"defaultVersion": True, "marName": mar_name, "minWorkers": settings["minWorkers"],
               "maxWorkers": settings["maxWorkers"], "batchSize": ENVELOPE_BATCH_SIZE,
               "maxBatchDelay": settings["maxBatchDelay"], "responseTimeout": settings["responseTimeout"],
               "startupTimeout": settings["startupTimeout"]}
    return {"name": "startup.cfg", "modelCount": 1, "models": {info.model_name: {info.version: version}}}


def config_properties(base_text: str, snapshot: dict[str, Any]) -> str:
    """The base config's text with its model_snapshot replaced by this one (one line of compact JSON)."""
    kept = [line for line in base_text.splitlines() if not line.strip().startswith("model_snapshot")]
    snapshot_line = f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}"
    note = "# Written by scripts/kserve_layout.py for the archive in ../model-store."
    return "\n".join([*kept, note, snapshot_line, ""])


def build_layout(config: LayoutConfig) -> Path:
    """Writes OUT/config/{config.properties, metrics.yaml} and OUT/model-store/<name>.mar; returns the config file.

    Raises:
        ValueError: not exactly one of export_dir and mar, or mar is not a model archive.
        FileNotFoundError: an input is missing.
        RuntimeError: torch-model-archiver failed.

    """
    if (config.export_dir is None) == (config.mar is None):
        raise ValueError("give exactly one of --export-dir and --mar")
    for required in (config.properties, METRICS_CONFIG, *([config.mar] if config.mar else [])):
        if not required.is_file():
            raise FileNotFoundError(f"{required} does not exist")
    store = config.out / MODEL_STORE_DIR
    config_dir = config.out / CONFIG_DIR
    store.mkdir(parents=True, exist_ok=True)
    config_dir.mkdir(parents=True, exist_ok=True)
    if config.export_dir is not None:
        mar = package_model(PackageConfig(export_dir=config.export_dir, model_store=store,
                                          model_name=config.model_name, version=config.version,
                                          model_config=config.model_config))
    else:
        info = ArchiveInfo.read(config.mar)  # refuse a non-archive before copying it anywhere
        mar = store / f"{info.model_name}.mar"
        with tempfile.TemporaryDirectory(dir=store) as staging:  # never a half-copied archive under its name
            partial = Path(staging) / mar.name
            shutil.copyfile(config.mar, partial)
            partial.replace(mar)
    info = ArchiveInfo.read(mar)
    shutil.copyfile(METRICS_CONFIG, config_dir / METRICS_CONFIG.name)
    properties = config_dir / CONFIG_FILENAME
    properties.write_text(config_properties(config.properties.read_text(), model_snapshot(info, mar.name)))
    json.loads(read_properties(properties)["model_snapshot"])  # reads back as TorchServe will, or fails here
    return properties


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export-dir", type=Path, help="export folder to package (training/export.py's output)")
    source.add_argument("--mar", type=Path, help="an existing .mar to copy (its manifest names the model)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to upload as the storageUri")
    parser.add_argument("--model-name", default=LayoutConfig.model_name, help="with --export-dir")
    parser.add_argument("--version", default=LayoutConfig.version, help="with --export-dir")
    parser.add_argument("--model-config", type=Path, default=LayoutConfig.model_config, help="with --export-dir")
    parser.add_argument("--properties", type=Path, default=LayoutConfig.properties,
                        help="TorchServe config to start from (default: config/kserve.properties)")
    args = parser.parse_args(argv)
    try:
        properties = build_layout(LayoutConfig(args.out, args.export_dir, args.mar, args.model_name, args.version,
                                               args.model_config, args.properties))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f"kserve_layout: {error}")
    print(f"wrote {properties} and {args.out / MODEL_STORE_DIR}; upload {args.out}/* to the storageUri "
          f"(docker/kserve/README.md)")


if __name__ == "__main__":
    main()
