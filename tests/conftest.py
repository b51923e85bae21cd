"""Shared fixtures: a tiny generated dataset, a model trained and exported on it, its .mar, and a real TorchServe.

Everything is built by the project's own commands into pytest's tmp folders; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.deepfake_handler import DeepfakeHandler
from scripts.package_model import PackageConfig, package_model
from scripts.serve import Ports, ServeConfig, TorchServe
from tests.shared_faces import FACES_DIR
from training.config import TrainConfig
from training.demo_data import DemoDataConfig, write_demo_dataset
from training.train import TrainResult, train

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_INPUT_SIZE = 64
BATCH_MODEL = "deepfake_batch6"  # served with batchSize 6 and a long maxBatchDelay: 6 concurrent requests = 1 batch
BATCH_MODEL_SIZE = 6
RUNNING_TEST_FILE = REPO_ROOT / "build" / "test-output" / "running-test"


def pytest_sessionstart(session: pytest.Session) -> None:
    RUNNING_TEST_FILE.parent.mkdir(parents=True, exist_ok=True)


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """Records the test about to run, so `make test` can name it if the interpreter dies in native code.

    A SIGABRT or SIGSEGV inside torch, OpenCV or gRPC kills pytest before it reports anything, and CI logs
    often keep only the tail of faulthandler's dump, which is pytest's own frames.
    """
    RUNNING_TEST_FILE.write_text(nodeid + "\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    RUNNING_TEST_FILE.unlink(missing_ok=True)


def link_export(source: Path, destination: Path, ignore: set[str] = frozenset()) -> Path:
    """A private copy of an export folder whose weight files (*.pt) are hard links, not copies.

    Dozens of tests each need their own export folder; copying two ResNet18 TorchScript files (86 MB)
    into every one of them wrote gigabytes per run. Weights are only ever read or replaced (unlink, then
    write), never written in place, so sharing their inodes is safe. Falls back to copying when `source`
    is on another filesystem.
    """
    destination.mkdir(parents=True)
    for path in source.iterdir():
        if path.name in ignore:
            continue
        target = destination / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        elif path.suffix == ".pt":
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        else:
            shutil.copy2(path, target)
    return destination


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real + 12 fake demo images (128 px)."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    write_demo_dataset(root, DemoDataConfig(count=12, image_size=128, seed=7))
    return root


@pytest.fixture(scope="session")
def tiny_training(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A ResNet18 trained for one epoch at 64 px: enough to exercise every step, not to be accurate."""
    config = TrainConfig(dataset=tiny_dataset, output_dir=tmp_path_factory.mktemp("tiny_run"),
                         input_size=TINY_INPUT_SIZE, epochs=1, batch_size=4, val_fraction=0.25, test_fraction=0.25,
                         device="cpu")
    return train(config)


@pytest.fixture(scope="session")
def tiny_export(tiny_training: TrainResult) -> Path:
    """The export folder (model.torchscript.pt, metadata.json, calibration.json, metrics.json)."""
    return tiny_training.export.model_path.parent


@pytest.fixture(scope="session")
def one_worker_model_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config/model-config.yaml with one worker (the shipped config runs two), still named model-config.yaml.

    Test servers run one worker each: half the memory and start-up CPU on a 2-core CI machine, and the
    scaling tests start from a known count. The file keeps its name, which the .mar stores it under.
    """
    settings = yaml.safe_load((REPO_ROOT / "config" / "model-config.yaml").read_text())
    settings.update(minWorkers=1, maxWorkers=1)
    path = tmp_path_factory.mktemp("one_worker_config") / "model-config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def model_store(tiny_export: Path, one_worker_model_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with the .mar built from the tiny export, plus a batching variant of it."""
    store = tmp_path_factory.mktemp("model_store")
    package_model(PackageConfig(export_dir=tiny_export, model_store=store, model_config=one_worker_model_config))
    batch_config = store.parent / "batch6-model-config.yaml"
    settings = yaml.safe_load(one_worker_model_config.read_text())
    settings.update(batchSize=BATCH_MODEL_SIZE, maxBatchDelay=5000)
    batch_config.write_text(yaml.safe_dump(settings))
    package_model(PackageConfig(export_dir=tiny_export, model_store=store, model_name=BATCH_MODEL,
                                model_config=batch_config))
    return store


