"""docker/kserve/: the KServe manifests, checked offline against the files the runtime reads.

No cluster and no KServe CRD schemas here: the checks are structural (the fields KServe requires and the
values our layout and image need), and every value that must agree with another file is compared with it:
the runtime's args with scripts/kserve_layout.py's paths, its port and scrape annotation with
config/kserve.properties, the snapshot the layout writes with config/model-config.yaml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts.kserve_layout import (
    CONFIG_DIR,
    CONFIG_FILENAME,
    ENVELOPE_BATCH_SIZE,
    KSERVE_PROPERTIES,
    MODEL_STORE_DIR,
    ArchiveInfo,
    config_properties,
    model_snapshot,
)
from scripts.serve import read_properties

REPO = Path(__file__).resolve().parents[2]
KSERVE = REPO / "docker" / "kserve"
RUNTIME_FILE = KSERVE / "servingruntime.yaml"
SERVICE_FILES = [KSERVE / "inferenceservice.yaml", KSERVE / "inferenceservice-canary.yaml"]
MODEL_CONFIG = REPO / "config" / "model-config.yaml"
PRODUCTION = REPO / "config" / "production.properties"
MOUNT = PurePosixPath("/mnt/models")  # where KServe's storage initializer puts the storageUri's contents
IMAGE = "deepfake-detector:cpu"  # the CPU image of docker/Dockerfile (shared decision)
NAMESPACE = "deepfake"
STORAGE_SCHEMES = ("gs", "s3", "pvc", "https", "hdfs", "webhdfs", "azure")


def load(path: Path) -> dict[str, Any]:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 1, f"{path} should hold one document"
    return documents[0]


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return load(RUNTIME_FILE)


@pytest.fixture(scope="module")
def container(runtime: dict[str, Any]) -> dict[str, Any]:
    (only,) = runtime["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def kserve_properties() -> dict[str, str]:
    return read_properties(KSERVE_PROPERTIES)


def option(args: list[str], name: str) -> str:
    """The value after `name` in an argument list (`--name value` or `--name=value`)."""
    for index, arg in enumerate(args):
        if arg == name:
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {args}")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def validate_as_pod(containers: list[dict[str, Any]]) -> None:
    """KServe copies these fields into a pod: they must be valid Kubernetes container fields (strict schema)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": containers}}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_runtime_is_a_serving_runtime_for_pytorch_models(runtime: dict[str, Any]) -> None:
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    assert runtime["metadata"]["namespace"] == NAMESPACE
    formats = runtime["spec"]["supportedModelFormats"]
    assert [(f["name"], f["autoSelect"]) for f in formats] == [("pytorch", False)]
    assert runtime["spec"]["protocolVersions"] == ["v1"]


def test_runtime_container_is_a_valid_kubernetes_container(container: dict[str, Any]) -> None:
    validate_as_pod([container])


def test_runtime_runs_our_image_on_the_layout_paths(container: dict[str, Any]) -> None:
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert "command" not in container, "args only: the image's ENTRYPOINT (tini) must stay PID 1"
    args = container["args"]
    assert args[:4] == ["python", "-m", "scripts.serve", "start"]
    assert PurePosixPath(option(args, "--properties")) == MOUNT / CONFIG_DIR / CONFIG_FILENAME
    assert PurePosixPath(option(args, "--model-store")) == MOUNT / MODEL_STORE_DIR
    assert "--foreground" in args and option(args, "--restart") == "never"
    assert "--free-ports" not in args


def test_runtime_port_and_scrape_annotation_match_the_kserve_config(
        runtime: dict[str, Any], container: dict[str, Any], kserve_properties: dict[str, str]) -> None:
    assert [port["containerPort"] for port in container["ports"]] == [port_of(kserve_properties["inference_address"])]
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == port_of(kserve_properties["metrics_address"])
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    assert kserve_properties["metrics_address"].startswith("http://0.0.0.0:"), "scraped from outside the pod"


def test_runtime_probes_and_security(container: dict[str, Any], kserve_properties: dict[str, str]) -> None:
    ready = container["readinessProbe"]["exec"]["command"]
    run_dir = option(container["args"], "--run-dir")
    assert ready[:4] == ["python", "-m", "scripts.healthcheck", "ready"] and option(ready, "--run-dir") == run_dir
    live = container["livenessProbe"]["httpGet"]
    assert live["path"] == "/ping" and live["port"] == port_of(kserve_properties["inference_address"])
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("path", SERVICE_FILES, ids=lambda p: p.name)
def test_inference_service_uses_our_runtime(path: Path, runtime: dict[str, Any]) -> None:
    service = load(path)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert service["metadata"]["name"] == "deepfake-detector" and service["metadata"]["namespace"] == NAMESPACE
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    scheme = re.match(r"^([a-z]+)://\S+$", model["storageUri"])
    assert scheme and scheme.group(1) in STORAGE_SCHEMES
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    resources = model["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]
    validate_as_pod([{"name": "kserve-container", "image": IMAGE, "resources": resources}])


def test_canary_sends_a_share_to_a_second_storage_folder() -> None:
    stable, canary = (load(path)["spec"]["predictor"] for path in SERVICE_FILES)
    assert "canaryTrafficPercent" not in stable
    assert 0 < canary["canaryTrafficPercent"] < 100
    assert canary["model"]["storageUri"] != stable["model"]["storageUri"]


def test_kserve_config_differs_from_production_only_where_kserve_needs_it(kserve_properties: dict[str, str]) -> None:
    production = read_properties(PRODUCTION)
    for key in ("max_request_size", "max_response_size", "job_queue_size", "default_response_timeout",
                "enable_model_api", "install_py_dep_per_model", "metrics_mode", "metrics_config", "allowed_urls",
                "management_address", "grpc_management_address"):
        assert kserve_properties[key] == production[key], key
    assert kserve_properties["service_envelope"] == "kserve"
    assert kserve_properties["disable_token_authorization"] == "true"  # per-process keys: see its header
    assert kserve_properties["grpc_inference_address"] == "127.0.0.1"  # no auth: gRPC never leaves the pod
    assert kserve_properties["model_store"] == str(MOUNT / MODEL_STORE_DIR)
    assert "model_snapshot" not in kserve_properties, "scripts/kserve_layout.py writes it per archive"


def test_snapshot_keeps_the_model_configs_workers_and_timeouts_with_batch_size_one() -> None:
    settings = yaml.safe_load(MODEL_CONFIG.read_text())
    snapshot = model_snapshot(ArchiveInfo("deepfake", "2.0", settings), "deepfake.mar")
    version = snapshot["models"]["deepfake"]["2.0"]
    for key in ("minWorkers", "maxWorkers", "maxBatchDelay", "responseTimeout", "startupTimeout"):
        assert version[key] == settings[key], key
    assert version["batchSize"] == ENVELOPE_BATCH_SIZE == 1 < settings["batchSize"]
    assert version["marName"] == "deepfake.mar" and version["defaultVersion"] is True


def test_the_snapshot_line_replaces_any_earlier_one() -> None:
    snapshot = model_snapshot(ArchiveInfo("deepfake", "1.0", {}), "deepfake.mar")
    text = config_properties("a=1\nmodel_snapshot={}\n# model_snapshot stays in comments\n", snapshot)
    assert text.count("\nmodel_snapshot=") == 1 and "# model_snapshot stays in comments" in text
    path_values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert json.loads(path_values["model_snapshot"]) == snapshot and path_values["a"] == "1"
