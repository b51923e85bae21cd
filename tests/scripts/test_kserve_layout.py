"""scripts/kserve_layout.py: the storageUri folder, served by a real TorchServe the way our ServingRuntime starts it.

The runtime (docker/kserve/servingruntime.yaml) runs `python -m scripts.serve start --properties
/mnt/models/config/config.properties --model-store /mnt/models/model-store`; this module starts the same, on the
layout built from the session's tiny export, with two changes only a test needs: free ports and every listener
on 127.0.0.1 (the layout binds inference and metrics to 0.0.0.0 for the pod). TorchServe registers the model
from the layout's model_snapshot, which wins over the --models that scripts/serve.py also passes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from scripts.kserve_layout import (
    CONFIG_DIR,
    CONFIG_FILENAME,
    MODEL_STORE_DIR,
    ArchiveInfo,
    LayoutConfig,
    build_layout,
    main,
)
from scripts.serve import Ports, ServeConfig, TorchServe, read_properties

pytestmark = pytest.mark.e2e

MODEL = "deepfake"
PREDICT = f"/v1/models/{MODEL}:predict"
VERDICT_FIELDS = {"label", "probability_fake", "confidence", "calibrated", "borderline", "threshold", "model"}
LOOPBACK_PROPERTIES = "loopback.properties"  # the test's copy of config.properties, next to it (metrics.yaml)


@pytest.fixture(scope="module")
def layout(tiny_export: Path, one_worker_model_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layout packaged from the tiny export (one worker, so the test server starts fast)."""
    out = tmp_path_factory.mktemp("kserve") / "layout"
    build_layout(LayoutConfig(out=out, export_dir=tiny_export, model_config=one_worker_model_config, version="3.1"))
    return out


@pytest.fixture(scope="module")
def server(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe on the layout's config and model store, on free loopback ports."""
    config_dir = layout / CONFIG_DIR
    text = (config_dir / CONFIG_FILENAME).read_text()
    (config_dir / LOOPBACK_PROPERTIES).write_text(text.replace("0.0.0.0", "127.0.0.1"))
    config = ServeConfig(run_dir=tmp_path_factory.mktemp("kserve_run"), model_store=layout / MODEL_STORE_DIR,
                         properties=config_dir / LOOPBACK_PROPERTIES, ports=Ports.free())
    started = TorchServe(config).start()
    yield started
    started.stop()


def image_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def predict(server: TorchServe, document: Any) -> requests.Response:
    return requests.post(server.config.inference_url + PREDICT, json=document, timeout=60)


def test_layout_holds_what_the_runtime_reads(layout: Path) -> None:
    properties = read_properties(layout / CONFIG_DIR / CONFIG_FILENAME)
    snapshot = json.loads(properties["model_snapshot"])
    assert snapshot["modelCount"] == 1 and list(snapshot["models"]) == [MODEL]
    version = snapshot["models"][MODEL]["3.1"]
    assert version["marName"] == "deepfake.mar" and version["defaultVersion"] is True
    assert version["batchSize"] == 1 and version["minWorkers"] == version["maxWorkers"] == 1
    assert (layout / CONFIG_DIR / properties["metrics_config"]).is_file()
    with zipfile.ZipFile(layout / MODEL_STORE_DIR / "deepfake.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
        bundled = yaml.safe_load(archive.read(manifest["configFile"]))
    assert (manifest["modelName"], manifest["modelVersion"]) == (MODEL, "3.1")
    assert bundled["batchSize"] > 1, "the archive batches; the snapshot must still say 1 for the envelope"


def test_copying_an_archive_reads_its_name_and_version_from_the_manifest(model_store: Path, tmp_path: Path) -> None:
    main(["--mar", str(model_store / "deepfake.mar"), "--out", str(tmp_path / "out")])
    snapshot = json.loads(read_properties(tmp_path / "out" / CONFIG_DIR / CONFIG_FILENAME)["model_snapshot"])
    info = ArchiveInfo.read(model_store / "deepfake.mar")
    assert snapshot["models"] == {MODEL: {info.version: snapshot["models"][MODEL][info.version]}}
    assert (tmp_path / "out" / MODEL_STORE_DIR / "deepfake.mar").read_bytes() == (
        model_store / "deepfake.mar").read_bytes()


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "deepfake.mar"
    fake.write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="not a TorchServe model archive"):
        main(["--mar", str(fake), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / MODEL_STORE_DIR / "deepfake.mar").exists()


def test_torchserve_registers_the_snapshot_with_batch_size_one(server: TorchServe) -> None:
    described = requests.get(f"{server.config.management_url}/models/{MODEL}", timeout=10).json()[0]
    assert described["modelVersion"] == "3.1" and described["batchSize"] == 1
    assert [worker["status"] for worker in described["workers"]] == ["READY"]


def test_v1_instances_are_scored_together_and_a_corrupt_one_gets_its_own_error(
        server: TorchServe, tiny_dataset: Path) -> None:
    real, fake = sorted((tiny_dataset / "real").iterdir())[0], sorted((tiny_dataset / "fake").iterdir())[0]
    corrupt = base64.b64encode(b"\xff\xd8\xff\xe0 truncated jpeg").decode("ascii")
    response = predict(server, {"instances": [{"data": image_b64(real)}, {"data": corrupt},
                                              {"data": image_b64(fake)}]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    for scored in (predictions[0], predictions[2]):
        assert VERDICT_FIELDS <= scored.keys() and scored["label"] in ("real", "fake")
        assert 0.0 <= scored["probability_fake"] <= 1.0 and scored["model"]["version"] == "3.1"
        assert scored["timing_ms"]["batch_size"] == 3  # the request's instances are the handler's batch
    error = predictions[1]["error"]
    assert error["code"] in ("corrupt_image", "not_an_image") and error["message"]
    assert "label" not in predictions[1]


def test_tf_style_b64_objects_and_per_instance_options_are_accepted(server: TorchServe, tiny_dataset: Path) -> None:
    image = image_b64(sorted((tiny_dataset / "real").iterdir())[1])
    response = predict(server, {"instances": [{"image": {"b64": image}}, {"data": image, "uncalibrated": True}]})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first["probability_fake"] == second["probability_fake"]
    assert "uncalibrated" in second and "uncalibrated" not in first


def test_a_request_whose_every_instance_fails_gets_the_first_failures_status(server: TorchServe) -> None:
    response = predict(server, {"instances": [{"data": "not base64!"}, {"data": ""}]})
    assert response.status_code == 400
    assert [item["error"]["code"] for item in response.json()["predictions"]] == ["bad_base64", "empty_input"]


def test_a_document_without_instances_is_a_client_error(server: TorchServe, tiny_dataset: Path) -> None:
    response = predict(server, {"data": image_b64(sorted((tiny_dataset / "real").iterdir())[0])})
    assert response.status_code == 400 and "instances" in response.json()["message"]


def test_the_readiness_probe_command_passes_on_the_kserve_config(server: TorchServe) -> None:
    probe = subprocess.run([sys.executable, "-m", "scripts.healthcheck", "ready", "--run-dir",
                            str(server.config.run_dir)], capture_output=True, text=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr
