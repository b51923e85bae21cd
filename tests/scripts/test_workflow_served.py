"""The deepfake_ensemble workflow registered on a REAL TorchServe: POST /wfpredict/deepfake_ensemble.

Two really trained tiny members (conftest's ResNet18 and a MobileNetV2 trained here on the same data and
split), evaluated by training.ensemble, packaged by scripts.package_workflow and registered through the
management API, as `make ensemble` does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from scripts.package_workflow import (
    DEFAULT_SPEC_TEMPLATE,
    WorkflowPackageConfig,
    package_workflow,
    register_workflow,
)
from scripts.serve import Ports, ServeConfig, TorchServe
from tests.training.test_ensemble import train_second_member
from training.ensemble import EnsembleConfig, Member, evaluate_ensemble

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKFLOW = "deepfake_ensemble"
WEIGHTS = {"resnet18": 3.0, "mobilenet": 1.0}


@pytest.fixture(scope="module")
def ensemble_json(tiny_dataset: Path, tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    second = train_second_member(tiny_dataset, tmp_path_factory.mktemp("second_member"))
    members = (Member("resnet18", tiny_export, WEIGHTS["resnet18"]), Member("mobilenet", second, WEIGHTS["mobilenet"]))
    return evaluate_ensemble(EnsembleConfig(members, tmp_path_factory.mktemp("ensemble_eval"))).ensemble_path


@pytest.fixture(scope="module")
def workflow_server(ensemble_json: Path, one_worker_model_config: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """The dev config with no model at start, the .war's folder as workflow store, the workflow registered."""
    store = tmp_path_factory.mktemp("workflow_store")
    # The shipped spec with a longer node timeout: CI's 2 busy cores can make a fresh member's first call slow.
    template = yaml.safe_load(DEFAULT_SPEC_TEMPLATE.read_text())
    template["models"]["timeout-ms"] = 300_000
    spec_template = store.parent / "ensemble-workflow.yaml"
    spec_template.write_text(yaml.safe_dump(template))
    built = package_workflow(WorkflowPackageConfig(ensemble_json, model_store=store, workflow_store=store,
                                                   spec_template=spec_template, model_config=one_worker_model_config))
    assert built.spec["models"]["timeout-ms"] == 300_000
    server = TorchServe(ServeConfig(run_dir=tmp_path_factory.mktemp("serve_workflow"), model_store=store, models={},
                                    ports=Ports.free(), workflow_store=store)).start()
    try:
        register_workflow(server.config.management_url, built.war_name)
        yield server
    finally:
        server.stop()


def predict(server: TorchServe, data: bytes, content_type: str = "application/octet-stream") -> requests.Response:
    """POST /wfpredict; generous timeout: on a busy 2-core machine a fresh member's first call can take a minute."""
    return requests.post(f"{server.config.inference_url}/wfpredict/{WORKFLOW}", data=data,
                         headers={"Content-Type": content_type}, timeout=300)


def member_answer(server: TorchServe, member: str, data: bytes) -> dict[str, Any]:
    """The member's own answer: the workflow registers it as a model named <workflow>__<member>."""
    response = requests.post(f"{server.config.inference_url}/predictions/{WORKFLOW}__{member}", data=data,
                             timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def image(tiny_dataset: Path) -> bytes:
    return sorted((tiny_dataset / "fake").iterdir())[0].read_bytes()


def test_answer_is_the_weighted_mean_of_the_members_answers(workflow_server: TorchServe, image: bytes,
                                                            ensemble_json: Path) -> None:
    response = predict(workflow_server, image, "image/jpeg")
    assert response.status_code == 200, response.text
    answer = response.json()
    members = {name: member_answer(workflow_server, name, image) for name in WEIGHTS}
    expected = sum(WEIGHTS[name] / sum(WEIGHTS.values()) * members[name]["probability_fake"] for name in WEIGHTS)
    assert answer["probability_fake"] == pytest.approx(expected, abs=2e-6)
    threshold = json.loads(ensemble_json.read_text())["threshold"]
    assert answer["threshold"] == pytest.approx(threshold)
    assert answer["label"] == ("fake" if answer["probability_fake"] >= threshold else "real")
    assert answer["calibrated"] is True
    assert {m["name"]: m["probability_fake"] for m in answer["members"]} == {
        name: members[name]["probability_fake"] for name in WEIGHTS}
    assert answer["ensemble"]["weights"] == {"resnet18": 0.75, "mobilenet": 0.25}


def test_json_base64_body_gets_the_same_answer_as_the_raw_body(workflow_server: TorchServe, image: bytes) -> None:
    raw = predict(workflow_server, image, "image/jpeg").json()
    body = json.dumps({"data": base64.b64encode(image).decode()}).encode()
    as_json = predict(workflow_server, body, "application/json")
    assert as_json.status_code == 200 and as_json.json()["probability_fake"] == raw["probability_fake"]


def test_not_an_image_is_the_members_error_and_the_workflow_keeps_answering(workflow_server: TorchServe,
                                                                          image: bytes) -> None:
    response = predict(workflow_server, b"this is not an image at all")
    # TorchServe 0.12's workflow API answers 200 whatever status a node sets: the error is in the body.
    assert response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == "not_an_image" and error["status"] == 415 and error["member"] in WEIGHTS
    assert predict(workflow_server, image, "image/jpeg").json()["label"] in ("real", "fake")