@pytest.fixture
def handler_and_context(tiny_export: Path, tmp_path: Path):
    """Builds DeepfakeHandlers initialised on a real ts Context over a copy of the tiny export.

    The export's weights are hard links (see link_export): replace them through `replace_files`, never by
    writing into them. The context carries config/model-config.yaml (with `handler:` overrides from the call), one
    RequestProcessor and one request id ("request-<index>") per batch item, as ts.service.Service sets
    them, so per-item statuses can be read back, and a real metrics cache built from config/metrics.yaml,
    so the handler's metrics are emitted as in a worker (as "[METRICS]" log lines of ts.metrics).
    `replace_files` replaces files of the export: None deletes one, a dict is written as JSON, bytes as-is.
    """
    model_dir = link_export(tiny_export, tmp_path / "model")

    def build(batch_size: int, replace_files: dict[str, Any] | None = None, **handler_settings: Any
              ) -> tuple[DeepfakeHandler, Context]:
        for name, content in (replace_files or {}).items():
            (model_dir / name).unlink()
            if isinstance(content, bytes):
                (model_dir / name).write_bytes(content)
            elif content is not None:
                (model_dir / name).write_text(json.dumps(content))
        model_yaml = yaml.safe_load((REPO_ROOT / "config" / "model-config.yaml").read_text())
        model_yaml["handler"].update(handler_settings)
        manifest = {"model": {"modelName": "deepfake", "modelVersion": "7.1"}}
        metrics = MetricsCacheYamlImpl(config_file_path=str(REPO_ROOT / "config" / "metrics.yaml"))
        metrics.initialize_cache()
        metrics.model_name = "deepfake"
        context = Context("deepfake", str(model_dir), manifest, batch_size, None, "0.12.0",
                          metrics=metrics, model_yaml_config=model_yaml)
        context.request_processor = [RequestProcessor({}) for _ in range(batch_size)]
        context.request_ids = {index: f"request-{index}" for index in range(batch_size)}
        metrics.request_ids = context.request_ids
        handler = DeepfakeHandler()
        handler.initialize(context)
        return handler, context

    return build


@pytest.fixture(scope="session")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """A real TorchServe on free loopback ports, with its own run dir and TMPDIR, serving the built .mar files."""
    config = ServeConfig(run_dir=tmp_path_factory.mktemp("serve"), model_store=model_store, ports=Ports.free(),
                         models={"deepfake": "deepfake.mar", BATCH_MODEL: f"{BATCH_MODEL}.mar"})
    server = TorchServe(config).start()
    yield server
    server.stop()


# --- face models: real face photos read in place, and the tiny export turned into a face model -----------------

FACE_PHOTOS = FACES_DIR  # tests/shared_faces.py: one place knows where the shared photos are
FACE_MODEL = "deepfake_faces"


@pytest.fixture(scope="session")
def face_photos_dir() -> Path:
    """The real face photos (../shared/data/faces: manifest.csv, london/, amfd/), read in place, never copied."""
    if not (FACE_PHOTOS / "manifest.csv").is_file():
        raise FileNotFoundError(f"{FACE_PHOTOS / 'manifest.csv'} is missing: the face tests read the shared face "
                                f"photos from ../shared/data/faces next to the repository (see its README.md)")
    return FACE_PHOTOS


@pytest.fixture(scope="session")
def face_export(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny export whose metadata.json has `faces` (FaceConfig defaults): served as a face model."""
    from handler.faces import FaceConfig
    from handler.metadata import METADATA_FILENAME

    folder = link_export(tiny_export, tmp_path_factory.mktemp("face_export") / "export")
    metadata = json.loads((folder / METADATA_FILENAME).read_text())
    metadata["faces"] = FaceConfig().to_dict()
    (folder / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


@pytest.fixture(scope="session")
def face_model_archive(face_export: Path, model_store: Path, one_worker_model_config: Path) -> Path:
    """deepfake_faces.mar (the face export, scripts/package_model.py) in the shared model store, not registered."""
    return package_model(PackageConfig(export_dir=face_export, model_store=model_store, model_name=FACE_MODEL,
                                       model_config=one_worker_model_config))
