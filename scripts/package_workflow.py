"""Builds the `deepfake_ensemble` TorchServe workflow: one .mar per member and the .war that ties them together.

Input is the ensemble.json that `python -m training.ensemble` wrote (members with their export folders,
weights, the ensemble's threshold). Output:

- <model store>/<workflow>-<member>.mar for each member (scripts.package_model: the usual handler and export),
- <workflow store>/<workflow>.war (torch-workflow-archiver) holding the workflow spec (config/ensemble-workflow.yaml
  with this ensemble's members filled in), handler/ensemble_workflow.py (the function nodes) and ensemble.json.

TorchServe finds the members' .mar files in its --model-store by name (the spec's `url:`) and the .war in its
--workflow-store; registration (`POST /workflows?url=<workflow>.war`, --register here, or scripts.serve start
--workflow ...) starts a worker per member and per function node, and the workflow then answers
`POST /wfpredict/<workflow>`. The model store may double as the workflow store (the default).

Usage:
    python -m scripts.package_workflow --ensemble build/ensemble/eval/ensemble.json [--model-store model_store]
        [--workflow-store model_store] [--register http://127.0.0.1:8081]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from handler.ensemble_workflow import ENSEMBLE_FILENAME, EnsembleSpec
from scripts.package_model import DEFAULT_MODEL_CONFIG, PackageConfig, package_model

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_HANDLER = REPO_ROOT / "handler" / "ensemble_workflow.py"
DEFAULT_SPEC_TEMPLATE = REPO_ROOT / "config" / "ensemble-workflow.yaml"
START_NODE = "route_input"  # function nodes of handler/ensemble_workflow.py
END_NODE = "combine"
# Keys of the spec's `models:` section that are global settings, not members (TorchServe 0.12's WorkFlow.java).
GLOBAL_MODEL_KEYS = ("min-workers", "max-workers", "batch-size", "max-batch-delay", "retry-attempts", "timeout-ms")


@dataclass(frozen=True)
class WorkflowPackageConfig:
    """What to build and where.

    Attributes:
        ensemble: ensemble.json from training.ensemble.
        model_store: where the member .mar files go (TorchServe's --model-store).
        workflow_store: where the .war goes (TorchServe's --workflow-store).
        spec_template: the workflow spec whose global settings are kept and whose members are replaced.
        model_config: model-config.yaml packed into each member .mar.
        build_members: False reuses member .mar files already in the store (they must exist).

    """

    ensemble: Path
    model_store: Path = REPO_ROOT / "model_store"
    workflow_store: Path = REPO_ROOT / "model_store"
    spec_template: Path = DEFAULT_SPEC_TEMPLATE
    model_config: Path = DEFAULT_MODEL_CONFIG
    build_members: bool = True


@dataclass(frozen=True)
class WorkflowPackage:
    """What was built."""

    name: str
    war: Path
    members: dict[str, Path]
    spec: dict[str, Any]

    @property
    def war_name(self) -> str:
        """The .war's file name: the `url` to register."""
        return self.war.name


def member_archive_name(workflow: str, member: str) -> str:
    """The member's .mar file name without suffix: one store can hold several workflows' members."""
    return f"{workflow}-{member}"


def workflow_spec(template: Mapping[str, Any], members: Mapping[str, str]) -> dict[str, Any]:
    """The template's global settings with `members` (node name → .mar file name) and their DAG.

    Raises:
        ValueError: the template has no `models:` section or a member is named like a function node.

    """
    if not isinstance(template.get("models"), Mapping):
        raise ValueError("the workflow spec template needs a 'models:' section with the global settings")
    clash = sorted(set(members) & {START_NODE, END_NODE})
    if clash:
        raise ValueError(f"member name(s) {clash} clash with the workflow's function nodes; rename the member(s)")
    models: dict[str, Any] = {key: value for key, value in template["models"].items() if key in GLOBAL_MODEL_KEYS}
    for name, archive in members.items():
        models[name] = {"url": archive}
    dag: dict[str, list[str]] = {START_NODE: list(members)}
    dag.update({name: [END_NODE] for name in members})
    return {"models": models, "dag": dag}


def read_ensemble(path: Path) -> dict[str, Any]:
    """ensemble.json, checked the way the workflow's combine node will read it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; write it with python -m training.ensemble")
    document = json.loads(path.read_text(encoding="utf-8"))
    EnsembleSpec.from_dict(document)  # fails here, not at registration, when the file would not load in TorchServe
    return document


def package_workflow(config: WorkflowPackageConfig) -> WorkflowPackage:
    """Builds the member .mar files and the .war.

    Raises:
        FileNotFoundError: ensemble.json, a member's export folder or (build_members=False) its .mar is missing.
        RuntimeError: torch-workflow-archiver failed (its output is in the message).

    """
    document = read_ensemble(config.ensemble)
    name = str(document["name"])
    members: dict[str, Path] = {}
    for member in document["members"]:
        archive_name = member_archive_name(name, member["name"])
        archive = config.model_store / f"{archive_name}.mar"
        if config.build_members:
            archive = package_model(PackageConfig(export_dir=Path(member["folder"]), model_store=config.model_store,
                                                  model_name=member["name"], model_config=config.model_config,
                                                  archive_name=archive_name))
        elif not archive.is_file():
            raise FileNotFoundError(f"{archive} is missing; build it (drop --reuse-members)")
        members[member["name"]] = archive
    template = yaml.safe_load(config.spec_template.read_text(encoding="utf-8"))
    spec = workflow_spec(template, {member: archive.name for member, archive in members.items()})
    config.workflow_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="package-workflow-") as staging_name:
        staging = Path(staging_name)
        spec_file = staging / f"{name}.yaml"
        spec_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        shutil.copy2(config.ensemble, staging / ENSEMBLE_FILENAME)
        private_tmp = staging / "tmp"  # the archiver stages in $TMPDIR/<workflow name>: keep parallel builds apart
        private_tmp.mkdir()
        command = [str(Path(sys.executable).parent / "torch-workflow-archiver"), "--workflow-name", name,
                   "--spec-file", str(spec_file), "--handler", str(WORKFLOW_HANDLER),
                   "--extra-files", str(staging / ENSEMBLE_FILENAME), "--export-path", str(config.workflow_store),
                   "--force"]
        env = {**os.environ, "TMPDIR": str(private_tmp), "TEMP": str(private_tmp), "TMP": str(private_tmp)}
        completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if completed.returncode != 0:
            raise RuntimeError(f"torch-workflow-archiver failed ({completed.returncode}):\n"
                               f"{completed.stdout}{completed.stderr}")
    return WorkflowPackage(name, config.workflow_store / f"{name}.war", members, spec)


def register_workflow(management_url: str, war_name: str, timeout: float = 300.0,
                      headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Registers a .war from the server's workflow store; returns once every node's workers are up.

    Raises:
        RuntimeError: the server refused or failed (its message included).

    """
    response = requests.post(f"{management_url}/workflows", params={"url": war_name}, timeout=timeout,
                             headers=dict(headers or {}))
    if response.status_code != 200:
        raise RuntimeError(f"registering {war_name} failed with HTTP {response.status_code}: {response.text}")
    return response.json()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", type=Path, required=True, help="ensemble.json from python -m training.ensemble")
    parser.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--workflow-store", type=Path, default=None, help="default: the model store")
    parser.add_argument("--spec-template", type=Path, default=DEFAULT_SPEC_TEMPLATE)
    parser.add_argument("--reuse-members", action="store_true", help="use the member .mar files already in the store")
    parser.add_argument("--register", metavar="MANAGEMENT_URL", default=None,
                        help="then register the .war with the TorchServe at this management URL")
    args = parser.parse_args(argv)
    config = WorkflowPackageConfig(args.ensemble, args.model_store, args.workflow_store or args.model_store,
                                   args.spec_template, build_members=not args.reuse_members)
    built = package_workflow(config)
    print(f"built {built.war} with members " + ", ".join(f"{name} ({path})" for name, path in built.members.items()))
    if args.register:
        print(register_workflow(args.register, built.war_name).get("status", "registered"))


if __name__ == "__main__":
    main()
