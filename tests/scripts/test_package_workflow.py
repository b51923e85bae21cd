"""scripts/package_workflow.py: the spec it writes, and the .war and member .mar files it builds."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from handler.ensemble_workflow import ENSEMBLE_FILENAME
from scripts.package_workflow import (
    DEFAULT_SPEC_TEMPLATE,
    END_NODE,
    START_NODE,
    WORKFLOW_HANDLER,
    WorkflowPackageConfig,
    package_workflow,
    workflow_spec,
)


def test_template_is_a_valid_spec_whose_function_nodes_exist_in_the_handler_file() -> None:
    template = yaml.safe_load(DEFAULT_SPEC_TEMPLATE.read_text())
    tree = ast.parse(WORKFLOW_HANDLER.read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    models = {key for key, value in template["models"].items() if isinstance(value, dict)}
    nodes = set(template["dag"]) | {child for children in template["dag"].values() for child in children}
    assert nodes - models <= functions and {START_NODE, END_NODE} <= functions


def test_spec_keeps_the_global_settings_and_wires_every_member_between_the_function_nodes() -> None:
    template = {"models": {"min-workers": 1, "timeout-ms": 5000, "member_a": {"url": "x.mar"}}, "dag": {}}
    spec = workflow_spec(template, {"resnet": "e-resnet.mar", "effnet": "e-effnet.mar"})
    assert spec["models"] == {"min-workers": 1, "timeout-ms": 5000, "resnet": {"url": "e-resnet.mar"},
                              "effnet": {"url": "e-effnet.mar"}}
    assert spec["dag"] == {START_NODE: ["resnet", "effnet"], "resnet": [END_NODE], "effnet": [END_NODE]}
    with pytest.raises(ValueError, match="clash"):
        workflow_spec(template, {"combine": "a.mar", "b": "b.mar"})


def test_package_builds_member_archives_and_a_war_with_spec_handler_and_ensemble_json(
        tiny_export: Path, one_worker_model_config: Path, tmp_path: Path) -> None:
    ensemble = tmp_path / ENSEMBLE_FILENAME
    ensemble.write_text(json.dumps({"name": "deepfake_ensemble", "threshold": 0.42, "members": [
        {"name": "first", "weight": 0.5, "folder": str(tiny_export)},
        {"name": "second", "weight": 0.5, "folder": str(tiny_export)}]}))
    store = tmp_path / "store"
    built = package_workflow(WorkflowPackageConfig(ensemble, model_store=store, workflow_store=store,
                                                   model_config=one_worker_model_config))
    assert built.war == store / "deepfake_ensemble.war"
    assert sorted(path.name for path in store.glob("*.mar")) == ["deepfake_ensemble-first.mar",
                                                                   "deepfake_ensemble-second.mar"]
    with zipfile.ZipFile(built.war) as war:
        manifest = json.loads(war.read("WAR-INF/MANIFEST.json"))["workflow"]
        assert manifest["handler"] == "ensemble_workflow.py"
        assert json.loads(war.read(ENSEMBLE_FILENAME))["threshold"] == 0.42
        spec = yaml.safe_load(war.read(manifest["specFile"]))
    assert spec["models"]["first"] == {"url": "deepfake_ensemble-first.mar"}
    assert spec["dag"][START_NODE] == ["first", "second"]
    with zipfile.ZipFile(store / "deepfake_ensemble-first.mar") as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"] == "first"


def test_package_refuses_an_ensemble_json_the_workflow_could_not_load(tmp_path: Path) -> None:
    ensemble = tmp_path / ENSEMBLE_FILENAME
    ensemble.write_text(json.dumps({"name": "e", "members": [{"name": "only", "weight": 1, "folder": "x"}]}))
    with pytest.raises(ValueError, match="at least two members"):
        package_workflow(WorkflowPackageConfig(ensemble, model_store=tmp_path, workflow_store=tmp_path))
    with pytest.raises(FileNotFoundError, match="training.ensemble"):
        package_workflow(WorkflowPackageConfig(tmp_path / "missing.json", model_store=tmp_path))
